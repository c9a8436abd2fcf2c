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
  const auto acc = student.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor row_loss = at::empty({rows}, student.options().dtype(acc));
  at::Tensor gs = at::empty(grad_student ? student.sizes() : at::IntArrayRef{0}, student.options());
  at::Tensor gt = at::empty(grad_teacher ? teacher.sizes() : at::IntArrayRef{0}, teacher.options());
  if (grad_student) advise_huge_pages(gs);
  if (grad_teacher) advise_huge_pages(gt);
  if (rows > 0) {
    DkdLossArgs args{};
    args.s = s.data_ptr();
    args.t = t.data_ptr();
    args.s_stride = s.stride(0);
    args.t_stride = t.stride(0);
    args.target = tgt.data_ptr<int64_t>();
    args.grad_s = grad_student ? gs.data_ptr() : nullptr;
    args.grad_t = grad_teacher ? gt.data_ptr() : nullptr;
    args.row_loss = row_loss.data_ptr();
    args.rows = rows;
    args.classes = classes;
    args.temperature = temperature;
    args.alpha = alpha;
    args.beta = beta;
    args.ignore_index = ignore_index;
    args.reduction = reduction;
    args.counted = counted;
    args.dtype = dtype_code(student.scalar_type());
    dkd_loss_table.get()(args);
  }
  return {kd_reduce_rows(row_loss, student, reduction), gs, gt};
}

}  // namespace

// Routed: under sk.backend("emulated") the CUDA kernel runs instead, in the emulator (csrc/emu/route.h).
TORCH_LIBRARY_IMPL(shufflekern, CPU, m) {
  m.impl("dkd_loss_forward", SK_ROUTED("dkd_loss_forward", dkd_loss_forward_cpu));
}

}  // namespace shufflekern::cpu
