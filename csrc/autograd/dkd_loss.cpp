// Autograd of shufflekern::dkd_loss_forward and its Triton twin.  Like kd_loss_forward, the op returns (loss,
// d loss/d student, d loss/d teacher), the gradients computed in the forward pass (0-element tensors when not
// asked for), so the backward only scales them by grad_output (csrc/autograd/common.h).
#include <torch/library.h>

#include "autograd/common.h"
#include "kd_loss.h"

namespace shufflekern::autograd {
namespace {

using DkdSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                               double, double, double, int64_t, int64_t, bool, bool);

template <typename Fam>
struct DkdLoss : torch::autograd::Function<DkdLoss<Fam>> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& student, const at::Tensor& teacher,
                               const at::Tensor& target, double temperature, double alpha, double beta,
                               int64_t ignore_index, int64_t reduction, bool grad_student, bool grad_teacher) {
    static const auto op = family_op<DkdSig, Fam>("dkd_loss_forward");
    at::Tensor loss, gs, gt;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(loss, gs, gt) = op.call(student, teacher, target, temperature, alpha, beta, ignore_index, reduction,
                                       grad_student, grad_teacher);
    }
    save_loss_grads(ctx, gs, gt, reduction == kKdNone, grad_student, grad_teacher);
    return {loss, gs, gt};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(10);
    loss_grads_backward(ctx, grads, out, "dkd_loss_forward", "sk.dkd_loss");
    return out;
  }
};

template <typename Fam>
std::tuple<at::Tensor, at::Tensor, at::Tensor> dkd_loss_forward_autograd(
    const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& target, double temperature, double alpha,
    double beta, int64_t ignore_index, int64_t reduction, bool grad_student, bool grad_teacher) {
  auto r = DkdLoss<Fam>::apply(student, teacher, target, temperature, alpha, beta, ignore_index, reduction,
                               grad_student, grad_teacher);
  return {r[0], r[1], r[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflekern, Autograd, m) { SK_AUTOGRAD_FAMILY(m, "dkd_loss_forward", dkd_loss_forward_autograd); }

}  // namespace shufflekern::autograd
