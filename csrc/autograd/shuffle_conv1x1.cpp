// Autograd of shufflekern::shuffle_conv1x1 and its Triton twin.  With P the shuffle (x' = P x) and W_bd the block-diagonal
// weight of the groups, y = W_bd P x + b, so
//   grad_x = P^T W_bd^T grad_y          (shuffle_conv1x1_grad_input)
//   grad_W = grad_y (P x)^T per group   (shuffle_conv1x1_grad_weight, summed over images and pixels)
//   grad_b = grad_y summed over N, H, W
// all three from one op, shufflekern::shuffle_conv1x1_backward (the parts are ops of their own too).
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
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_op(const at::Tensor& gy, const at::Tensor& x,
                                                           const at::Tensor& w, int64_t groups, int64_t sg,
                                                           std::array<bool, 3> mask) {
  static const auto op = family_op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                                       const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t,
                                       std::array<bool, 3>),
                                   Fam>("shuffle_conv1x1_backward");
  return op.call(gy, x, w, groups, sg, mask);
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
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1];
    const int64_t groups = ctx->saved_data["groups"].toInt(), sg = ctx->saved_data["shuffle_groups"].toInt();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    // One op for the three gradients (grad_x in x's memory format, as for torch's convolutions), so a family
    // may compute them in one pass over grad_out.
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      has_bias && ctx->needs_input_grad(2)};
    at::Tensor gx, gw, gb;
    if (mask[0] || mask[1] || mask[2]) std::tie(gx, gw, gb) = backward_op<Fam>(grads[0], x, weight, groups, sg, mask);
    if (!mask[0]) gx = at::Tensor();
    if (!mask[1]) gw = at::Tensor();
    if (!mask[2]) gb = at::Tensor();
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
