// Vectorised softmax pieces shared by the per-ISA loss kernels of csrc/cpu/vec/ (kd_loss, dkd_loss).  Include
// from a csrc/cpu/vec/ file only: it is compiled once per ISA (CPU_CAPABILITY), with internal linkage.
#pragma once
#include <cmath>
#include <limits>
#include <type_traits>

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cpu/kd_loss_kernel.h"  // KdDtype

namespace shufflekern::cpu {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

// float: the polynomial exp of flash attention's CPU kernel (~2e-6 relative), far faster than Sleef's;
// double keeps the accurate one (gradcheck).
template <typename acc_t>
inline Vectorized<acc_t> vexp(const Vectorized<acc_t>& v) {
  if constexpr (std::is_same_v<acc_t, float>) {
    return v.exp_u20();
  } else {
    return v.exp();
  }
}

// The block as acc_t: the input itself, or widened into `buf`.
template <typename scalar_t, typename acc_t>
inline const acc_t* to_acc(const scalar_t* src, acc_t* buf, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return src;
  } else {
    using Vs = Vectorized<scalar_t>;
    using Vf = Vectorized<float>;
    int64_t i = 0;
    for (; i + Vs::size() <= n; i += Vs::size()) {
      auto [lo, hi] = at::vec::convert_to_float<scalar_t>(Vs::loadu(src + i));
      lo.store(buf + i);
      hi.store(buf + i + Vf::size());
    }
    for (; i < n; ++i) buf[i] = static_cast<float>(src[i]);
    return buf;
  }
}

template <typename acc_t>
inline acc_t block_max(const acc_t* p, int64_t n) {
  using V = Vectorized<acc_t>;
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  int64_t i = 0;
  if (n >= 2 * V::size()) {
    V m0 = V::loadu(p), m1 = V::loadu(p + V::size());
    for (i = 2 * V::size(); i + 2 * V::size() <= n; i += 2 * V::size()) {
      m0 = at::vec::maximum(m0, V::loadu(p + i));
      m1 = at::vec::maximum(m1, V::loadu(p + i + V::size()));
    }
    m = at::vec::vec_reduce_all<acc_t>([](V& a, V& b) { return at::vec::maximum(a, b); },
                                       at::vec::maximum(m0, m1));
  }
  for (; i < n; ++i) m = (p[i] > m || std::isnan(p[i])) ? p[i] : m;  // NaN propagates
  return m;
}

// Exponentials are taken against a finite shift: a stream whose maximum is -inf has z = a = 0.
template <typename acc_t>
inline acc_t finite_or_zero(acc_t m) {
  return m == -std::numeric_limits<acc_t>::infinity() ? acc_t(0) : m;
}

// Calls rows.template operator()<scalar_t, acc_t>() for the logits' dtype code (KdDtype): acc_t is double for
// double logits, else float.
template <typename F>
inline void dispatch_kd_dtype(int dtype, const char* op, const F& rows) {
  switch (dtype) {
    case kKdFloat: return rows.template operator()<float, float>();
    case kKdDouble: return rows.template operator()<double, double>();
    case kKdBFloat16: return rows.template operator()<c10::BFloat16, float>();
    case kKdHalf: return rows.template operator()<c10::Half, float>();
    default: TORCH_CHECK(false, op, ": unsupported dtype code ", dtype);
  }
}

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace shufflekern::cpu
