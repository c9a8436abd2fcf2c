// CUDA entry point and kernel of shufflekern::kd_loss_forward.  The numerics (online statistics, their
// merge, the loss and gradient formulas) are csrc/kd_loss.h's, shared with the CPU kernel; the launch shape,
// vector copies and group reduction are csrc/cuda/loss_rows.cuh's, shared with dkd_loss.cu.
//
// A block takes R consecutive rows and gives each a group of G threads (G * R <= 256; G = 2 .. 256, the
// smallest power of two with at most 8 classes a thread), the layout of PyTorch's persistent softmax
// generalised down to tiny rows (10 classes: 128 rows a block) and up to a block a row:
//  - cached (the block's rows of s and t fit the shared-memory budget): the block copies its rows into
//    shared memory with 16-byte vector loads over the whole contiguous span (an unaligned head and tail
//    element by element), so every warp request is whole sectors whatever C is; each group reduces its row
//    from shared memory (online max / sum, warp shuffles, shared memory across the warps of a group), writes
//    the gradients back into the same slots, and the block stores them as one span with vector stores.
//    Global memory is read once and written once.
//  - streamed (one row does not fit, e.g. 32000 fp32 classes): R = 1, the block streams its row twice
//    from global memory (statistics, then gradients), with the same vector loads.
//
// Target values are checked on the device (SK_KERNEL_ASSERT), not by the host: a host check would read the
// target back and synchronise every call.  A bad target is therefore PyTorch's usual device-side assert
// (a RuntimeError; on a real GPU it also leaves the CUDA context unusable, as every device assert does;
// under the emulator the process keeps working).  The kernel never reads out of bounds, asserts or not.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include "cuda/loss_rows.cuh"
#include "cuda/runtime.h"
#include "kd_loss.h"
#include "kd_loss_checks.h"

