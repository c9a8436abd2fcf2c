// CUDA entry point and kernel of shufflekern::kd_loss_forward.  The numerics (online statistics, their
// merge, the loss and gradient formulas) are csrc/kd_loss.h's, shared with the CPU kernel.
//
// One block per row: every thread keeps online (max, sum) states of its strided classes, the block
// merges them in shared memory, thread 0 finishes the row, then the block writes the gradients.
//
// Target values are checked on the device (SK_KERNEL_ASSERT), not by the host: a host check would read the
// target back and synchronise every call.  A bad target is therefore PyTorch's usual device-side assert
// (a RuntimeError; on a real GPU it also leaves the CUDA context unusable, as every device assert does;
// under the emulator the process keeps working).  The kernel never reads out of bounds, asserts or not.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include "cuda/runtime.h"
#include "kd_loss.h"
#include "kd_loss_checks.h"

namespace shufflekern::SK_DEV_NS {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t, typename acc_t>
__global__ void _kd_loss_kernel(const scalar_t* __restrict__ s_base, const scalar_t* __restrict__ t_base,
                                int64_t s_stride, int64_t t_stride, const int64_t* __restrict__ target,
                                const int64_t* __restrict__ counted, scalar_t* __restrict__ gs,
                                scalar_t* __restrict__ gt, acc_t* __restrict__ row_loss, int64_t rows,
                                int64_t C, acc_t temperature, acc_t alpha, int64_t ignore_index,
                                int64_t reduction, bool ce, bool ce_sep) {
  SK_SHARED(KdStream<acc_t>, sh_x, [kThreads]);
  SK_SHARED(KdStream<acc_t>, sh_y, [kThreads]);
  SK_SHARED(KdStream<acc_t>, sh_1, [kThreads]);
  SK_SHARED(KdRowGrad<acc_t>, sh_g, [1]);
  const int64_t row = blockIdx.x;
  const int tid = threadIdx.x;
  const scalar_t* s = s_base + row * s_stride;
  const scalar_t* t = t_base + row * t_stride;
  scalar_t* gs_row = gs ? gs + row * C : nullptr;
  scalar_t* gt_row = gt ? gt + row * C : nullptr;
  int64_t tgt = -1;
  if (target != nullptr) {
    tgt = target[row];
    SK_KERNEL_ASSERT(tgt == ignore_index || (tgt >= 0 && tgt < C));
    if (tgt == ignore_index) {  // uniform over the block: counts in neither term
      if (tid == 0) row_loss[row] = acc_t(0);
      for (int64_t j = tid; j < C; j += blockDim.x) {
        if (gs_row) gs_row[j] = scalar_t(0);
        if (gt_row) gt_row[j] = scalar_t(0);
      }
      return;
    }
  }
  const acc_t inv_t = acc_t(1) / temperature;
  KdStream<acc_t> x = kd_stream_empty<acc_t>(), y = kd_stream_empty<acc_t>(), s1 = kd_stream_empty<acc_t>();
  for (int64_t j = tid; j < C; j += blockDim.x) {
    const acc_t sv = static_cast<acc_t>(s[j]), tv = static_cast<acc_t>(t[j]);
    const acc_t xv = sv * inv_t, yv = tv * inv_t;
    kd_online_add(x, xv, acc_t(0));
    kd_online_add(y, yv, yv - xv);
    if (ce_sep) kd_online_add(s1, sv, acc_t(0));
  }
  sh_x[tid] = x;
  sh_y[tid] = y;
  sh_1[tid] = s1;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (tid < stride) {
      sh_x[tid] = kd_merge(sh_x[tid], sh_x[tid + stride]);
      sh_y[tid] = kd_merge(sh_y[tid], sh_y[tid + stride]);
      if (ce_sep) sh_1[tid] = kd_merge(sh_1[tid], sh_1[tid + stride]);
    }
    __syncthreads();
  }
  if (tid == 0) {
    KdRowStats<acc_t> st{sh_x[0], sh_y[0], ce_sep ? sh_1[0] : sh_x[0]};
    if (ce && !ce_sep) st.s1 = st.x;  // T = 1: the CE softmax is q
    const bool ok = tgt >= 0 && tgt < C;  // else the assert above fired; never read out of bounds
    const acc_t s_tgt = ce ? (ok ? static_cast<acc_t>(s[tgt]) : acc_t(NAN)) : acc_t(0);
    const KdScales<acc_t> sc = kd_scales<acc_t>(reduction, counted ? *counted : rows, C);
    KdRowGrad<acc_t> g;
    row_loss[row] = kd_row_finish<acc_t>(st, ce, s_tgt, temperature, alpha, sc, &g);
    sh_g[0] = g;
  }
  if (gs_row == nullptr && gt_row == nullptr) return;
  __syncthreads();
  const KdRowGrad<acc_t> g = sh_g[0];
  for (int64_t j = tid; j < C; j += blockDim.x) {
    const acc_t sv = static_cast<acc_t>(s[j]), tv = static_cast<acc_t>(t[j]);
    const acc_t xv = sv * inv_t, yv = tv * inv_t;
    if (gs_row) gs_row[j] = static_cast<scalar_t>(kd_grad_student(g, sv, xv, yv, j == tgt));
    if (gt_row) gt_row[j] = static_cast<scalar_t>(kd_grad_teacher(g, xv, yv));
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kd_loss_forward_cuda(
    const at::Tensor& student, const at::Tensor& teacher, const std::optional<at::Tensor>& target,
    double temperature, double alpha, int64_t ignore_index, int64_t reduction, bool grad_student,
    bool grad_teacher) {
  check_kd_loss_args(student, teacher, target, temperature, alpha, reduction);
  SK_RT::Guard guard(student.device());
  const int64_t classes = student.size(-1);
  const at::Tensor s = kd_rows_view(student), t = kd_rows_view(teacher);
  const int64_t rows = s.size(0);
  at::Tensor tgt, counted;
  if (target.has_value()) {
    tgt = target->reshape({-1}).to(at::kLong).contiguous();
    counted = tgt.ne(ignore_index).sum().to(at::kLong);  // stays on the device: the kernel reads it
  }
  const auto acc = student.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor row_loss = at::empty({rows}, student.options().dtype(acc));
  at::Tensor gs = at::empty(grad_student ? student.sizes() : at::IntArrayRef{0}, student.options());
  at::Tensor gt = at::empty(grad_teacher ? teacher.sizes() : at::IntArrayRef{0}, teacher.options());
  const bool ce = target.has_value() && alpha != 1.0;
  if (rows > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, student.scalar_type(), "kd_loss_forward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      SK_LAUNCH((_kd_loss_kernel<scalar_t, acc_t>), dim3(static_cast<unsigned>(rows)), dim3(kThreads), 0,
                SK_RT::dptr<scalar_t>(s), SK_RT::dptr<scalar_t>(t), s.stride(0), t.stride(0),
                tgt.defined() ? SK_RT::dptr<int64_t>(tgt) : nullptr,
                counted.defined() ? SK_RT::dptr<int64_t>(counted) : nullptr,
                grad_student ? SK_RT::dptr<scalar_t>(gs) : nullptr, grad_teacher ? SK_RT::dptr<scalar_t>(gt) : nullptr,
                SK_RT::dptr<acc_t>(row_loss), rows, classes, acc_t(temperature), acc_t(alpha), ignore_index,
                reduction, ce, ce && temperature != 1.0);
    });
  }
  return {kd_reduce_rows(row_loss, student, reduction), gs, gt};
}

}  // namespace

SK_DEVICE_IMPL(m) { m.impl("kd_loss_forward", &kd_loss_forward_cuda); }

}  // namespace shufflekern::SK_DEV_NS
