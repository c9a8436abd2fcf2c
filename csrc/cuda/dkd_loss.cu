// CUDA entry point and kernel of shufflekern::dkd_loss_forward (Decoupled KD).  The numerics are
// csrc/dkd_loss.h's (shared with the CPU kernel); the layout is kd_loss.cu's (csrc/cuda/loss_rows.cuh): a
// group of G threads a row (a part of a warp for small C, a whole block for large C), R rows a block, the
// block's rows cached in shared memory (read once, gradients written in place, stored once) or, for a row too
// long for the budget, streamed twice from global memory.
//
// One pass over the row gathers the online statistics of the NON-target classes (the target is skipped, so
// 1 - p[c] is never formed by subtraction); the target's logits are read once, before the group's reduction.
// Target values are checked on the device (SK_KERNEL_ASSERT, no host sync), as in kd_loss.cu; a row with a
// bad target reads nothing out of bounds (it is treated as ignored after the assertion).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include "cuda/loss_rows.cuh"
#include "cuda/runtime.h"
#include "dkd_loss.h"
#include "kd_loss_checks.h"

namespace shufflekern::SK_DEV_NS {
namespace {

template <typename acc_t>
struct DkdRowArgs {
  int64_t C, rows, s_stride, t_stride, ignore_index, reduction;
  acc_t temperature, alpha, beta;
  bool want_gs, want_gt;
};

template <typename scalar_t, typename acc_t>
__global__ void _dkd_loss_kernel(SK_GLOBAL(const scalar_t) s_base, SK_GLOBAL(const scalar_t) t_base,
                                 SK_GLOBAL(const int64_t) target, SK_GLOBAL(const int64_t) counted,
                                 SK_GLOBAL(scalar_t) gs_base, SK_GLOBAL(scalar_t) gt_base, SK_GLOBAL(acc_t) row_loss,
                                 DkdRowArgs<acc_t> a, int G, int R, bool cached) {
  SK_SHARED(KdStream<acc_t>, red, [kThreads / 32][2]);
  SK_DYNAMIC_SHARED(scalar_t, cache);
  const int tid = threadIdx.x, grp = tid / G, lane = tid % G;
  const int64_t r0 = int64_t(blockIdx.x) * R;
  const int64_t nrows = a.rows - r0 < R ? a.rows - r0 : R;
  const int64_t row = r0 + grp;
  const bool live = grp < nrows;
  const int64_t C = a.C;
  scalar_t* cs = cache;                   // [R, C] student rows, then their gradients
  scalar_t* ct = cache + int64_t(R) * C;  // [R, C] teacher rows, then their gradients
  if (cached) cache_rows(cs, ct, s_base, t_base, r0, nrows, C, a.s_stride, a.t_stride);
  int64_t tgt = -1;
  if (live) {
    tgt = target[row];
    SK_KERNEL_ASSERT(tgt == a.ignore_index || (tgt >= 0 && tgt < C));
  }
  const bool counted_row = live && tgt >= 0 && tgt < C && tgt != a.ignore_index;
  const acc_t inv_t = acc_t(1) / a.temperature;
  auto s_row = s_base + (live ? row : 0) * a.s_stride;
  auto t_row = t_base + (live ? row : 0) * a.t_stride;
  const scalar_t* cs_row = cs + int64_t(grp) * C;
  const scalar_t* ct_row = ct + int64_t(grp) * C;
  // The target's logits, read before group_reduce synchronises the group (after it, the cached row is
  // overwritten with gradients).
  acc_t xc = acc_t(0), yc = acc_t(0);
  if (counted_row) {
    xc = (cached ? acc_t(cs_row[tgt]) : acc_t(s_row[tgt])) * inv_t;
    yc = (cached ? acc_t(ct_row[tgt]) : acc_t(t_row[tgt])) * inv_t;
  }
  KdStream<acc_t> st[2] = {kd_stream_empty<acc_t>(), kd_stream_empty<acc_t>()};
  if (counted_row) {
    for (int64_t j = lane; j < C; j += G) {
      if (j == tgt) continue;
      const acc_t xv = (cached ? acc_t(cs_row[j]) : acc_t(s_row[j])) * inv_t;
      const acc_t yv = (cached ? acc_t(ct_row[j]) : acc_t(t_row[j])) * inv_t;
      kd_online_add(st[0], xv, acc_t(0));
      kd_online_add(st[1], yv, yv - xv);
    }
  }
  group_reduce(st, G, red);
  DkdRowGrad<acc_t> g{};
  acc_t loss = acc_t(0);
  if (counted_row) {
    const acc_t w = kd_scales<acc_t>(a.reduction, int64_t(counted[0]), C).kl;
    loss = dkd_row_finish<acc_t>(st[0], st[1], xc, yc, a.temperature, a.alpha, a.beta, w, &g);
  }
  if (live && lane == 0) row_loss[row] = loss;
  if (!a.want_gs && !a.want_gt) return;
  // Element j's gradients (0 for an ignored row).
  auto grad = [&](int64_t j, acc_t sv, acc_t tv, scalar_t* gs, scalar_t* gt) {
    const acc_t xv = sv * inv_t, yv = tv * inv_t;
    const bool is_c = j == tgt;
    *gs = !counted_row ? scalar_t(0) : is_c ? scalar_t(g.gs_c) : scalar_t(dkd_grad_student(g, xv, yv));
    *gt = !counted_row ? scalar_t(0) : is_c ? scalar_t(g.gt_c) : scalar_t(dkd_grad_teacher(g, xv, yv));
  };
  if (cached) {
    // Gradients into the row's own slots (each element read, then overwritten, by the same thread).
    if (live) {
      scalar_t* ws = cs + int64_t(grp) * C;
      scalar_t* wt = ct + int64_t(grp) * C;
      for (int64_t j = lane; j < C; j += G) grad(j, acc_t(ws[j]), acc_t(wt[j]), &ws[j], &wt[j]);
    }
    store_rows(gs_base, gt_base, cs, ct, r0, nrows, C, a.want_gs, a.want_gt);
    return;
  }
  if (!live) return;
  auto gs_row = gs_base + row * C;
  auto gt_row = gt_base + row * C;
  for (int64_t j = lane; j < C; j += G) {
    scalar_t vs, vt;
    grad(j, acc_t(s_row[j]), acc_t(t_row[j]), &vs, &vt);
    if (a.want_gs) gs_row[j] = vs;
    if (a.want_gt) gt_row[j] = vt;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dkd_loss_forward_cuda(
    const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& target, double temperature,
    double alpha, double beta, int64_t ignore_index, int64_t reduction, bool grad_student, bool grad_teacher) {
  check_dkd_loss_args(student, teacher, target, temperature, alpha, beta, reduction);
  SK_RT::Guard guard(student.device());
  const int64_t classes = student.size(-1);
  const at::Tensor s = kd_rows_view(student), t = kd_rows_view(teacher);
  const int64_t rows = s.size(0);
  const at::Tensor tgt = target.reshape({-1}).to(at::kLong).contiguous();
  const at::Tensor counted = tgt.ne(ignore_index).sum().to(at::kLong);  // stays on the device: the kernel reads it
  const KdOutputs out = kd_outputs(student, teacher, rows, grad_student, grad_teacher);
  if (rows > 0) {
    const KdShape sh = kd_shape(classes, student.element_size());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, student.scalar_type(), "dkd_loss_forward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const DkdRowArgs<acc_t> args{classes,         rows,        s.stride(0), t.stride(0),  ignore_index,
                                   reduction,       acc_t(temperature),       acc_t(alpha), acc_t(beta),
                                   grad_student,    grad_teacher};
      SK_LAUNCH((_dkd_loss_kernel<scalar_t, acc_t>), sh.grid(rows), sh.block(), sh.smem, SK_RT::dptr<scalar_t>(s),
                SK_RT::dptr<scalar_t>(t), SK_RT::dptr<int64_t>(tgt), SK_RT::dptr<int64_t>(counted),
                grad_student ? SK_RT::dptr<scalar_t>(out.grad_s) : nullptr,
                grad_teacher ? SK_RT::dptr<scalar_t>(out.grad_t) : nullptr, SK_RT::dptr<acc_t>(out.row_loss), args,
                sh.G, sh.R, sh.cached);
    });
  }
  return {kd_reduce_rows(out.row_loss, student, reduction), out.grad_s, out.grad_t};
}

}  // namespace

SK_DEVICE_IMPL(m) { m.impl("dkd_loss_forward", &dkd_loss_forward_cuda); }

}  // namespace shufflekern::SK_DEV_NS
