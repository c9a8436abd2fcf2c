// Argument checks of the distillation loss shared by the CPU and CUDA entry points (and the emulated build
// of the .cu).  Host-only, plain ATen.  The Python wrappers check the same things first; these guard
// direct torch.ops.shufflekern.* calls.  Target values are checked where the kernels read them: by the CPU
// entry point on the host, by a device-side assertion in the CUDA kernel (no host sync).
#pragma once
#include <cmath>
#include <optional>

#include <ATen/ATen.h>

#include "kd_loss.h"

namespace shufflekern {

inline void check_kd_loss_args(const at::Tensor& s, const at::Tensor& t, const std::optional<at::Tensor>& target,
                               double temperature, double alpha, int64_t reduction, const char* op = "kd_loss") {
  for (const at::Tensor* x : {&s, &t}) {
    const char* name = x == &s ? "student_logits" : "teacher_logits";
    const auto dt = x->scalar_type();
    TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16 || dt == at::kHalf, op, ": ",
                     name, " must be float32, float64, bfloat16 or float16, got ", dt);
    TORCH_CHECK_VALUE(x->dim() >= 1, op, ": ", name, " must have a class dimension (at least 1-D), got 0-D");
  }
  TORCH_CHECK_TYPE(t.scalar_type() == s.scalar_type(), op, ": teacher_logits dtype (", t.scalar_type(),
                   ") must match student_logits dtype (", s.scalar_type(), ")");
  TORCH_CHECK_VALUE(t.device() == s.device(), op, ": teacher_logits must be on student_logits' device (",
                    s.device(), "), got ", t.device());
  TORCH_CHECK_VALUE(t.sizes() == s.sizes(), op, ": teacher_logits shape ", t.sizes(),
                    " must match student_logits shape ", s.sizes());
  TORCH_CHECK_VALUE(s.size(-1) >= 1, op, ": student_logits must have at least one class, got shape ", s.sizes());
  TORCH_CHECK_VALUE(temperature > 0 && std::isfinite(temperature), op,
                    ": temperature must be a finite number > 0, got ", temperature);
  TORCH_CHECK_VALUE(std::isfinite(alpha), op, ": alpha must be finite, got ", alpha);
  TORCH_CHECK_VALUE(reduction >= kKdNone && reduction <= kKdBatchMean, op,
                    ": reduction code must be 0 (none), 1 (mean), 2 (sum) or 3 (batchmean), got ", reduction);
  if (target.has_value()) {
    const at::Tensor& y = *target;
    TORCH_CHECK_TYPE(y.scalar_type() == at::kLong || y.scalar_type() == at::kInt, op,
                     ": target must be an int64 (or int32) tensor of class indices, got ", y.scalar_type());
    TORCH_CHECK_VALUE(y.device() == s.device(), op, ": target must be on student_logits' device (", s.device(),
                      "), got ", y.device());
    TORCH_CHECK_VALUE(y.sizes() == s.sizes().slice(0, s.dim() - 1), op, ": target shape ", y.sizes(),
                      " must be student_logits' shape without the class dimension, ",
                      s.sizes().slice(0, s.dim() - 1));
  }
}

// dkd_loss_forward: kd_loss's checks, a target (required), beta, and at least two classes (DKD splits the
// target class from the others).
inline void check_dkd_loss_args(const at::Tensor& s, const at::Tensor& t, const at::Tensor& target,
                                double temperature, double alpha, double beta, int64_t reduction) {
  static const char* op = "dkd_loss";
  check_kd_loss_args(s, t, target, temperature, alpha, reduction, op);
  TORCH_CHECK_VALUE(std::isfinite(beta), op, ": beta must be finite, got ", beta);
  TORCH_CHECK_VALUE(s.size(-1) >= 2, op, ": student_logits must have at least 2 classes (DKD splits the target "
                    "class from the others), got shape ", s.sizes());
}

// [R, C] view of logits with contiguous classes (copies only when the class stride is not 1).
inline at::Tensor kd_rows_view(const at::Tensor& x) {
  const int64_t c = x.size(-1);
  at::Tensor r = x.reshape({-1, c});
  if (c > 1 && r.stride(1) != 1) r = r.contiguous();
  return r;
}

// What a distillation loss's forward kernel writes: the per-row losses (in double for double logits, else
// float) and the wanted gradients, dense like the logits (0 elements when not wanted: the op returns them so).
struct KdOutputs {
  at::Tensor row_loss, grad_s, grad_t;
};

inline KdOutputs kd_outputs(const at::Tensor& student, const at::Tensor& teacher, int64_t rows, bool grad_student,
                            bool grad_teacher) {
  const auto acc = student.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return {at::empty({rows}, student.options().dtype(acc)),
          at::empty(grad_student ? student.sizes() : at::IntArrayRef{0}, student.options()),
          at::empty(grad_teacher ? teacher.sizes() : at::IntArrayRef{0}, teacher.options())};
}

// The op's loss output from the per-row losses (already scaled by the reduction's divisor): the rows
// themselves for reduction none (shape of the leading dims), else their sum, accumulated in double.
inline at::Tensor kd_reduce_rows(const at::Tensor& row_loss, const at::Tensor& student, int64_t reduction) {
  if (reduction == kKdNone) {
    return row_loss.to(student.scalar_type()).reshape(student.sizes().slice(0, student.dim() - 1));
  }
  return row_loss.sum(at::kDouble).to(student.scalar_type());
}

}  // namespace shufflekern
