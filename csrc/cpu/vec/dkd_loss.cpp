// Fused Decoupled-KD loss kernel, compiled once per CPU ISA (see csrc/cpu/dispatch.h).  The maths is in
// csrc/dkd_loss.h.
//
// One task takes whole rows (at::parallel_for over rows, small rows batched).  A row is swept in blocks of
// kBlock classes: the block's maxima over its non-target classes, then its exponential sums against them,
// are taken while it sits in L1 (the target class is skipped by splitting the block around it: it is never
// added and later subtracted), and the blocks' (max, sum) states merge in double; the row's loss and
// gradient constants (csrc/dkd_loss.h) are then taken in acc_t.
// When a gradient is wanted, a second sweep (the row is L1/L2-resident) recomputes the exponentials and
// writes both gradients in the same call.  bf16/fp16 blocks are widened to float in a stack buffer.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "cpu/dispatch.h"
#include "cpu/dkd_loss_kernel.h"
#include "cpu/vec_softmax.h"
#include "dkd_loss.h"

namespace shufflekern::cpu {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

constexpr int64_t kBlock = 2048;

template <typename acc_t>
struct DkdSums {
  acc_t zx, zy, a;
};

// zx = sum e^{x - mx}, zy = sum e^{y - my}, a = sum e^{y - my}(y - x) over n consecutive classes.
template <typename acc_t>
inline void piece_sums(const acc_t* s, const acc_t* t, int64_t n, acc_t inv_t, acc_t mx, acc_t my,
                       DkdSums<acc_t>& r) {
  using V = Vectorized<acc_t>;
  const V vinv(inv_t), vmx(mx), vmy(my), zero(0);
  V zx(0), zy(0), a(0);
  int64_t i = 0;
  for (; i + V::size() <= n; i += V::size()) {
    const V x = V::loadu(s + i) * vinv, y = V::loadu(t + i) * vinv;
    const V ex = vexp(x - vmx), ey = vexp(y - vmy);
    zx = zx + ex;
    zy = zy + ey;
    a = a + V::blendv(ey * (y - x), zero, ey == zero);
  }
  auto sum = [](const V& v) { return at::vec::vec_reduce_all<acc_t>([](V& p, V& q) { return p + q; }, v); };
  r.zx += sum(zx);
  r.zy += sum(zy);
  r.a += sum(a);
  for (; i < n; ++i) {
    const acc_t x = s[i] * inv_t, y = t[i] * inv_t;
    const acc_t ey = std::exp(y - my);
    r.zx += std::exp(x - mx);
    r.zy += ey;
    r.a += kd_a_term(ey, y, x);
  }
}

// Gradients of n consecutive classes (the target's slot, if any, is overwritten by the caller).
template <typename acc_t>
inline void piece_grad(const acc_t* s, const acc_t* t, acc_t* gs, acc_t* gt, int64_t n, acc_t inv_t,
                       const DkdRowGrad<acc_t>& g) {
  using V = Vectorized<acc_t>;
  const V vinv(inv_t), vmx(g.mx), vmy(g.my), vizx(g.inv_zx), vizy(g.inv_zy), zero(0);
  const V vcq(g.cq), vcp(g.cp), vcb(g.cb), vkt(g.kt);
  int64_t i = 0;
  for (; i + V::size() <= n; i += V::size()) {
    const V x = V::loadu(s + i) * vinv, y = V::loadu(t + i) * vinv;
    const V p = vexp(y - vmy) * vizy;
    if (gs) at::vec::fmsub(vcq, vexp(x - vmx) * vizx, vcp * p).store(gs + i);
    if (gt) V::blendv(p * at::vec::fmsub(vcb, y - x, vkt), zero, p == zero).store(gt + i);
  }
  for (; i < n; ++i) {
    const acc_t x = s[i] * inv_t, y = t[i] * inv_t;
    if (gs) gs[i] = dkd_grad_student(g, x, y);
    if (gt) gt[i] = dkd_grad_teacher(g, x, y);
  }
}

template <typename scalar_t, typename acc_t>
void dkd_rows(const DkdLossArgs& a) {
  constexpr bool widen = !std::is_same_v<scalar_t, acc_t>;
  constexpr double ninf = -std::numeric_limits<double>::infinity();
  const auto* S = static_cast<const scalar_t*>(a.s);
  const auto* T = static_cast<const scalar_t*>(a.t);
  auto* GS = static_cast<scalar_t*>(a.grad_s);
  auto* GT = static_cast<scalar_t*>(a.grad_t);
  auto* row_loss = static_cast<acc_t*>(a.row_loss);
  const int64_t C = a.classes;
  const acc_t inv_t = acc_t(1.0 / a.temperature);
  const double w = kd_scales<double>(a.reduction, a.counted, C).kl;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / C);
  at::parallel_for(0, a.rows, grain, [&](int64_t begin, int64_t end) {
    alignas(64) acc_t sbuf[widen ? kBlock : 1], tbuf[widen ? kBlock : 1];
    alignas(64) acc_t gsbuf[widen ? kBlock : 1], gtbuf[widen ? kBlock : 1];
    for (int64_t r = begin; r < end; ++r) {
      const int64_t c = a.target[r];
      if (c == a.ignore_index || c < 0 || c >= C) {  // out of range: rejected by the caller
        row_loss[r] = acc_t(0);
        if (GS) std::memset(GS + r * C, 0, C * sizeof(scalar_t));
        if (GT) std::memset(GT + r * C, 0, C * sizeof(scalar_t));
        continue;
      }
      const scalar_t* s = S + r * a.s_stride;
      const scalar_t* t = T + r * a.t_stride;
      KdStream<double> sx = kd_stream_empty<double>(), sy = kd_stream_empty<double>();
      for (int64_t off = 0; off < C; off += kBlock) {
        const int64_t nb = std::min(kBlock, C - off);
        const acc_t* sp = to_acc<scalar_t, acc_t>(s + off, sbuf, nb);
        const acc_t* tp = to_acc<scalar_t, acc_t>(t + off, tbuf, nb);
        // The block's non-target classes: [0, cut) and [cut + 1, nb) (cut = nb when the target is elsewhere).
        const int64_t cut = c >= off && c < off + nb ? c - off : nb;
        const int64_t rest = cut < nb ? nb - cut - 1 : 0;
        // The block's maximum is the non-target one unless the target holds it: only then split the sweep.
        acc_t ms = block_max(sp, nb), mt = block_max(tp, nb);
        if (cut < nb && !(sp[cut] < ms)) ms = std::max(block_max(sp, cut), block_max(sp + cut + 1, rest));
        if (cut < nb && !(tp[cut] < mt)) mt = std::max(block_max(tp, cut), block_max(tp + cut + 1, rest));
        const acc_t mx = finite_or_zero(acc_t(ms * inv_t)), my = finite_or_zero(acc_t(mt * inv_t));
        DkdSums<acc_t> b{0, 0, 0};
        piece_sums(sp, tp, cut, inv_t, mx, my, b);
        piece_sums(sp + cut + 1, tp + cut + 1, rest, inv_t, mx, my, b);
        const bool sx_empty = ms == -std::numeric_limits<acc_t>::infinity();
        const bool ty_empty = mt == -std::numeric_limits<acc_t>::infinity();
        sx = kd_merge(sx, KdStream<double>{sx_empty ? ninf : double(mx), double(b.zx), 0.0});
        sy = kd_merge(sy, KdStream<double>{ty_empty ? ninf : double(my), double(b.zy), double(b.a)});
      }
      // The row's constants in acc_t (float for the 16/32-bit types, as the CUDA and Triton kernels): the
      // finish is ~15 transcendentals a row, which in double cost as much as the whole row at C = 100.
      const KdStream<acc_t> fx{acc_t(sx.m), acc_t(sx.z), acc_t(sx.a)}, fy{acc_t(sy.m), acc_t(sy.z), acc_t(sy.a)};
      DkdRowGrad<acc_t> g;
      row_loss[r] = dkd_row_finish<acc_t>(fx, fy, acc_t(acc_t(s[c]) * inv_t), acc_t(acc_t(t[c]) * inv_t),
                                          acc_t(a.temperature), acc_t(a.alpha), acc_t(a.beta), acc_t(w),
                                          (GS || GT) ? &g : nullptr);
      if (!GS && !GT) continue;
      scalar_t* gs_row = GS ? GS + r * C : nullptr;
      scalar_t* gt_row = GT ? GT + r * C : nullptr;
      for (int64_t off = 0; off < C; off += kBlock) {
        const int64_t nb = std::min(kBlock, C - off);
        const acc_t* sp = to_acc<scalar_t, acc_t>(s + off, sbuf, nb);
        const acc_t* tp = to_acc<scalar_t, acc_t>(t + off, tbuf, nb);
        acc_t* gsp = !gs_row ? nullptr : widen ? gsbuf : reinterpret_cast<acc_t*>(gs_row + off);
        acc_t* gtp = !gt_row ? nullptr : widen ? gtbuf : reinterpret_cast<acc_t*>(gt_row + off);
        piece_grad(sp, tp, gsp, gtp, nb, inv_t, g);
        if (c >= off && c < off + nb) {
          if (gsp) gsp[c - off] = g.gs_c;
          if (gtp) gtp[c - off] = g.gt_c;
        }
        if constexpr (widen) {
          if (gs_row) at::vec::convert(gsbuf, gs_row + off, nb);
          if (gt_row) at::vec::convert(gtbuf, gt_row + off, nb);
        }
      }
    }
  });
}

void dkd_loss_kernel(const DkdLossArgs& a) {
  dispatch_kd_dtype(a.dtype, "dkd_loss", [&]<typename scalar_t, typename acc_t>() { dkd_rows<scalar_t, acc_t>(a); });
}

}  // namespace
}  // namespace CPU_CAPABILITY

SK_REGISTER_KERNEL(dkd_loss_table, &CPU_CAPABILITY::dkd_loss_kernel);

}  // namespace shufflekern::cpu
