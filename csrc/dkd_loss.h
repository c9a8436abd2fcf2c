// Numerics of Decoupled KD (Zhao et al. 2022, mdistiller's dkd_loss) shared by the CPU and CUDA kernels (the
// Triton kernel in shufflekern/triton/dkd_loss.py mirrors these formulas).  Online statistics: csrc/kd_loss.h.
//
// Per row, with x = s/T, y = t/T, target class c, p = softmax(y), q = softmax(x):
//   streams over the NON-target classes only: (mx, Zx) of x, (my, Zy, A) of y, A = sum_{j!=c} e^{y_j-my}(y_j-x_j)
//   lu_t = my + log Zy - y_c = log(nt / pt):  log pt = -softplus(lu_t), log nt = -softplus(-lu_t), pt = p_c,
//   nt = 1 - pt (never formed as 1 - pt: exact where the teacher is confident);  ps, ns, lu_s likewise of x
//   TCKD = pt (log pt - log ps) + nt (log nt - log ns)           (0 log 0 = 0)
//   NCKD = KL(p^ || q^) over j != c, p^_j = e^{y_j-my}/Zy, q^_j = e^{x_j-mx}/Zx
//        = A/Zy - (my - mx) - log Zy + log Zx
//   loss = w T^2 (alpha TCKD + beta NCKD),  w the reduction's scale;  c_ = w T below
// Gradients (d/ds = d/dx / T):
//   d/ds_c = -c_ alpha (pt - ps);          d/ds_j = c_ ((alpha (pt - ps) + beta) q^_j - beta p^_j)
//   d/dt_c =  c_ alpha pt nt D;            d/dt_j = p^_j (c_ beta (y_j - x_j) - c_ (beta K + alpha pt nt D))
//   D = log(pt/nt) - log(ps/ns) = lu_s - lu_t,  K = my + log Zy - mx - log Zx + NCKD
// pt - ps is taken as (ns - nt) when ps + pt > 1 (both near 1), so it keeps its relative precision.
// A row whose non-target teacher mass is 0 (all -inf) has NCKD = 0 (p^ undefined; mdistiller gives NaN).
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>

#include "kd_loss.h"

namespace shufflekern {
namespace {

// Per-row constants of the gradient (see the header comment).  Element j != c:
//   gs_j = cq q^_j - cp p^_j,  gt_j = p^_j (cb (y_j - x_j) - kt)  (0 where p^_j == 0),
// q^_j = e^{x_j - mx} inv_zx, p^_j = e^{y_j - my} inv_zy (mx, my finite shifts; inv 0 for an empty stream).
template <typename acc_t>
struct DkdRowGrad {
  acc_t mx, my, inv_zx, inv_zy;
  acc_t cq, cp, cb, kt;
  acc_t gs_c, gt_c;  // the target class's gradients
};

template <typename acc_t>
SK_HOST_DEVICE inline acc_t dkd_log_or_ninf(acc_t z) {
  return z > acc_t(0) ? std::log(z) : -std::numeric_limits<acc_t>::infinity();
}

// softplus(z) = log(1 + e^z) without overflow or cancellation (+inf -> +inf, -inf -> 0).
template <typename acc_t>
SK_HOST_DEVICE inline acc_t dkd_softplus(acc_t z) {
  return (z > acc_t(0) ? z : acc_t(0)) + std::log1p(std::exp(-std::fabs(z)));
}

// Loss of one counted row (scaled by `w`, the reduction's scale) from the non-target streams x, y and the
// target's x_c, y_c; fills the gradient constants when g is not null.
//
// With lu = log(non-target mass / target mass) = m + log Z - v_c:  log p_c = -softplus(lu) and
// log(1 - p_c) = -softplus(-lu), each exact to a few ulp also where p_c or 1 - p_c is tiny (the whole
// computation then runs in float on the GPU without losing a confident teacher's 1 - p_c).
template <typename acc_t>
SK_HOST_DEVICE inline acc_t dkd_row_finish(KdStream<acc_t> x, KdStream<acc_t> y, acc_t xc, acc_t yc,
                                           acc_t temperature, acc_t alpha, acc_t beta, acc_t w,
                                           DkdRowGrad<acc_t>* g) {
  const acc_t lzx = dkd_log_or_ninf(x.z), lzy = dkd_log_or_ninf(y.z);
  const acc_t lus = x.m + lzx - xc, lut = y.m + lzy - yc;  // -inf when the non-target stream is empty
  const acc_t lps = -dkd_softplus(lus), lns = -dkd_softplus(-lus);  // log ps, log ns
  const acc_t lpt = -dkd_softplus(lut), lnt = -dkd_softplus(-lut);  // log pt, log nt
  const acc_t ps = std::exp(lps), pt = std::exp(lpt), ns = std::exp(lns), nt = std::exp(lnt);
  const acc_t tckd = (pt > acc_t(0) ? pt * (lpt - lps) : acc_t(0)) + (nt > acc_t(0) ? nt * (lnt - lns) : acc_t(0));
  const bool has_nt = y.z > acc_t(0);
  const acc_t nckd = has_nt ? y.a / y.z - (y.m - x.m) - lzy + lzx : acc_t(0);
  const acc_t loss = w * temperature * temperature * (alpha * tckd + beta * nckd);
  if (g != nullptr) {
    const acc_t c = w * temperature;
    const acc_t dp = ps + pt > acc_t(1) ? ns - nt : pt - ps;  // pt - ps
    const acc_t pn = pt * nt;
    const acc_t D = pn > acc_t(0) ? lus - lut : acc_t(0);     // log(pt/nt) - log(ps/ns)
    const acc_t bn = has_nt ? beta : acc_t(0);
    g->mx = x.z > acc_t(0) ? x.m : acc_t(0);
    g->my = has_nt ? y.m : acc_t(0);
    g->inv_zx = x.z > acc_t(0) ? acc_t(1) / x.z : acc_t(0);
    g->inv_zy = has_nt ? acc_t(1) / y.z : acc_t(0);
    g->cq = c * (alpha * dp + bn);
    g->cp = c * bn;
    g->cb = c * bn;
    const acc_t K = has_nt ? y.m + lzy - x.m - lzx + nckd : acc_t(0);
    g->kt = c * (bn * K + alpha * pn * D);
    g->gs_c = -c * alpha * dp;
    g->gt_c = c * alpha * pn * D;
  }
  return loss;
}

// Scalar element gradients of a non-target class (CUDA, and the CPU's scalar tails).
template <typename acc_t>
SK_HOST_DEVICE inline acc_t dkd_grad_student(const DkdRowGrad<acc_t>& g, acc_t x, acc_t y) {
  return g.cq * (std::exp(x - g.mx) * g.inv_zx) - g.cp * (std::exp(y - g.my) * g.inv_zy);
}

template <typename acc_t>
SK_HOST_DEVICE inline acc_t dkd_grad_teacher(const DkdRowGrad<acc_t>& g, acc_t x, acc_t y) {
  const acc_t p = std::exp(y - g.my) * g.inv_zy;
  return p == acc_t(0) ? acc_t(0) : p * (g.cb * (y - x) - g.kt);
}

}  // namespace
}  // namespace shufflekern
