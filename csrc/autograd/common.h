// Helpers of the C++ autograd kernels (csrc/autograd/<op>.cpp).
//
// Each op's derivative is written once, in C++, on the Autograd dispatch key, and serves both families of
// the op: the compiled kernels (shufflekern::<op>) and the Triton twin (shufflekern::<op>_triton).  The
// autograd kernel is a template on the family, so the backward of a twin calls the twin's backward ops.
// C++ rather than torch.library.register_autograd: a Python autograd kernel costs every call a trip through
// the interpreter (~10-20 us), as much as a whole channel shuffle of a ShuffleNet activation.
#pragma once
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>

namespace shufflekern::autograd {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The typed handle of shufflekern::<name>, called through the dispatcher (so that a backward called
// under create_graph is itself recorded, and the forward, under AutoDispatchBelowADInplaceOrView, reaches
// the CPU / CUDA / Fake kernel).
template <typename Sig>
c10::TypedOperatorHandle<Sig> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

// The two families of every op: the name suffix of their schemas (csrc/shufflekern.cpp).
struct Native {
  static constexpr const char* suffix = "";
};
struct Triton {
  static constexpr const char* suffix = "_triton";
};

// The typed handle of shufflekern::<base> in family Fam.
template <typename Sig, typename Fam>
c10::TypedOperatorHandle<Sig> family_op(const char* base) {
  return op_handle<Sig>((std::string("shufflekern::") + base + Fam::suffix).c_str());
}

// Registers the autograd kernel template Fn for <op> and <op>_triton:
//   TORCH_LIBRARY_IMPL(shufflekern, Autograd, m) { SK_AUTOGRAD_FAMILY(m, "channel_shuffle", channel_shuffle_autograd); }
#define SK_AUTOGRAD_FAMILY(m, op, Fn)                                                   \
  do {                                                                                  \
    (m).impl(op, &Fn<::shufflekern::autograd::Native>);                                 \
    (m).impl(op "_triton", &Fn<::shufflekern::autograd::Triton>);                       \
  } while (0)

// True when `t` is a plain tensor computed eagerly: no torch.compile / make_fx / FakeTensor tracing is
// looking, so a value-dependent shortcut does not get baked into a traced graph.
inline bool is_eager_value(const at::Tensor& t) {
  return c10::impl::TorchDispatchModeTLS::stack_len() == 0 && !t.unsafeGetTensorImpl()->is_python_dispatch() &&
         !t.key_set().has(c10::DispatchKey::Functionalize) && t.has_storage();
}

// A size that the derivative needs as an int (specialises a symbolic size, as the Python formula did).
inline int64_t int_size(const at::Tensor& t, int64_t dim) {
  return t.sym_size(dim).guard_int(__FILE__, __LINE__);
}

// Losses whose forward op also returns d loss/d student and d loss/d teacher (kd_loss_forward,
// dkd_loss_forward): the forward saves them, the backward scales them by grad_output.
inline void save_loss_grads(AutogradContext* ctx, const at::Tensor& gs, const at::Tensor& gt, bool per_row,
                            bool grad_student, bool grad_teacher) {
  ctx->mark_non_differentiable({gs, gt});
  // The gradient outputs get no gradient: do not let autograd build [R, C] zeros for them.
  ctx->set_materialize_grads(false);
  ctx->save_for_backward({gs, gt});
  ctx->saved_data["per_row"] = per_row;
  ctx->saved_data["grad_student"] = grad_student;
  ctx->saved_data["grad_teacher"] = grad_teacher;
}

// grad_output * (precomputed gradient).  loss.backward() passes a 1: the precomputed gradient is then the
// answer, and skipping the multiply saves a full pass over [rows, classes] (Liger-Kernel does the same).
// Only for eager CPU values: a traced graph keeps the multiply, and on CUDA the test would synchronise.
inline at::Tensor scale_loss_grad(const at::Tensor& grad, const at::Tensor& g, bool per_row) {
  if (g.device().is_cpu() && is_eager_value(g)) {
    const bool ones = g.numel() == 1 ? g.item<double>() == 1.0 : g.eq(1).all().item<bool>();
    if (ones) return grad;
  }
  return grad * (per_row ? g.unsqueeze(-1) : g);
}

// Fills out[0] (student) and out[1] (teacher) from what save_loss_grads saved.
inline void loss_grads_backward(AutogradContext* ctx, const variable_list& grads, variable_list& out,
                                const char* op, const char* wrappers) {
  const auto saved = ctx->get_saved_variables();
  const bool per_row = ctx->saved_data["per_row"].toBool();
  const char* names[2] = {"student_logits", "teacher_logits"};
  const char* flags[2] = {"grad_student", "grad_teacher"};
  for (size_t i = 0; i < 2; ++i) {
    if (!ctx->needs_input_grad(i)) continue;
    TORCH_CHECK(ctx->saved_data[flags[i]].toBool(), op, ": the gradient w.r.t. ", names[i],
                " was not computed in the forward (", flags[i], "=False); use ", wrappers,
                ", which ask for it whenever the input requires grad");
    if (grads[0].defined()) out[i] = scale_loss_grad(saved[i], grads[0], per_row);
  }
}

}  // namespace shufflekern::autograd
