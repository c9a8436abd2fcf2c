// Numerics of the distillation loss shared by the CPU and CUDA kernels (the Triton kernel in
// shufflekern/triton/kd_loss.py mirrors these formulas line by line).
//
// Per row, with x = s/T, y = t/T, p = softmax(y), q = softmax(x):
//   KL      = sum_j p_j (log p_j - log q_j)
//           = A/Zy - (my - mx) - log Zy + log Zx,      A = sum_j e^{y_j - my} (y_j - x_j)
//   CE      = m1 + log Z1 - s_target                   (softmax of s at T = 1)
//   loss    = alpha T^2 KL * kl_scale + (1 - alpha) CE * ce_scale
//   d/ds_j  = ck (q_j - p_j) + cc (softmax(s)_j - [j == target]),   ck = alpha T kl_scale, cc = (1-alpha) ce_scale
//   d/dt_j  = ck p_j (log p_j - log q_j - KL) = ck p_j (y_j - x_j - K),  K = my + log Zy - mx - log Zx + KL
// where (m, Z) are a stream's max and sum of e^{v - m}.  Terms with p_j == 0 (teacher logit -inf) are
// exactly 0 (0 log 0 = 0): they are masked, never multiplied out (0 * -inf would be NaN).
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>

#include "common.h"

