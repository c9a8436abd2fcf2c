#include "cpu/dispatch.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>

#include <c10/util/Exception.h>

#include "cpu/scratch.h"

#include <ATen/Version.h>

namespace shufflekern::cpu {

namespace {
std::atomic<int> compiled_mask{0};

// The best variant this CPU can execute.  ATen takes ATEN_CPU_CAPABILITY at its word (asking for avx512
// on a CPU without it makes ATen's own kernels die of SIGILL); ours never run an ISA the CPU lacks.
int supported_isa() {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return kAVX512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kAVX2;
#endif
  return kDefault;
}

}  // namespace

int runtime_isa() {
  static const int isa = [] {
    const std::string cap = at::get_cpu_capability();
    int wanted = kDefault;
    if (cap == "AVX512") wanted = kAVX512;
    else if (cap == "AVX2") wanted = kAVX2;
    return std::min(wanted, supported_isa());
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

Scratch::Scratch(std::size_t bytes, const char* op, bool zero)
    : p_(zero ? std::calloc(bytes > 0 ? bytes : 1, 1) : std::malloc(bytes > 0 ? bytes : 1)) {
  TORCH_CHECK(p_ != nullptr, op, ": out of memory for ", bytes, " bytes of scratch");
}

Scratch::~Scratch() { std::free(p_); }

}  // namespace shufflekern::cpu
