// Argument checks shared by the CPU and CUDA op entry points (csrc/cpu/<op>.cpp, csrc/cuda/<op>.cu and so
// the emulated build of the .cu).  Host-only, plain ATen: no backend's headers.  The Python wrappers check
// the same things first with friendlier messages; these guard direct torch.ops.shufflekern.* calls so that
// no input can make a kernel read or write out of bounds.
#pragma once
#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <tuple>

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

// shuffle_conv1x1: y = conv2d(channel_shuffle(x, shuffle_groups), weight, bias, groups=groups).
inline void check_shuffle_conv1x1_groups(const char* op, int64_t c_in, int64_t groups, int64_t shuffle_groups) {
  TORCH_CHECK_VALUE(groups > 0, op, ": groups must be positive, got ", groups);
  TORCH_CHECK_VALUE(shuffle_groups > 0, op, ": shuffle_groups must be positive, got ", shuffle_groups);
  TORCH_CHECK_VALUE(c_in % groups == 0, op, ": channels of x (", c_in, ") must be divisible by groups (", groups,
                    ")");
  TORCH_CHECK_VALUE(c_in % shuffle_groups == 0, op, ": channels of x (", c_in,
                    ") must be divisible by shuffle_groups (", shuffle_groups, ")");
}

inline void check_shuffle_conv1x1_weight(const char* op, const at::Tensor& weight, int64_t c_in, int64_t groups) {
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(2) == 1 && weight.size(3) == 1, op,
                    ": weight must be [C_out, C_in/groups, 1, 1] (a 1x1 kernel), got shape ", weight.sizes());
  TORCH_CHECK_VALUE(weight.size(1) * groups == c_in, op, ": weight must be [C_out, C_in/groups, 1, 1] = [C_out, ",
                    c_in / groups, ", 1, 1], got shape ", weight.sizes());
  TORCH_CHECK_VALUE(weight.size(0) % groups == 0, op, ": out channels (weight.size(0) = ", weight.size(0),
                    ") must be divisible by groups (", groups, ")");
}

inline void check_same(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                       const at::Tensor& ref) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have the dtype of ", ref_name,
                   " (", ref.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " must be on the device of ", ref_name, " (",
                    ref.device(), "), got ", t.device());
}

inline void check_shuffle_conv1x1_args(const at::Tensor& x, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias, int64_t groups,
                                       int64_t shuffle_groups) {
  const char* op = "shuffle_conv1x1";
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": x must be 4-D [N, C, H, W], got ", x.dim(), "-D");
  check_shuffle_conv1x1_groups(op, x.size(1), groups, shuffle_groups);
  check_same(op, "weight", weight, "x", x);
  check_shuffle_conv1x1_weight(op, weight, x.size(1), groups);
  if (bias.has_value() && bias->defined()) {
    check_same(op, "bias", *bias, "x", x);
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight.size(0), op, ": bias must be 1-D of length C_out (",
                      weight.size(0), "), got shape ", bias->sizes());
  }
}

inline void check_shuffle_conv1x1_grad_input_args(const at::Tensor& grad_out, const at::Tensor& weight,
                                                  int64_t groups, int64_t shuffle_groups) {
  const char* op = "shuffle_conv1x1_grad_input";
  TORCH_CHECK_VALUE(grad_out.dim() == 4, op, ": grad_out must be 4-D, got ", grad_out.dim(), "-D");
  TORCH_CHECK_VALUE(groups > 0, op, ": groups must be positive, got ", groups);
  TORCH_CHECK_VALUE(weight.dim() == 4, op, ": weight must be 4-D, got ", weight.dim(), "-D");
  check_shuffle_conv1x1_groups(op, weight.size(1) * groups, groups, shuffle_groups);
  check_same(op, "weight", weight, "grad_out", grad_out);
  check_shuffle_conv1x1_weight(op, weight, weight.size(1) * groups, groups);
  TORCH_CHECK_VALUE(grad_out.size(1) == weight.size(0), op, ": grad_out must have C_out = weight.size(0) = ",
                    weight.size(0), " channels, got ", grad_out.size(1));
}

inline void check_shuffle_conv1x1_grad_weight_args(const at::Tensor& grad_out, const at::Tensor& x, int64_t groups,
                                                   int64_t shuffle_groups) {
  const char* op = "shuffle_conv1x1_grad_weight";
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": x must be 4-D, got ", x.dim(), "-D");
  TORCH_CHECK_VALUE(grad_out.dim() == 4, op, ": grad_out must be 4-D, got ", grad_out.dim(), "-D");
  check_shuffle_conv1x1_groups(op, x.size(1), groups, shuffle_groups);
  check_same(op, "grad_out", grad_out, "x", x);
  TORCH_CHECK_VALUE(grad_out.size(0) == x.size(0) && grad_out.size(2) == x.size(2) && grad_out.size(3) == x.size(3),
                    op, ": grad_out must be [N, C_out, H, W] with N, H, W of x ", x.sizes(), ", got ",
                    grad_out.sizes());
  TORCH_CHECK_VALUE(grad_out.size(1) % groups == 0, op, ": out channels of grad_out (", grad_out.size(1),
                    ") must be divisible by groups (", groups, ")");
}

inline void check_shuffle_conv1x1_backward_args(const at::Tensor& grad_out, const at::Tensor& x,
                                                const at::Tensor& weight, int64_t groups, int64_t shuffle_groups) {
  const char* op = "shuffle_conv1x1_backward";
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": x must be 4-D [N, C, H, W], got ", x.dim(), "-D");
  TORCH_CHECK_VALUE(grad_out.dim() == 4, op, ": grad_out must be 4-D, got ", grad_out.dim(), "-D");
  check_shuffle_conv1x1_groups(op, x.size(1), groups, shuffle_groups);
  check_same(op, "weight", weight, "x", x);
  check_same(op, "grad_out", grad_out, "x", x);
  check_shuffle_conv1x1_weight(op, weight, x.size(1), groups);
  TORCH_CHECK_VALUE(grad_out.size(0) == x.size(0) && grad_out.size(1) == weight.size(0) &&
                        grad_out.size(2) == x.size(2) && grad_out.size(3) == x.size(3),
                    op, ": grad_out must be [N, C_out, H, W] = [", x.size(0), ", ", weight.size(0), ", ", x.size(2),
                    ", ", x.size(3), "], got ", grad_out.sizes());
}

// shuffle_conv1x1_backward from the two backward ops (grad_input_fn(gy, w, groups, sg), grad_weight_fn(gy, x,
// groups, sg)) and a sum for the bias: the CPU entry point's composition.  grad_out is taken in x's memory format,
// so grad_x comes back in it; entries not asked for in output_mask are 0-element tensors.
template <typename GradInputFn, typename GradWeightFn>
std::tuple<at::Tensor, at::Tensor, at::Tensor> shuffle_conv1x1_backward_from_parts(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, int64_t groups, int64_t shuffle_groups,
    std::array<bool, 3> output_mask, GradInputFn grad_input_fn, GradWeightFn grad_weight_fn) {
  check_shuffle_conv1x1_backward_args(grad_out, x, weight, groups, shuffle_groups);
  const at::Tensor gy = grad_out.contiguous(format_of(x));
  return {output_mask[0] ? grad_input_fn(gy, weight, groups, shuffle_groups) : x.new_empty({0}),
          output_mask[1] ? grad_weight_fn(gy, x, groups, shuffle_groups) : weight.new_empty({0}),
          output_mask[2] ? gy.sum({0, 2, 3}) : weight.new_empty({0})};
}

}  // namespace shufflekern