namespace shufflekern {

// Encoding of `reduction` in the op schemas (torch's Reduction enum plus batchmean).
enum KdReduction : int64_t { kKdNone = 0, kKdMean = 1, kKdSum = 2, kKdBatchMean = 3 };

// Internal linkage: csrc/cpu/vec/ compiles this header once per ISA, and an inline template with external
// linkage would let the linker keep the AVX-512 instantiation for the portable variant too.
namespace {

// Scales that turn summed row terms into the reduced loss (and its gradient); `counted` is the number
// of rows not ignored.  An empty sum (no counted row) is 0, never 0/0.
template <typename acc_t>
struct KdScales {
  acc_t kl, ce;
};

template <typename acc_t>
SK_HOST_DEVICE inline KdScales<acc_t> kd_scales(int64_t reduction, int64_t counted, int64_t classes) {
  const acc_t n = counted > 0 ? acc_t(counted) : acc_t(1);
  switch (reduction) {
    case kKdMean: return {acc_t(1) / (n * acc_t(classes)), acc_t(1) / n};
    case kKdBatchMean: return {acc_t(1) / n, acc_t(1) / n};
    default: return {acc_t(1), acc_t(1)};  // sum, none
  }
}

// Softmax statistics of one stream over part of a row: m = max, z = sum e^{v - m}, and for the teacher
// a = sum e^{y - my} (y - x).  A part with no finite maximum (empty or all -inf) has m = -inf, z = a = 0.
template <typename acc_t>
struct KdStream {
  acc_t m, z, a;
};

template <typename acc_t>
SK_HOST_DEVICE inline KdStream<acc_t> kd_stream_empty() {
  return {-std::numeric_limits<acc_t>::infinity(), acc_t(0), acc_t(0)};
}

// Merge of two parts: rescale both to the larger maximum.
template <typename acc_t>
SK_HOST_DEVICE inline KdStream<acc_t> kd_merge(KdStream<acc_t> u, KdStream<acc_t> v) {
  const acc_t ninf = -std::numeric_limits<acc_t>::infinity();
  if (v.m == ninf) return u;
  if (u.m == ninf) return v;
  const acc_t m = u.m > v.m ? u.m : v.m;
  const acc_t fu = std::exp(u.m - m), fv = std::exp(v.m - m);
  return {m, u.z * fu + v.z * fv, u.a * fu + v.a * fv};
}

// Adds one element v (with teacher term d = y - x; 0 for the other streams) to a running stream: one
// exponential per element (the CUDA kernel's per-thread loop).
template <typename acc_t>
SK_HOST_DEVICE inline void kd_online_add(KdStream<acc_t>& st, acc_t v, acc_t d) {
  if (v == -std::numeric_limits<acc_t>::infinity()) return;
  if (v <= st.m) {
    const acc_t e = std::exp(v - st.m);
    st.z += e;
    st.a += e == acc_t(0) ? acc_t(0) : e * d;
  } else {
    const acc_t f = std::exp(st.m - v);  // 0 while the stream is empty (m = -inf)
    st.z = st.z * f + acc_t(1);
    st.a = st.a * f + d;
    st.m = v;
  }
}

// Row statistics: x = s/T (student), y = t/T (teacher, with a), s at T = 1 (cross entropy).
template <typename acc_t>
struct KdRowStats {
  KdStream<acc_t> x, y, s1;
};

// Per-row constants of the gradient (see the header comment).
template <typename acc_t>
struct KdRowGrad {
  acc_t mx, my, m1;           // maxima of x, y, s
  acc_t inv_zx, inv_zy, inv_z1;
  acc_t ck, cc;               // coefficients of the KL and CE terms (0 for an ignored row)
  acc_t K;                    // my + log Zy - mx - log Zx + KL
};

// KL(p || q) of a row from its statistics (without T^2).
template <typename acc_t>
SK_HOST_DEVICE inline acc_t kd_row_kl(const KdRowStats<acc_t>& st) {
  return st.y.a / st.y.z - (st.y.m - st.x.m) - std::log(st.y.z) + std::log(st.x.z);
}

// Loss contribution of one counted row (already scaled by the reduction) and its gradient constants.
// `s_target` is the student logit at the target class (unused when has_ce is false).
template <typename acc_t>
SK_HOST_DEVICE inline acc_t kd_row_finish(const KdRowStats<acc_t>& st, bool has_ce, acc_t s_target,
                                          acc_t temperature, acc_t alpha, KdScales<acc_t> sc,
                                          KdRowGrad<acc_t>* g) {
  const acc_t kl = kd_row_kl(st);
  const acc_t wk = alpha * sc.kl, wc = has_ce ? (acc_t(1) - alpha) * sc.ce : acc_t(0);
  acc_t loss = wk * temperature * temperature * kl;
  if (has_ce && wc != acc_t(0)) loss += wc * (st.s1.m + std::log(st.s1.z) - s_target);
  if (g != nullptr) {
    g->mx = st.x.m;
    g->my = st.y.m;
    g->m1 = st.s1.m;
    g->inv_zx = acc_t(1) / st.x.z;
    g->inv_zy = acc_t(1) / st.y.z;
    g->inv_z1 = acc_t(1) / st.s1.z;
    g->ck = wk * temperature;
    g->cc = wc;
    g->K = st.y.m + std::log(st.y.z) - st.x.m - std::log(st.x.z) + kl;
  }
  return loss;
}

// One element's teacher-stream terms: e = e^{y - my}; its contribution to a (masked where e == 0).
template <typename acc_t>
SK_HOST_DEVICE inline acc_t kd_a_term(acc_t e, acc_t y, acc_t x) {
  return e == acc_t(0) ? acc_t(0) : e * (y - x);
}

// Scalar element gradients (CUDA, and the CPU's scalar tails).  `is_target` adds the -1 of the one-hot.
template <typename acc_t>
SK_HOST_DEVICE inline acc_t kd_grad_student(const KdRowGrad<acc_t>& g, acc_t s, acc_t x, acc_t y,
                                            bool is_target) {
  const acc_t q = std::exp(x - g.mx) * g.inv_zx;
  const acc_t p = std::exp(y - g.my) * g.inv_zy;
  acc_t d = g.ck * (q - p);
  if (g.cc != acc_t(0)) d += g.cc * (std::exp(s - g.m1) * g.inv_z1 - (is_target ? acc_t(1) : acc_t(0)));
  return d;
}

template <typename acc_t>
SK_HOST_DEVICE inline acc_t kd_grad_teacher(const KdRowGrad<acc_t>& g, acc_t x, acc_t y) {
  const acc_t p = std::exp(y - g.my) * g.inv_zy;
  return p == acc_t(0) ? acc_t(0) : g.ck * p * (y - x - g.K);
}

}  // namespace
}  // namespace shufflekern
