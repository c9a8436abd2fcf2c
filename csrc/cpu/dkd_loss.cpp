// CPU entry point of shufflekern::dkd_loss_forward (kernel in csrc/cpu/vec/dkd_loss.cpp, maths in csrc/dkd_loss.h).
#include <cstdint>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/dkd_loss_kernel.h"
#include "cpu/loss_common.h"
#include "emu/route.h"
#include "kd_loss_checks.h"

namespace shufflekern::cpu {

SK_DEFINE_KERNEL_TABLE(dkd_loss_table, DkdLossFn);

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> dkd_loss_forward_cpu(
    const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& target, double temperature,
    double alpha, double beta, int64_t ignore_index, int64_t reduction, bool grad_student, bool grad_teacher) {
  check_dkd_loss_args(student, teacher, target, temperature, alpha, beta, reduction);
  const int64_t classes = student.size(-1);
  const at::Tensor s = kd_rows_view(student), t = kd_rows_view(teacher);
  const int64_t rows = s.size(0);
  const at::Tensor tgt = target.reshape({-1}).to(at::kLong).contiguous();
  const int64_t counted = count_rows(tgt, classes, ignore_index, "dkd_loss");
  const KdOutputs out = kd_outputs(student, teacher, rows, grad_student, grad_teacher);
  if (grad_student) advise_huge_pages(out.grad_s);
  if (grad_teacher) advise_huge_pages(out.grad_t);
  if (rows > 0) {
    const DkdLossArgs args{loss_args(s, t, tgt, out, temperature, alpha, ignore_index, reduction, counted), beta};
    dkd_loss_table.get()(args);
  }
  return {kd_reduce_rows(out.row_loss, student, reduction), out.grad_s, out.grad_t};
}

}  // namespace

// Routed: under sk.backend("emulated") the CUDA kernel runs instead, in the emulator (csrc/emu/route.h).
TORCH_LIBRARY_IMPL(shufflekern, CPU, m) {
  m.impl("dkd_loss_forward", SK_ROUTED("dkd_loss_forward", dkd_loss_forward_cpu));
}

}  // namespace shufflekern::cpu
