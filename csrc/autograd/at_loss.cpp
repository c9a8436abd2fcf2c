// Autograd of shufflekern::at_loss and its Triton twin.  The forward returns (loss, q_student, q_teacher);
// the q's ([N, H*W], no gradient) are saved with the maps, and the backward op of the same family reads each
// map once and writes its gradient once (csrc/at_loss.h).  Not twice differentiable.
#include <torch/library.h>

#include "autograd/common.h"

namespace shufflekern::autograd {
namespace {

using Fwd = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&);
using Bwd = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, const at::Tensor&, std::array<bool, 2>);

template <typename Fam>
struct AtLoss : torch::autograd::Function<AtLoss<Fam>> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& fs, const at::Tensor& ft) {
    static const auto op = family_op<Fwd, Fam>("at_loss");
    at::Tensor loss, qs, qt;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(loss, qs, qt) = op.call(fs, ft);
    }
    ctx->mark_non_differentiable({qs, qt});
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({fs, ft, qs, qt});
    return {loss, qs, qt};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = family_op<Bwd, Fam>("at_loss_backward");
    const std::array<bool, 2> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1)};
    if (!grads[0].defined() || !(mask[0] || mask[1])) return variable_list(2);
    const auto s = ctx->get_saved_variables();
    auto [gs, gt] = op.call(grads[0], s[0], s[1], s[2], s[3], mask);
    return {mask[0] ? gs : at::Tensor(), mask[1] ? gt : at::Tensor()};
  }
};

template <typename Fam>
std::tuple<at::Tensor, at::Tensor, at::Tensor> at_loss_autograd(const at::Tensor& fs, const at::Tensor& ft) {
  auto out = AtLoss<Fam>::apply(fs, ft);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflekern, Autograd, m) { SK_AUTOGRAD_FAMILY(m, "at_loss", at_loss_autograd); }

}  // namespace shufflekern::autograd
