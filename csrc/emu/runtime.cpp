// The emulator's one out-of-line definition: launch counts for Python (sk.testing.emulated_launches), read
// by csrc/shufflekern.cpp, which must not include emu.h (its CUDA macros).
#include <cstdint>
#include <map>
#include <string>

#include "emu/emu.h"

namespace shufflekern::emurt {

std::map<std::string, int64_t> launch_counts() { return ::sk_emu::launch_counts(); }

}  // namespace shufflekern::emurt
