#include "cpu/dispatch.h"

#include <atomic>

#include <ATen/Version.h>

namespace shufflekern::cpu {

namespace {
std::atomic<int> compiled_mask{0};
}

int runtime_isa() {
  static const int isa = [] {
    const std::string cap = at::get_cpu_capability();
    if (cap == "AVX512") return static_cast<int>(kAVX512);
    if (cap == "AVX2") return static_cast<int>(kAVX2);
    return static_cast<int>(kDefault);
  }();
  return isa;
}

const char* isa_name(int isa) {
  switch (isa) {
    case kAVX512: return "AVX512";
    case kAVX2: return "AVX2";
    default: return "DEFAULT";
  }
}

void note_compiled_isa(int isa) { compiled_mask.fetch_or(1 << isa); }

std::string compiled_isas() {
  std::string out;
  for (int isa = 0; isa < kNumIsa; ++isa) {
    if (compiled_mask.load() & (1 << isa)) {
      if (!out.empty()) out += ' ';
      out += isa_name(isa);
    }
  }
  return out;
}

}  // namespace shufflekern::cpu
