// Autograd of shufflekern::kd_loss_forward and its Triton twin.  The op returns (loss, d loss/d student, d loss/d teacher),
// the gradients computed in the forward pass while each row is cache-hot (0-element tensors when not
// asked for), so the backward only scales them by grad_output.
#include <torch/library.h>

#include "autograd/common.h"
#include "kd_loss.h"

namespace shufflekern::autograd {
namespace {

using KdSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                              const std::optional<at::Tensor>&, double, double,
                                                              int64_t, int64_t, bool, bool);

// grad_output * (precomputed gradient).  loss.backward() passes a 1: the precomputed gradient is then the
// answer, and skipping the multiply saves a full pass over [rows, classes] (Liger-Kernel does the same).
// Only for eager CPU values: a traced graph keeps the multiply, and on CUDA the test would synchronise.
at::Tensor scale(const at::Tensor& grad, const at::Tensor& g, bool per_row) {
  if (g.device().is_cpu() && is_eager_value(g)) {
    const bool ones = g.numel() == 1 ? g.item<double>() == 1.0 : g.eq(1).all().item<bool>();
    if (ones) return grad;
  }
  return grad * (per_row ? g.unsqueeze(-1) : g);
}

template <typename Fam>
struct KdLoss : torch::autograd::Function<KdLoss<Fam>> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& student, const at::Tensor& teacher,
                               const std::optional<at::Tensor>& target, double temperature, double alpha,
                               int64_t ignore_index, int64_t reduction, bool grad_student, bool grad_teacher) {
    static const auto op = family_op<KdSig, Fam>("kd_loss_forward");
    at::Tensor loss, gs, gt;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(loss, gs, gt) = op.call(student, teacher, target, temperature, alpha, ignore_index, reduction,
                                       grad_student, grad_teacher);
    }
    ctx->mark_non_differentiable({gs, gt});
    // The gradient outputs get no gradient: do not let autograd build [R, C] zeros for them.
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({gs, gt});
    ctx->saved_data["per_row"] = reduction == kKdNone;
    ctx->saved_data["grad_student"] = grad_student;
    ctx->saved_data["grad_teacher"] = grad_teacher;
    return {loss, gs, gt};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool per_row = ctx->saved_data["per_row"].toBool();
    variable_list out(9);
    const char* names[2] = {"student_logits", "teacher_logits"};
    const char* flags[2] = {"grad_student", "grad_teacher"};
    for (size_t i = 0; i < 2; ++i) {
      if (!ctx->needs_input_grad(i)) continue;
      TORCH_CHECK(ctx->saved_data[flags[i]].toBool(), "kd_loss_forward: the gradient w.r.t. ", names[i],
                  " was not computed in the forward (", flags[i],
                  "=False); use sk.kd_loss / sk.kd_kl_div, which ask for it whenever the input requires grad");
      if (grads[0].defined()) out[i] = scale(saved[i], grads[0], per_row);
    }
    return out;
  }
};

template <typename Fam>
std::tuple<at::Tensor, at::Tensor, at::Tensor> kd_loss_forward_autograd(
    const at::Tensor& student, const at::Tensor& teacher, const std::optional<at::Tensor>& target,
    double temperature, double alpha, int64_t ignore_index, int64_t reduction, bool grad_student,
    bool grad_teacher) {
  auto r = KdLoss<Fam>::apply(student, teacher, target, temperature, alpha, ignore_index, reduction, grad_student,
                         grad_teacher);
  return {r[0], r[1], r[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflekern, Autograd, m) { SK_AUTOGRAD_FAMILY(m, "kd_loss_forward", kd_loss_forward_autograd); }

}  // namespace shufflekern::autograd
