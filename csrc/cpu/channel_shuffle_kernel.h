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

// interleave / deinterleave (csrc/cpu/interleave.cpp): a and b are n images of h channels; part k < `parts`
// (each n images of 2q channels, q = h / parts) is channel_shuffle(cat(a[:, kq:(k+1)q], b[:, kq:(k+1)q]), 2),
// i.e. its channel 2i + j is channel kq + i of (a, b)[j].  to_parts: write the parts from a and b
// (interleave); else write a and b from the parts (deinterleave).  All tensors dense in the same format,
// `inner` = H*W, elements of `esize` bytes (moved as bits).
using InterleaveFn = void (*)(void* a, void* b, void* const* parts, int64_t nparts, int64_t esize, int64_t n,
                              int64_t h, int64_t inner, bool channels_last, bool to_parts);
SK_DECLARE_KERNEL_TABLE(interleave_table, InterleaveFn);

}  // namespace shufflekern::cpu
