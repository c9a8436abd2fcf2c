// Fused distillation-loss kernels, compiled once per CPU ISA (see csrc/cpu/dispatch.h).  The maths is in
// csrc/kd_loss.h.
//
// A row is swept in blocks of kBlock classes: the block's maxima, then its exponential sums, are taken
// while it sits in L1 (one read from memory, one exponential per element and stream), and the blocks'
// (max, sum) states are merged in double.  When a gradient is wanted, the first sweep also keeps its
// exponentials in a per-thread row buffer, and a second sweep (L2-resident) turns them into the gradient
// with a few multiply-adds an element.  Rows too few to feed every thread are split into chunks whose
// states merge like blocks; their gradient sweep recomputes the exponentials.  bf16/fp16 blocks are
// widened to float in a stack buffer; double runs in double.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cpu/dispatch.h"
#include "cpu/kd_loss_kernel.h"
#include "cpu/vec_softmax.h"
#include "kd_loss.h"

namespace shufflekern::cpu {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

constexpr int64_t kBlock = 2048;

template <typename acc_t>
struct BlockSums {
  acc_t zx, zy, a, z1;
};

// Sums of one block: zx = sum e^{x - mx}, zy = sum e^{y - my}, a = sum e^{y - my}(y - x), z1 = sum e^{s - m1}.
// The exponentials of one row, kept from the statistics sweep so that the gradient sweep needs none:
// e_x = e^{x - bx}, e_y = e^{y - by}, e_1 = e^{s - b1} against each block's finite shift (bx, by, b1).
template <typename acc_t>
struct Kept {
  acc_t *ex, *ey, *e1;  // [n] each (e1 only when the CE stream is separate)
  acc_t *bx, *by, *b1;  // [blocks] each
};

// With `keep`, the block's exponentials are stored to keep->ex/ey/e1 (already offset to the block).
template <typename acc_t>
inline BlockSums<acc_t> block_sums(const acc_t* s, const acc_t* t, int64_t n, acc_t inv_t, acc_t mx, acc_t my,
                                   acc_t m1, bool ce_sep, acc_t* kx, acc_t* ky, acc_t* k1) {
  using V = Vectorized<acc_t>;
  const V vinv(inv_t), vmx(mx), vmy(my), vm1(m1), zero(0);
  V zx(0), zy(0), a(0), z1(0);
  int64_t i = 0;
  for (; i + V::size() <= n; i += V::size()) {
    const V sv = V::loadu(s + i), tv = V::loadu(t + i);
    const V x = sv * vinv, y = tv * vinv;
    const V ex = vexp(x - vmx), ey = vexp(y - vmy);
    zx = zx + ex;
    zy = zy + ey;
    a = a + V::blendv(ey * (y - x), zero, ey == zero);
    if (kx) {
      ex.store(kx + i);
      ey.store(ky + i);
    }
    if (ce_sep) {
      const V e1 = vexp(sv - vm1);
      z1 = z1 + e1;
      if (k1) e1.store(k1 + i);
    }
  }
  auto sum = [](const V& v) { return at::vec::vec_reduce_all<acc_t>([](V& p, V& q) { return p + q; }, v); };
  BlockSums<acc_t> r{sum(zx), sum(zy), sum(a), ce_sep ? sum(z1) : acc_t(0)};
  for (; i < n; ++i) {
    const acc_t x = s[i] * inv_t, y = t[i] * inv_t;
    const acc_t ex = std::exp(x - mx), ey = std::exp(y - my);
    r.zx += ex;
    r.zy += ey;
    r.a += kd_a_term(ey, y, x);
    if (kx) {
      kx[i] = ex;
      ky[i] = ey;
    }
    if (ce_sep) {
      const acc_t e1 = std::exp(s[i] - m1);
      r.z1 += e1;
      if (k1) k1[i] = e1;
    }
  }
  return r;
}

// Statistics of n consecutive classes of one row.  `ce`: the cross-entropy stream is wanted; `ce_sep`:
// it differs from the x stream (T != 1).
template <typename scalar_t, typename acc_t>
KdRowStats<double> range_stats(const scalar_t* s, const scalar_t* t, int64_t n, acc_t inv_t, bool ce,
                               bool ce_sep, const Kept<acc_t>* keep = nullptr) {
  constexpr bool widen = !std::is_same_v<scalar_t, acc_t>;
  alignas(64) acc_t sbuf[widen ? kBlock : 1], tbuf[widen ? kBlock : 1];
  constexpr double ninf = -std::numeric_limits<double>::infinity();
  KdRowStats<double> st{kd_stream_empty<double>(), kd_stream_empty<double>(), kd_stream_empty<double>()};
  for (int64_t off = 0; off < n; off += kBlock) {
    const int64_t nb = std::min(kBlock, n - off);
    const acc_t* sp = to_acc<scalar_t, acc_t>(s + off, sbuf, nb);
    const acc_t* tp = to_acc<scalar_t, acc_t>(t + off, tbuf, nb);
    const acc_t ms = block_max(sp, nb), mt = block_max(tp, nb);
    // T > 0, so max(s/T) = max(s)/T.
    const acc_t mx = finite_or_zero(acc_t(ms * inv_t)), my = finite_or_zero(acc_t(mt * inv_t));
    const acc_t m1 = finite_or_zero(ms);
    const BlockSums<acc_t> b =
        keep ? block_sums<acc_t>(sp, tp, nb, inv_t, mx, my, m1, ce_sep, keep->ex + off, keep->ey + off,
                          ce_sep ? keep->e1 + off : nullptr)
             : block_sums<acc_t>(sp, tp, nb, inv_t, mx, my, m1, ce_sep, nullptr, nullptr, nullptr);
    if (keep) {
      const int64_t blk = off / kBlock;
      keep->bx[blk] = mx;
      keep->by[blk] = my;
      if (ce_sep) keep->b1[blk] = m1;
    }
    const bool sx_empty = ms == -std::numeric_limits<acc_t>::infinity();
    const bool ty_empty = mt == -std::numeric_limits<acc_t>::infinity();
    // A student block of all -inf still pairs with finite teacher entries (a = +inf: KL is infinite).
    st.x = kd_merge(st.x, KdStream<double>{sx_empty ? ninf : double(mx), double(b.zx), 0.0});
    st.y = kd_merge(st.y, KdStream<double>{ty_empty ? ninf : double(my), double(b.zy), double(b.a)});
    if (ce_sep) st.s1 = kd_merge(st.s1, KdStream<double>{sx_empty ? ninf : double(m1), double(b.z1), 0.0});
  }
  if (ce && !ce_sep) st.s1 = st.x;
  return st;
}

template <typename acc_t>
KdRowGrad<acc_t> cast_grad(const KdRowGrad<double>& g) {
  return {acc_t(g.mx), acc_t(g.my), acc_t(g.m1), acc_t(g.inv_zx), acc_t(g.inv_zy),
          acc_t(g.inv_z1), acc_t(g.ck), acc_t(g.cc), acc_t(g.K)};
}

// Gradients of n consecutive classes of one row; `tgt` is the target's index within this range or -1.
template <typename scalar_t, typename acc_t>
void range_grad(const scalar_t* s, const scalar_t* t, scalar_t* gs, scalar_t* gt, int64_t n,
                const KdRowGrad<acc_t>& g, acc_t inv_t, bool ce_sep, int64_t tgt) {
  using V = Vectorized<acc_t>;
  constexpr bool widen = !std::is_same_v<scalar_t, acc_t>;
  alignas(64) acc_t sbuf[widen ? kBlock : 1], tbuf[widen ? kBlock : 1];
  alignas(64) acc_t gsbuf[widen ? kBlock : 1], gtbuf[widen ? kBlock : 1];
  const V vinv(inv_t), vmx(g.mx), vmy(g.my), vm1(g.m1), vizx(g.inv_zx), vizy(g.inv_zy), viz1(g.inv_z1);
  const V vck(g.ck), vcc(g.cc), vK(g.K), zero(0);
  const bool with_ce = g.cc != acc_t(0);
  for (int64_t off = 0; off < n; off += kBlock) {
    const int64_t nb = std::min(kBlock, n - off);
    const acc_t* sp = to_acc<scalar_t, acc_t>(s + off, sbuf, nb);
    const acc_t* tp = to_acc<scalar_t, acc_t>(t + off, tbuf, nb);
    acc_t* gsp = nullptr;
    acc_t* gtp = nullptr;
    if constexpr (widen) {
      gsp = gs ? gsbuf : nullptr;
      gtp = gt ? gtbuf : nullptr;
    } else {
      gsp = gs ? gs + off : nullptr;
      gtp = gt ? gt + off : nullptr;
    }
    int64_t i = 0;
    for (; i + V::size() <= nb; i += V::size()) {
      const V sv = V::loadu(sp + i), tv = V::loadu(tp + i);
      const V x = sv * vinv, y = tv * vinv;
      const V p = vexp(y - vmy) * vizy;
      if (gsp) {
        const V q = vexp(x - vmx) * vizx;
        V d = vck * (q - p);
        if (with_ce) d = at::vec::fmadd(vcc, ce_sep ? vexp(sv - vm1) * viz1 : q, d);
        d.store(gsp + i);
      }
      if (gtp) {
        const V r = vck * p * (y - x - vK);
        V::blendv(r, zero, p == zero).store(gtp + i);
      }
    }
    for (; i < nb; ++i) {
      const acc_t x = sp[i] * inv_t, y = tp[i] * inv_t;
      if (gsp) gsp[i] = kd_grad_student(g, sp[i], x, y, false);
      if (gtp) gtp[i] = kd_grad_teacher(g, x, y);
    }
    if (gsp && with_ce && tgt >= off && tgt < off + nb) gsp[tgt - off] -= g.cc;
    if constexpr (widen) {
      if (gs) at::vec::convert(gsbuf, gs + off, nb);
      if (gt) at::vec::convert(gtbuf, gt + off, nb);
    }
  }
}

// Gradients of a whole row from its kept exponentials: per block, q = e_x e^{bx - mx} / Zx (and p, the
// CE softmax likewise), so the student gradient is two or three multiply-adds an element.
template <typename scalar_t, typename acc_t>
void kept_grad(const Kept<acc_t>& k, const scalar_t* s, const scalar_t* t, scalar_t* gs, scalar_t* gt, int64_t n,
               const KdRowGrad<double>& g, acc_t inv_t, bool ce_sep, int64_t tgt) {
  using V = Vectorized<acc_t>;
  constexpr bool widen = !std::is_same_v<scalar_t, acc_t>;
  alignas(64) acc_t sbuf[widen ? kBlock : 1], tbuf[widen ? kBlock : 1];
  alignas(64) acc_t gsbuf[widen ? kBlock : 1], gtbuf[widen ? kBlock : 1];
  const bool with_ce = g.cc != 0.0;
  const V vinv(inv_t), vK(acc_t(g.K)), vck(acc_t(g.ck)), zero(0);
  for (int64_t off = 0; off < n; off += kBlock) {
    const int64_t nb = std::min(kBlock, n - off), blk = off / kBlock;
    const acc_t* ex = k.ex + off;
    const acc_t* ey = k.ey + off;
    const acc_t fx = acc_t(std::exp(double(k.bx[blk]) - g.mx) * g.inv_zx);
    const acc_t fy = acc_t(std::exp(double(k.by[blk]) - g.my) * g.inv_zy);
    const acc_t* e1 = ce_sep ? k.e1 + off : ex;
    const acc_t f1 = !with_ce ? acc_t(0)
                     : ce_sep ? acc_t(std::exp(double(k.b1[blk]) - g.m1) * g.inv_z1)
                              : fx;  // T = 1: the CE softmax is q
    if (gs) {
      acc_t* out = widen ? gsbuf : reinterpret_cast<acc_t*>(gs + off);
      const V a(acc_t(g.ck) * fx), b(acc_t(g.ck) * fy), c(acc_t(g.cc) * f1);
      int64_t i = 0;
      for (; i + V::size() <= nb; i += V::size()) {
        V d = at::vec::fmsub(V::loadu(ex + i), a, V::loadu(ey + i) * b);
        if (with_ce) d = at::vec::fmadd(V::loadu(e1 + i), c, d);
        d.store(out + i);
      }
      for (; i < nb; ++i) {
        acc_t d = ex[i] * (acc_t(g.ck) * fx) - ey[i] * (acc_t(g.ck) * fy);
        if (with_ce) d += e1[i] * (acc_t(g.cc) * f1);
        out[i] = d;
      }
      if (with_ce && tgt >= off && tgt < off + nb) out[tgt - off] -= acc_t(g.cc);
      if constexpr (widen) at::vec::convert(gsbuf, gs + off, nb);
    }
    if (gt) {
      const acc_t* sp = to_acc<scalar_t, acc_t>(s + off, sbuf, nb);
      const acc_t* tp = to_acc<scalar_t, acc_t>(t + off, tbuf, nb);
      acc_t* out = widen ? gtbuf : reinterpret_cast<acc_t*>(gt + off);
      const V vfy(fy);
      int64_t i = 0;
      for (; i + V::size() <= nb; i += V::size()) {
        const V x = V::loadu(sp + i) * vinv, y = V::loadu(tp + i) * vinv;
        const V p = V::loadu(ey + i) * vfy;
        V::blendv(vck * p * (y - x - vK), zero, p == zero).store(out + i);
      }
      for (; i < nb; ++i) {
        const acc_t x = sp[i] * inv_t, y = tp[i] * inv_t, p = ey[i] * fy;
        out[i] = p == acc_t(0) ? acc_t(0) : acc_t(g.ck) * p * (y - x - acc_t(g.K));
      }
      if constexpr (widen) at::vec::convert(gtbuf, gt + off, nb);
    }
  }
}

template <typename scalar_t, typename acc_t>
void kd_rows(const KdLossArgs& a) {
  const auto* S = static_cast<const scalar_t*>(a.s);
  const auto* T = static_cast<const scalar_t*>(a.t);
  auto* GS = static_cast<scalar_t*>(a.grad_s);
  auto* GT = static_cast<scalar_t*>(a.grad_t);
  auto* row_loss = static_cast<acc_t*>(a.row_loss);
  const int64_t R = a.rows, C = a.classes;
  const bool has_target = a.target != nullptr;
  const bool ce = has_target && a.alpha != 1.0;
  const bool ce_sep = ce && a.temperature != 1.0;
  const acc_t inv_t = acc_t(1.0 / a.temperature);
  const KdScales<double> sc = kd_scales<double>(a.reduction, a.counted, C);
  const bool want_grad = GS != nullptr || GT != nullptr;

  // Ignored rows (and, defensively, out-of-range targets, which the caller rejects) never read `tgt`.
  auto row_target = [&](int64_t r, bool* ignored) -> int64_t {
    *ignored = false;
    if (!has_target) return -1;
    const int64_t tgt = a.target[r];
    if (tgt == a.ignore_index) {
      *ignored = true;
      return -1;
    }
    return (tgt >= 0 && tgt < C) ? tgt : -2;
  };
  auto zero_row = [&](int64_t r) {
    row_loss[r] = acc_t(0);
    if (GS) std::memset(GS + r * C, 0, C * sizeof(scalar_t));
    if (GT) std::memset(GT + r * C, 0, C * sizeof(scalar_t));
  };
  auto finish = [&](int64_t r, const KdRowStats<double>& st, int64_t tgt, KdRowGrad<double>* g) {
    double s_tgt = 0.0;
    if (ce) s_tgt = tgt >= 0 ? double(static_cast<acc_t>(S[r * a.s_stride + tgt]))
                             : std::numeric_limits<double>::quiet_NaN();
    row_loss[r] = acc_t(kd_row_finish<double>(st, ce, s_tgt, a.temperature, a.alpha, sc, g));
  };

  const int nthreads = at::get_num_threads();
  if (R >= nthreads || C < 8 * kBlock) {
    // Whole rows per task; small rows are batched so that a task covers >= 64K classes (~0.1 ms, twice
    // ATen's own grain): a smaller loss runs on the calling thread.  (Waking a sleeping pool thread can
    // cost a scheduler slice when its core is taken, as for every ATen op; at 256 x 1000 the second
    // thread took fwd+bwd from 0.51 to 0.32 ms on a quiet 2-core machine.)
    const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / C);
    at::parallel_for(0, R, grain, [&](int64_t begin, int64_t end) {
      // Per-task scratch for the kept exponentials of one row (the row stays in L2 between the sweeps).
      const int64_t blocks = (C + kBlock - 1) / kBlock;
      std::unique_ptr<acc_t[]> scratch;
      Kept<acc_t> kept{};
      if (want_grad) {
        scratch.reset(new acc_t[3 * C + 3 * blocks]);
        acc_t* p = scratch.get();
        kept = {p, p + C, p + 2 * C, p + 3 * C, p + 3 * C + blocks, p + 3 * C + 2 * blocks};
      }
      for (int64_t r = begin; r < end; ++r) {
        bool ignored;
        const int64_t tgt = row_target(r, &ignored);
        if (ignored) {
          zero_row(r);
          continue;
        }
        const scalar_t* s = S + r * a.s_stride;
        const scalar_t* t = T + r * a.t_stride;
        const KdRowStats<double> st =
            range_stats<scalar_t, acc_t>(s, t, C, inv_t, ce, ce_sep, want_grad ? &kept : nullptr);
        KdRowGrad<double> g;
        finish(r, st, tgt, &g);
        if (want_grad) {
          kept_grad<scalar_t, acc_t>(kept, s, t, GS ? GS + r * C : nullptr, GT ? GT + r * C : nullptr, C, g, inv_t,
                                     ce_sep, ce ? tgt : -1);
        }
      }
    });
    return;
  }

