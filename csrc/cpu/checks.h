// Argument checks shared by the CPU and CUDA op entry points.  The Python wrappers check the same
// things first with friendlier messages; these guard direct torch.ops.shufflekern.* calls so that no
// input can make a kernel read or write out of bounds.
#pragma once
#include <ATen/ATen.h>

namespace shufflekern {

// Memory format the op computes in: the input's own (suggest_memory_format), as ATen's ops do.
inline at::MemoryFormat format_of(const at::Tensor& x) {
  return x.dim() == 4 ? x.suggest_memory_format() : at::MemoryFormat::Contiguous;
}

inline void check_channel_shuffle_args(const at::Tensor& x, int64_t groups) {
  TORCH_CHECK_VALUE(x.dim() == 4, "channel_shuffle: x must be 4-D [N, C, H, W], got ", x.dim(), "-D");
  TORCH_CHECK_VALUE(groups > 0, "channel_shuffle: groups must be positive, got ", groups);
  TORCH_CHECK_VALUE(x.size(1) % groups == 0, "channel_shuffle: channels (", x.size(1),
                    ") must be divisible by groups (", groups, ")");
}

}  // namespace shufflekern
