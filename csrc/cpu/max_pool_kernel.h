// Kernel signature of shufflekern::max_pool3x3s2 (ShuffleNet's stem pool: 3x3 window, stride 2, padding 1,
// no indices), filled per ISA by csrc/cpu/vec/max_pool.cpp.
#pragma once
#include <cstdint>

#include "cpu/dispatch.h"

namespace shufflekern::cpu {

// x [n, c, h, w] and y [n, c, ho, wo] dense, both NCHW or both NHWC (channels_last).
using MaxPoolFn = void (*)(const void* x, void* y, bool is_double, bool channels_last, int64_t n, int64_t c,
                           int64_t h, int64_t w, int64_t ho, int64_t wo);
SK_DECLARE_KERNEL_TABLE(max_pool3x3s2_table, MaxPoolFn);

}  // namespace shufflekern::cpu