  // Few long rows: every row is split into chunks (whole blocks) across the threads; the chunks'
  // (max, sum) states merge exactly like blocks do, then a second parallel sweep writes the gradient.
  const int64_t blocks = (C + kBlock - 1) / kBlock;
  const int64_t nchunks = std::min<int64_t>(blocks, 4 * nthreads);
  const int64_t chunk = ((blocks + nchunks - 1) / nchunks) * kBlock;
  auto parts = std::make_unique<KdRowStats<double>[]>(nchunks);
  for (int64_t r = 0; r < R; ++r) {
    bool ignored;
    const int64_t tgt = row_target(r, &ignored);
    if (ignored) {
      zero_row(r);
      continue;
    }
    const scalar_t* s = S + r * a.s_stride;
    const scalar_t* t = T + r * a.t_stride;
    at::parallel_for(0, nchunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const int64_t lo = std::min(C, c * chunk), n = std::min(C, lo + chunk) - lo;
        parts[c] = range_stats<scalar_t, acc_t>(s + lo, t + lo, n, inv_t, ce, ce_sep);
      }
    });
    KdRowStats<double> st = parts[0];
    for (int64_t c = 1; c < nchunks; ++c) {
      st.x = kd_merge(st.x, parts[c].x);
      st.y = kd_merge(st.y, parts[c].y);
      st.s1 = kd_merge(st.s1, parts[c].s1);
    }
    KdRowGrad<double> g;
    finish(r, st, tgt, &g);
    if (!want_grad) continue;
    const KdRowGrad<acc_t> ga = cast_grad<acc_t>(g);
    at::parallel_for(0, nchunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const int64_t lo = std::min(C, c * chunk), n = std::min(C, lo + chunk) - lo;
        if (n <= 0) continue;
        range_grad<scalar_t, acc_t>(s + lo, t + lo, GS ? GS + r * C + lo : nullptr,
                                    GT ? GT + r * C + lo : nullptr, n, ga, inv_t, ce_sep,
                                    ce && tgt >= 0 ? tgt - lo : -1);
      }
    });
  }
}

void kd_loss_kernel(const KdLossArgs& a) {
  dispatch_kd_dtype(a.dtype, "kd_loss", [&]<typename scalar_t, typename acc_t>() { kd_rows<scalar_t, acc_t>(a); });
}

}  // namespace
}  // namespace CPU_CAPABILITY

SK_REGISTER_KERNEL(kd_loss_table, &CPU_CAPABILITY::kd_loss_kernel);

}  // namespace shufflekern::cpu