namespace shufflekern::SK_DEV_NS {
namespace {

template <typename scalar_t, typename acc_t>
struct KdRowArgs {
  int64_t C, rows, s_stride, t_stride, ignore_index, reduction;
  acc_t temperature, alpha;
  bool ce, ce_sep, want_gs, want_gt;
};

// Adds one class to the three streams.
template <typename acc_t>
__device__ __forceinline__ void kd_add(KdStream<acc_t> (&st)[3], acc_t sv, acc_t tv, acc_t inv_t, bool ce_sep) {
  const acc_t xv = sv * inv_t, yv = tv * inv_t;
  kd_online_add(st[0], xv, acc_t(0));
  kd_online_add(st[1], yv, yv - xv);
  if (ce_sep) kd_online_add(st[2], sv, acc_t(0));
}

template <typename scalar_t, typename acc_t>
__global__ void _kd_loss_kernel(SK_GLOBAL(const scalar_t) s_base, SK_GLOBAL(const scalar_t) t_base,
                                SK_GLOBAL(const int64_t) target, SK_GLOBAL(const int64_t) counted,
                                SK_GLOBAL(scalar_t) gs_base, SK_GLOBAL(scalar_t) gt_base, SK_GLOBAL(acc_t) row_loss,
                                KdRowArgs<scalar_t, acc_t> a, int G, int R, bool cached) {
  SK_SHARED(KdStream<acc_t>, red, [kThreads / 32][3]);
  SK_DYNAMIC_SHARED(scalar_t, cache);
  const int tid = threadIdx.x, grp = tid / G, lane = tid % G;
  const int64_t r0 = int64_t(blockIdx.x) * R;
  const int64_t nrows = a.rows - r0 < R ? a.rows - r0 : R;
  const int64_t row = r0 + grp;
  const bool live = grp < nrows;
  const int64_t C = a.C;
  scalar_t* cs = cache;                // [R, C] student rows, then their gradients
  scalar_t* ct = cache + int64_t(R) * C;  // [R, C] teacher rows, then their gradients
  if (cached) cache_rows(cs, ct, s_base, t_base, r0, nrows, C, a.s_stride, a.t_stride);
  int64_t tgt = -1;
  if (live && target) {
    tgt = target[row];
    SK_KERNEL_ASSERT(tgt == a.ignore_index || (tgt >= 0 && tgt < C));
  }
  const bool ignored = live && target && tgt == a.ignore_index;
  const bool ok = tgt >= 0 && tgt < C;
  const acc_t inv_t = acc_t(1) / a.temperature;
  auto s_row = s_base + (live ? row : 0) * a.s_stride;
  auto t_row = t_base + (live ? row : 0) * a.t_stride;
  const scalar_t* cs_row = cs + int64_t(grp) * C;
  const scalar_t* ct_row = ct + int64_t(grp) * C;
  // The target's student logit, read before group_reduce synchronises the group: after it, other threads
  // overwrite the cached row with gradients.
  const acc_t s_tgt = live && !ignored && a.ce && ok ? (cached ? acc_t(cs_row[tgt]) : acc_t(s_row[tgt])) : acc_t(0);
  KdStream<acc_t> st[3] = {kd_stream_empty<acc_t>(), kd_stream_empty<acc_t>(), kd_stream_empty<acc_t>()};
  if (live && !ignored) {
    if (cached) {
      for (int64_t j = lane; j < C; j += G) kd_add(st, acc_t(cs_row[j]), acc_t(ct_row[j]), inv_t, a.ce_sep);
    } else {
      for (int64_t j = lane; j < C; j += G) kd_add(st, acc_t(s_row[j]), acc_t(t_row[j]), inv_t, a.ce_sep);
    }
  }
  group_reduce(st, G, red);
  KdRowGrad<acc_t> g{};
  acc_t loss = acc_t(0);
  if (live && !ignored) {
    const KdScales<acc_t> sc = kd_scales<acc_t>(a.reduction, counted ? int64_t(counted[0]) : a.rows, C);
    const KdRowStats<acc_t> rs{st[0], st[1], a.ce_sep ? st[2] : st[0]};  // T = 1: the CE softmax is q
    loss = kd_row_finish<acc_t>(rs, a.ce, s_tgt, a.temperature, a.alpha, sc, &g);
  }
  if (live && lane == 0) row_loss[row] = loss;
  if (!a.want_gs && !a.want_gt) return;
  if (cached) {
    // Gradients into the row's own slots (each element read, then overwritten, by the same thread).
    if (live) {
      scalar_t* ws = cs + int64_t(grp) * C;
      scalar_t* wt = ct + int64_t(grp) * C;
      for (int64_t j = lane; j < C; j += G) {
        const acc_t sv = acc_t(ws[j]), tv = acc_t(wt[j]);
        const acc_t xv = sv * inv_t, yv = tv * inv_t;
        ws[j] = ignored ? scalar_t(0) : scalar_t(kd_grad_student(g, sv, xv, yv, j == tgt));
        wt[j] = ignored ? scalar_t(0) : scalar_t(kd_grad_teacher(g, xv, yv));
      }
    }
    store_rows(gs_base, gt_base, cs, ct, r0, nrows, C, a.want_gs, a.want_gt);
    return;
  }
  if (!live) return;
  auto gs_row = gs_base + row * C;
  auto gt_row = gt_base + row * C;
  for (int64_t j = lane; j < C; j += G) {
    const acc_t sv = acc_t(s_row[j]), tv = acc_t(t_row[j]);
    const acc_t xv = sv * inv_t, yv = tv * inv_t;
    if (a.want_gs) gs_row[j] = ignored ? scalar_t(0) : scalar_t(kd_grad_student(g, sv, xv, yv, j == tgt));
    if (a.want_gt) gt_row[j] = ignored ? scalar_t(0) : scalar_t(kd_grad_teacher(g, xv, yv));
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
  const KdOutputs out = kd_outputs(student, teacher, rows, grad_student, grad_teacher);
  const bool ce = target.has_value() && alpha != 1.0;
  if (rows > 0) {
    const KdShape sh = kd_shape(classes, student.element_size());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, student.scalar_type(), "kd_loss_forward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const KdRowArgs<scalar_t, acc_t> args{classes, rows, s.stride(0), t.stride(0), ignore_index, reduction,
                                            acc_t(temperature), acc_t(alpha), ce, ce && temperature != 1.0,
                                            grad_student, grad_teacher};
      SK_LAUNCH((_kd_loss_kernel<scalar_t, acc_t>), sh.grid(rows), sh.block(), sh.smem, SK_RT::dptr<scalar_t>(s),
                SK_RT::dptr<scalar_t>(t), tgt.defined() ? SK_RT::dptr<int64_t>(tgt) : nullptr,
                counted.defined() ? SK_RT::dptr<int64_t>(counted) : nullptr,
                grad_student ? SK_RT::dptr<scalar_t>(out.grad_s) : nullptr,
                grad_teacher ? SK_RT::dptr<scalar_t>(out.grad_t) : nullptr, SK_RT::dptr<acc_t>(out.row_loss), args,
                sh.G, sh.R, sh.cached);
    });
  }
  return {kd_reduce_rows(out.row_loss, student, reduction), out.grad_s, out.grad_t};
}

}  // namespace

SK_DEVICE_IMPL(m) { m.impl("kd_loss_forward", &kd_loss_forward_cuda); }

}  // namespace shufflekern::SK_DEV_NS
