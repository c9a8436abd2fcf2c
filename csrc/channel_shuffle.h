// Index math of channel shuffle, shared by the CPU kernel, the CUDA kernel and the shuffle-folded
// pointwise convolution.
//
// torch.channel_shuffle(x, g) views the C channels as [g, C/g], transposes to [C/g, g] and flattens:
// output channel c = i*g + k (i < C/g, k < g) reads input channel k*(C/g) + i.
#pragma once
#include <cstdint>

#include "common.h"

namespace shufflekern {

// Input channel that output channel `c` of channel_shuffle(x, groups) reads.
SK_HOST_DEVICE inline int64_t shuffle_src_channel(int64_t c, int64_t groups, int64_t channels_per_group) {
  return (c % groups) * channels_per_group + c / groups;
}

}  // namespace shufflekern
