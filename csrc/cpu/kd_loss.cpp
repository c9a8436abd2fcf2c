// CPU entry point of shufflekern::kd_loss_forward (kernels in csrc/cpu/vec/kd_loss.cpp).
#include <cstdint>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "kd_loss_checks.h"
#include "cpu/kd_loss_kernel.h"
#include "cpu/loss_common.h"
#include "emu/route.h"

namespace shufflekern::cpu {

SK_DEFINE_KERNEL_TABLE(kd_loss_table, KdLossFn);

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> kd_loss_forward_cpu(
    const at::Tensor& student, const at::Tensor& teacher, const std::optional<at::Tensor>& target,
    double temperature, double alpha, int64_t ignore_index, int64_t reduction, bool grad_student,
    bool grad_teacher) {
  check_kd_loss_args(student, teacher, target, temperature, alpha, reduction);
  const int64_t classes = student.size(-1);
  const at::Tensor s = kd_rows_view(student), t = kd_rows_view(teacher);
  const int64_t rows = s.size(0);
  at::Tensor tgt;
  int64_t counted = rows;
  if (target.has_value()) {
    tgt = target->reshape({-1}).to(at::kLong).contiguous();
    counted = count_rows(tgt, classes, ignore_index);
  }
  const KdOutputs out = kd_outputs(student, teacher, rows, grad_student, grad_teacher);
  if (grad_student) advise_huge_pages(out.grad_s);
  if (grad_teacher) advise_huge_pages(out.grad_t);
  if (rows > 0) kd_loss_table.get()(loss_args(s, t, tgt, out, temperature, alpha, ignore_index, reduction, counted));
  return {kd_reduce_rows(out.row_loss, student, reduction), out.grad_s, out.grad_t};
}

}  // namespace

// Routed: under sk.backend("emulated") the CUDA kernel runs instead, in the emulator (csrc/emu/route.h).
TORCH_LIBRARY_IMPL(shufflekern, CPU, m) {
  m.impl("kd_loss_forward", SK_ROUTED("kd_loss_forward", kd_loss_forward_cpu));
}

}  // namespace shufflekern::cpu
