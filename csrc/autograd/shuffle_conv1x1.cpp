// Autograd of shufflekern::shuffle_conv1x1 and its Triton twin.  With P the shuffle (x' = P x) and W_bd the block-diagonal
// weight of the groups, y = W_bd P x + b, so
//   grad_x = P^T W_bd^T grad_y          (shuffle_conv1x1_grad_input)
//   grad_W = grad_y (P x)^T per group   (shuffle_conv1x1_grad_weight, summed over images and pixels)
//   grad_b = grad_y summed over N, H, W
#include <torch/library.h>

#include "autograd/common.h"
#include "checks.h"

namespace shufflekern::autograd {
namespace {

template <typename Fam>
at::Tensor forward_op(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b, int64_t groups,
                      int64_t sg) {
  static const auto op = family_op<
      at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, int64_t, int64_t), Fam>(
      "shuffle_conv1x1");
  return op.call(x, w, b, groups, sg);
}

template <typename Fam>
at::Tensor grad_input_op(const at::Tensor& gy, const at::Tensor& w, int64_t groups, int64_t sg) {
  static const auto op =
      family_op<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t), Fam>("shuffle_conv1x1_grad_input");
  return op.call(gy, w, groups, sg);
}

template <typename Fam>
at::Tensor grad_weight_op(const at::Tensor& gy, const at::Tensor& x, int64_t groups, int64_t sg) {
  static const auto op =
      family_op<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t), Fam>("shuffle_conv1x1_grad_weight");
  return op.call(gy, x, groups, sg);
}

template <typename Fam>
struct ShuffleConv1x1 : torch::autograd::Function<ShuffleConv1x1<Fam>> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, int64_t groups, int64_t sg) {
    at::Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      y = forward_op<Fam>(x, weight, bias, groups, sg);
    }
    ctx->save_for_backward({x, weight});
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["shuffle_groups"] = sg;
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->saved_data["channels_last"] = format_of(x) == at::MemoryFormat::ChannelsLast;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1];
    const int64_t groups = ctx->saved_data["groups"].toInt(), sg = ctx->saved_data["shuffle_groups"].toInt();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    // grad_x comes back in x's memory format, as for torch's convolutions.
    const at::Tensor gy = grads[0].contiguous(ctx->saved_data["channels_last"].toBool()
                                                  ? at::MemoryFormat::ChannelsLast
                                                  : at::MemoryFormat::Contiguous);
    at::Tensor gx, gw, gb;
    if (ctx->needs_input_grad(0)) gx = grad_input_op<Fam>(gy, weight, groups, sg);
    if (ctx->needs_input_grad(1)) gw = grad_weight_op<Fam>(gy, x, groups, sg);
    if (has_bias && ctx->needs_input_grad(2)) gb = gy.sum({0, 2, 3});
    return {gx, gw, gb, at::Tensor(), at::Tensor()};
  }
};

template <typename Fam>
at::Tensor shuffle_conv1x1_autograd(const at::Tensor& x, const at::Tensor& weight,
                                    const std::optional<at::Tensor>& bias, int64_t groups, int64_t sg) {
  return ShuffleConv1x1<Fam>::apply(x, weight, bias, groups, sg);
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflekern, Autograd, m) { SK_AUTOGRAD_FAMILY(m, "shuffle_conv1x1", shuffle_conv1x1_autograd); }

}  // namespace shufflekern::autograd
