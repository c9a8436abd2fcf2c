// Kernel signature of channel_shuffle, filled per ISA by csrc/cpu/vec/channel_shuffle.cpp.
#pragma once
#include <cstdint>

#include "cpu/dispatch.h"

namespace shufflekern::cpu {

// in/out: n images of c channels, `inner` = H*W pixels each, elements of `esize` bytes, dense in NCHW
// (channels_last=false) or NHWC (channels_last=true) order.
using ChannelShuffleFn = void (*)(const void* in, void* out, int64_t esize, int64_t n, int64_t c,
                                  int64_t inner, int64_t groups, bool channels_last);
SK_DECLARE_KERNEL_TABLE(channel_shuffle_table, ChannelShuffleFn);

}  // namespace shufflekern::cpu
