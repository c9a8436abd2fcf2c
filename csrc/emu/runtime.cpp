// The emulator's out-of-line definitions: launch counts (sk.testing.emulated_launches) and the traffic log, read
// by csrc/shufflekern.cpp, which must not include emu.h (its CUDA macros).
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "emu/emu.h"

namespace shufflekern::emurt {

std::map<std::string, int64_t> launch_counts() { return ::sk_emu::launch_counts(); }

void set_traffic(bool on, int64_t sample_blocks) { ::sk_emu::set_traffic(on, sample_blocks > 0 ? uint64_t(sample_blocks) : 0); }

std::vector<std::map<std::string, std::string>> traffic_log() {
  std::vector<std::map<std::string, std::string>> out;
  for (const auto& t : ::sk_emu::traffic_log()) {
    out.push_back({{"kernel", t.kernel},
                   {"blocks", std::to_string(t.blocks)},
                   {"blocks_run", std::to_string(t.blocks_run)},
                   {"load_bytes", std::to_string(t.load_bytes)},
                   {"store_bytes", std::to_string(t.store_bytes)},
                   {"load_sectors", std::to_string(t.load_sectors)},
                   {"store_sectors", std::to_string(t.store_sectors)},
                   {"dram_bytes", std::to_string(t.dram_bytes)}});
  }
  return out;
}

}  // namespace shufflekern::emurt
