// batch_norm_act kernels (BatchNorm [+ residual] [+ ReLU], forward and backward), compiled once per CPU ISA.
//
// Memory passes (a pass = one read or write of an activation-sized tensor), against ATen's BatchNorm
// followed by ReLU (and add) on the same tensors:
//   forward,  training:  stats (read x) + apply (read x [, r], write y)        = 2 [3] reads, 1 write
//             ATen:      mean, var, apply (3 reads, 1 write) [+ add_] + relu_  = 4 [6] reads, 2 [3] writes
//   backward:            sums (read g, x [, r], [write gr]) + grad_x (read g or gr, x, write gx)
//             ATen:      threshold_backward (2 reads, 1 write) + BatchNorm's two passes (4 reads, 1 write)
// Statistics are summed in the input type over blocks of kBlock rows, then in double, around a per-channel
// shift (the first pixel's value), so a large mean does not cancel the variance away.
#pragma GCC diagnostic ignored "-Wpsabi"
// gcc 12's AVX-512 conversion intrinsics (the argmax bytes below) start from an undefined register: false alarms.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <utility>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "batch_norm_act.h"
#include "cpu/batch_norm_act_kernel.h"
#include "cpu/dispatch.h"
#include "cpu/scratch.h"
#include "cpu/vec/pool3x3s2.h"

namespace shufflekern::cpu {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

constexpr int64_t kBlock = 64;           // rows (CL) or vectors (NCHW) summed in T before double
constexpr int64_t kGrainElems = 32768;   // elements per parallel task, at least

// Per-channel coefficients, computed from the stored (T-rounded) mean and var by forward and backward alike,
// so that both evaluate z with the same operands: z = x * scale + shift [+ r].
template <typename T>
struct Coefficients {
  Scratch buf;
  double* invstd;  // [C] 1 / sqrt(var + eps)
  T* scale;        // [C]
  T* shift;        // [C]
  explicit Coefficients(const BnActArgs& a) : buf((sizeof(double) + 2 * sizeof(T)) * a.c, "batch_norm_act") {
    invstd = buf.as<double>();
    scale = reinterpret_cast<T*>(invstd + a.c);
    shift = scale + a.c;
    const T* mean = static_cast<const T*>(a.mean);
    const T* var = static_cast<const T*>(a.var);
    const T* w = static_cast<const T*>(a.weight);
    const T* b = static_cast<const T*>(a.bias);
    for (int64_t c = 0; c < a.c; ++c) {
      const BnCoef k = bn_coefficients(static_cast<double>(mean[c]), static_cast<double>(var[c]),
                                       w ? static_cast<double>(w[c]) : 1.0, b ? static_cast<double>(b[c]) : 0.0, a.eps);
      scale[c] = static_cast<T>(k.scale);
      shift[c] = static_cast<T>(k.shift);
      invstd[c] = k.invstd;
    }
  }
};

template <typename T>
inline Vectorized<T> pre_act(const Vectorized<T>& x, const Vectorized<T>& scale, const Vectorized<T>& shift,
                             const T* r, int64_t count) {
  Vectorized<T> z = at::vec::fmadd(x, scale, shift);
  if (r != nullptr) z = z + Vectorized<T>::loadu(r, count);
  return z;
}

// g where z > 0 (or z is NaN), else 0: threshold_backward(g, relu(z), 0).
template <typename T>
inline Vectorized<T> relu_mask(const Vectorized<T>& g, const Vectorized<T>& z) {
  return Vectorized<T>::blendv(g, Vectorized<T>(T(0)), z <= Vectorized<T>(T(0)));
}

// ---- per-channel sums -------------------------------------------------------------------------------------
//
// u += sum f, v += sum f * h over the n positions of one NCHW plane, `terms(i, count)` -> (f, h) at i..i+count:
// vectors summed in T over blocks of kBlock vectors, then in double.
template <typename T, typename F>
inline void add_plane_sums(int64_t n, F&& terms, double& u, double& v) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  for (int64_t i0 = 0; i0 < n; i0 += kBlock * L) {
    const int64_t i1 = std::min(n, i0 + kBlock * L);
    V a1(T(0)), a2(T(0));
    for (int64_t i = i0; i < i1; i += L) {
      const int64_t cnt = std::min<int64_t>(L, i1 - i);
      auto [f, h] = terms(i, cnt);
      if (cnt < L) {  // keep the unused lanes out of the sums
        f = V::set(V(T(0)), f, cnt);
        h = V::set(V(T(0)), h, cnt);
      }
      a1 = a1 + f;
      a2 = at::vec::fmadd(f, h, a2);
    }
    T b1[L], b2[L];
    a1.store(b1);
    a2.store(b2);
    for (int64_t l = 0; l < L; ++l) {
      u += static_cast<double>(b1[l]);
      v += static_cast<double>(b2[l]);
    }
  }
}

// s1[c], s2[c] = the sums over the threads' partials, laid out [threads][2][C] (s1's then s2's).
inline void sum_thread_partials(const double* partial, int64_t C, int threads, double* s1, double* s2) {
  for (int64_t c = 0; c < C; ++c) {
    double u = 0, v = 0;
    for (int t = 0; t < threads; ++t) {
      u += partial[2 * C * t + c];
      v += partial[2 * C * t + C + c];
    }
    s1[c] = u;
    s2[c] = v;
  }
}

// Sums over all N*HW positions of each channel of f and f * h, where `terms(pos, c, count)` returns the
// pair (f, h) of vectors at positions pos..pos+count of channel(s) c; results in double [c] x 2.  CL: threads take pixel ranges and keep
// [c] partials each; NCHW: threads take channels.
template <typename T, typename F>
void channel_sums(const BnActArgs& a, F&& terms, double* s1_out, double* s2_out) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t C = a.c;
  if (a.channels_last) {
    const int64_t P = a.n * a.hw;
    const int threads = at::get_num_threads();
    Scratch partial(sizeof(double) * 2 * C * threads, "batch_norm_act", /*zero=*/true);
    const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(C, 1));
    at::parallel_for(0, P, grain, [&](int64_t begin, int64_t end) {
      double* d1 = partial.as<double>() + 2 * C * at::get_thread_num();
      double* d2 = d1 + C;
      Scratch tb(sizeof(T) * 2 * C, "batch_norm_act");
      T* t1 = tb.as<T>();
      T* t2 = t1 + C;
      for (int64_t p0 = begin; p0 < end; p0 += kBlock) {
        const int64_t p1 = std::min(end, p0 + kBlock);
        std::memset(t1, 0, sizeof(T) * 2 * C);
        for (int64_t p = p0; p < p1; ++p) {
          for (int64_t c = 0; c < C; c += L) {
            const int64_t cnt = std::min<int64_t>(L, C - c);
            const auto [f, h] = terms(p * C + c, c, cnt);
            (V::loadu(t1 + c, cnt) + f).store(t1 + c, cnt);
            at::vec::fmadd(f, h, V::loadu(t2 + c, cnt)).store(t2 + c, cnt);
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          d1[c] += static_cast<double>(t1[c]);
          d2[c] += static_cast<double>(t2[c]);
        }
      }
    });
    sum_thread_partials(partial.as<double>(), C, threads, s1_out, s2_out);
    return;
  }
  const int64_t HW = a.hw;
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(a.n * HW, 1));
  at::parallel_for(0, C, grain, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      double u = 0, v = 0;
      for (int64_t img = 0; img < a.n; ++img) {
        const int64_t base = (img * C + c) * HW;
        add_plane_sums<T>(HW, [&](int64_t i, int64_t cnt) { return terms(base + i, c, cnt); }, u, v);
      }
      s1_out[c] = u;
      s2_out[c] = v;
    }
  });
}

// ---- element-wise passes ------------------------------------------------------------------------------------
//
// fn(pos, c, count) for every vector of positions; CL rows of C channels or NCHW planes of HW pixels.
template <typename T, typename F>
void for_each_vector(const BnActArgs& a, F&& fn) {
  constexpr int64_t L = Vectorized<T>::size();
  const int64_t C = a.c;
  if (a.channels_last) {
    const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(C, 1));
    at::parallel_for(0, a.n * a.hw, grain, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        for (int64_t c = 0; c < C; c += L) fn(p * C + c, c, std::min<int64_t>(L, C - c));
      }
    });
    return;
  }
  const int64_t HW = a.hw;
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(HW, 1));
  at::parallel_for(0, a.n * C, grain, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t c = plane % C;
      for (int64_t i = 0; i < HW; i += L) fn(plane * HW + i, c, std::min<int64_t>(L, HW - i));
    }
  });
}

// Training statistics from the shifted sums s1 = sum(x - k), s2 = sum((x - k)^2) of each channel (k[c]: x at
// the channel's first position): mean and biased variance into a.mean / a.var.
template <typename T>
void store_batch_stats(const BnActArgs& a, const T* k, const double* s1, const double* s2) {
  const double m = static_cast<double>(a.n * a.hw);
  T* mean = static_cast<T*>(a.mean);
  T* var = static_cast<T*>(a.var);
  for (int64_t c = 0; c < a.c; ++c) {
    const double d = s1[c] / m;
    mean[c] = static_cast<T>(static_cast<double>(k[c]) + d);
    var[c] = static_cast<T>(std::max(0.0, s2[c] / m - d * d));
  }
}

// Backward: the weight and bias gradients (where asked for) from the per-channel sums sg = sum gz and
// sgx = sum gz * (x - mean).
template <typename T>
void store_param_grads(const BnActArgs& a, const Coefficients<T>& coef, const double* sg, const double* sgx) {
  if (a.grad_bias != nullptr) {
    for (int64_t c = 0; c < a.c; ++c) static_cast<T*>(a.grad_bias)[c] = static_cast<T>(sg[c]);
  }
  if (a.grad_weight != nullptr) {
    for (int64_t c = 0; c < a.c; ++c) static_cast<T*>(a.grad_weight)[c] = static_cast<T>(sgx[c] * coef.invstd[c]);
  }
}

// Backward: the per-channel coefficients of grad_x = A gz + B (x - mean) + D (csrc/batch_norm_act.h).
template <typename T>
struct GradCoefficients {
  Scratch buf;
  T *a, *b, *d;
  GradCoefficients(const BnActArgs& args, const Coefficients<T>& coef, const double* sg, const double* sgx)
      : buf(sizeof(T) * 3 * args.c, "batch_norm_act") {
    a = buf.as<T>();
    b = a + args.c;
    d = b + args.c;
    const T* w = static_cast<const T*>(args.weight);
    const double m = static_cast<double>(args.n * args.hw);
    for (int64_t c = 0; c < args.c; ++c) {
      const BnGradCoef k = bn_grad_coefficients(w ? static_cast<double>(w[c]) : 1.0, coef.invstd[c], sg[c], sgx[c], m,
                                                args.training);
      a[c] = static_cast<T>(k.a);
      b[c] = static_cast<T>(k.b);
      d[c] = static_cast<T>(k.d);
    }
  }
};

// Channel-indexed operand: a vector of per-channel values (CL) or one broadcast value (NCHW).
template <typename T>
inline Vectorized<T> per_channel(const BnActArgs& a, const T* v, int64_t c, int64_t cnt) {
  return a.channels_last ? Vectorized<T>::loadu(v + c, cnt) : Vectorized<T>(v[c]);
}

// ---- channels_last: the tensor as one flat array ------------------------------------------------------------
//
// A dense [n*hw, c] tensor is a flat array whose element i has channel i % C.  Cut into periods of
// Q = lcm(C, L) elements, every vector of a period has the same channels at the same lanes, so each
// per-channel operand becomes a [Q] array of the channel values repeated (`rep`), read with whole-vector loads:
// no mask or per-pixel channel loop for C not a multiple of L (24, 60, 216 in ShuffleNet), and no pointer or
// flag reloaded in the inner loop (the generic loops above cost 3-5x ATen's BatchNorm on those shapes here:
// Zen 4, AVX-512).  Sums are kept per period position in T over blocks of kBlock periods, then in double, and
// folded onto the channels at the end.  The elements after the last whole period (fewer than Q) take the
// same code with masked vectors.
struct FlatShape {
  int64_t C, Q, E, periods, tail;  // tail = E - periods * Q
};

template <typename T>
FlatShape flat_shape(const BnActArgs& a) {
  constexpr int64_t L = Vectorized<T>::size();
  int64_t g = a.c, b = L;
  while (b != 0) std::swap(g %= b, b);  // gcd(C, L)
  FlatShape f;
  f.C = a.c;
  f.Q = a.c / g * L;
  f.E = a.n * a.hw * a.c;
  f.periods = f.E / f.Q;
  f.tail = f.E - f.periods * f.Q;
  return f;
}

// `out[i] = v[i % C]` for i < Q.
template <typename T, typename U>
void repeat_channels(const FlatShape& f, const U* v, T* out) {
  for (int64_t i = 0; i < f.Q; ++i) out[i] = static_cast<T>(v[i % f.C]);
}

// fn(offset in the tensor, offset in the period, count) for each vector of the whole periods [p0, p1).
template <typename T, typename F>
inline void flat_vectors(const FlatShape& f, int64_t p0, int64_t p1, F&& fn) {
  constexpr int64_t L = Vectorized<T>::size();
  const int64_t Q = f.Q;
  for (int64_t per = p0; per < p1; ++per) {
    const int64_t base = per * Q;
    for (int64_t q = 0; q < Q; q += L) fn(base + q, q, L);
  }
}

// The same for the elements after the last whole period (count < L on the last vector).
template <typename T, typename F>
inline void flat_tail(const FlatShape& f, F&& fn) {
  constexpr int64_t L = Vectorized<T>::size();
  const int64_t base = f.periods * f.Q;
  for (int64_t q = 0; q < f.tail; q += L) fn(base + q, q, std::min<int64_t>(L, f.tail - q));
}

// Per-channel sums of f and f*h over the whole tensor, `terms(offset, q, count)` -> (f, h); results in double.
template <typename T, typename F>
void flat_channel_sums(const FlatShape& fs, F&& terms, double* s1_out, double* s2_out) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t Q = fs.Q;
  const int threads = at::get_num_threads();
  Scratch partial(sizeof(double) * 2 * Q * threads, "batch_norm_act", /*zero=*/true);
  const int64_t grain = std::max<int64_t>(1, kGrainElems / Q);
  at::parallel_for(0, fs.periods, grain, [&](int64_t begin, int64_t end) {
    const std::decay_t<F> f = terms;  // a local copy (pointers captured by value): kept in registers across the stores
    double* d1 = partial.as<double>() + 2 * Q * at::get_thread_num();
    double* d2 = d1 + Q;
    Scratch tb(sizeof(T) * 2 * Q, "batch_norm_act");
    T* t1 = tb.as<T>();
    T* t2 = t1 + Q;
    for (int64_t b0 = begin; b0 < end; b0 += kBlock) {
      const int64_t b1 = std::min(end, b0 + kBlock);
      std::memset(t1, 0, sizeof(T) * 2 * Q);
      flat_vectors<T>(fs, b0, b1, [&](int64_t off, int64_t q, int64_t) {
        const auto [fv, hv] = f(off, q, L);
        (V::loadu(t1 + q) + fv).store(t1 + q);
        at::vec::fmadd(fv, hv, V::loadu(t2 + q)).store(t2 + q);
      });
      for (int64_t q = 0; q < Q; ++q) {
        d1[q] += static_cast<double>(t1[q]);
        d2[q] += static_cast<double>(t2[q]);
      }
    }
  });
  Scratch accb(sizeof(double) * 2 * Q, "batch_norm_act", /*zero=*/true);
  double* acc = accb.as<double>();
  for (int t = 0; t < threads; ++t) {
    const double* d = partial.as<double>() + 2 * Q * t;
    for (int64_t q = 0; q < 2 * Q; ++q) acc[q] += d[q];
  }
  flat_tail<T>(fs, [&](int64_t off, int64_t q, int64_t cnt) {
    auto [fv, hv] = terms(off, q, cnt);
    T b1[L], b2[L];
    fv.store(b1);
    (fv * hv).store(b2);
    for (int64_t l = 0; l < cnt; ++l) {
      acc[q + l] += static_cast<double>(b1[l]);
      acc[Q + q + l] += static_cast<double>(b2[l]);
    }
  });
  for (int64_t c = 0; c < fs.C; ++c) s1_out[c] = s2_out[c] = 0.0;
  for (int64_t q = 0; q < Q; ++q) {
    s1_out[q % fs.C] += acc[q];
    s2_out[q % fs.C] += acc[Q + q];
  }
}

// fn(offset, q, count) over every vector of the tensor, whole periods in parallel, then the tail.
template <typename T, typename F>
void flat_for_each(const FlatShape& fs, F&& fn) {
  const int64_t grain = std::max<int64_t>(1, kGrainElems / fs.Q);
  at::parallel_for(0, fs.periods, grain, [&](int64_t begin, int64_t end) {
    const std::decay_t<F> f = fn;  // as in flat_channel_sums
    flat_vectors<T>(fs, begin, end, f);
  });
  flat_tail<T>(fs, fn);
}

template <typename T, bool RELU, bool RESID>
void forward_flat_apply(const FlatShape& fs, const T* x, const T* r, T* y, const T* scale, const T* shift) {
  using V = Vectorized<T>;
  flat_for_each<T>(fs, [=](int64_t off, int64_t q, int64_t cnt) {
    V z = at::vec::fmadd(V::loadu(x + off, cnt), V::loadu(scale + q, cnt), V::loadu(shift + q, cnt));
    if constexpr (RESID) z = z + V::loadu(r + off, cnt);
    if constexpr (RELU) z = at::vec::clamp_min(z, V(T(0)));
    z.store(y + off, cnt);
  });
}

// Training statistics of x into a.mean / a.var.  Shifted sums: s1 = sum(x - k), s2 = sum((x - k)^2), k = x at
// the first position of the channel.
template <typename T>
void batch_stats(const BnActArgs& a) {
  using V = Vectorized<T>;
  const T* x = static_cast<const T*>(a.x);
  const int64_t C = a.c;
  Scratch sb(sizeof(double) * 2 * C, "batch_norm_act");
  double* s1 = sb.as<double>();
  double* s2 = s1 + C;
  if (a.channels_last) {
    const FlatShape fs = flat_shape<T>(a);
    Scratch kb(sizeof(T) * fs.Q, "batch_norm_act");
    const T* k = kb.as<T>();
    repeat_channels<T>(fs, x, kb.as<T>());
    flat_channel_sums<T>(
        fs,
        [=](int64_t off, int64_t q, int64_t cnt) {
          const V d = V::loadu(x + off, cnt) - V::loadu(k + q, cnt);
          return std::make_pair(d, d);
        },
        s1, s2);
    store_batch_stats<T>(a, k, s1, s2);
    return;
  }
  Scratch kb(sizeof(T) * C, "batch_norm_act");
  T* k = kb.as<T>();
  for (int64_t c = 0; c < C; ++c) k[c] = x[c * a.hw];
  channel_sums<T>(
      a,
      [&](int64_t pos, int64_t c, int64_t cnt) {
        const V d = V::loadu(x + pos, cnt) - V(k[c]);
        return std::make_pair(d, d);
      },
      s1, s2);
  store_batch_stats<T>(a, k, s1, s2);
}

template <typename T>
void forward_flat(const BnActArgs& a) {
  const T* x = static_cast<const T*>(a.x);
  const T* r = static_cast<const T*>(a.residual);
  T* y = static_cast<T*>(a.y);
  const FlatShape fs = flat_shape<T>(a);
  const int64_t Q = fs.Q;
  Scratch rb(sizeof(T) * 2 * Q, "batch_norm_act");
  T* rep1 = rb.as<T>();
  T* rep2 = rep1 + Q;
  if (a.training) batch_stats<T>(a);
  const Coefficients<T> coef(a);
  repeat_channels<T>(fs, coef.scale, rep1);
  repeat_channels<T>(fs, coef.shift, rep2);
  if (a.relu) {
    r ? forward_flat_apply<T, true, true>(fs, x, r, y, rep1, rep2) : forward_flat_apply<T, true, false>(fs, x, r, y, rep1, rep2);
  } else {
    r ? forward_flat_apply<T, false, true>(fs, x, r, y, rep1, rep2) : forward_flat_apply<T, false, false>(fs, x, r, y, rep1, rep2);
  }
}

// Per-channel operands of the backward, repeated over a period.
template <typename T>
struct FlatBwd {
  const T *x, *r, *g, *scale, *shift, *mean, *ca, *cb, *cd;
  T *gr, *gx;
};

template <typename T, bool RELU, bool RESID>
inline Vectorized<T> flat_grad_z(const FlatBwd<T>& p, int64_t off, int64_t q, int64_t cnt) {
  using V = Vectorized<T>;
  const V gv = V::loadu(p.g + off, cnt);
  if constexpr (!RELU) {
    return gv;
  } else {
    V z = at::vec::fmadd(V::loadu(p.x + off, cnt), V::loadu(p.scale + q, cnt), V::loadu(p.shift + q, cnt));
    if constexpr (RESID) z = z + V::loadu(p.r + off, cnt);
    return relu_mask<T>(gv, z);
  }
}

template <typename T, bool RELU, bool RESID>
void backward_flat_sums(const FlatShape& fs, const FlatBwd<T>& p, double* sg, double* sgx) {
  using V = Vectorized<T>;
  flat_channel_sums<T>(
      fs,
      [p](int64_t off, int64_t q, int64_t cnt) {
        const V gz = flat_grad_z<T, RELU, RESID>(p, off, q, cnt);
        if (p.gr != nullptr) gz.store(p.gr + off, cnt);
        return std::make_pair(gz, V::loadu(p.x + off, cnt) - V::loadu(p.mean + q, cnt));
      },
      sg, sgx);
}

template <typename T, bool RELU, bool RESID, bool TRAINING>
void backward_flat_apply(const FlatShape& fs, const FlatBwd<T>& p) {
  using V = Vectorized<T>;
  flat_for_each<T>(fs, [p](int64_t off, int64_t q, int64_t cnt) {
    const V gz = p.gr != nullptr ? V::loadu(p.gr + off, cnt) : flat_grad_z<T, RELU, RESID>(p, off, q, cnt);
    V out = gz * V::loadu(p.ca + q, cnt);
    if constexpr (TRAINING) {
      const V d = V::loadu(p.x + off, cnt) - V::loadu(p.mean + q, cnt);
      out = at::vec::fmadd(d, V::loadu(p.cb + q, cnt), out + V::loadu(p.cd + q, cnt));
    }
    out.store(p.gx + off, cnt);
  });
}

template <typename T>
void backward_flat(const BnActArgs& a) {
  const FlatShape fs = flat_shape<T>(a);
  const int64_t C = a.c, Q = fs.Q;
  const Coefficients<T> coef(a);
  Scratch rb(sizeof(T) * 6 * Q, "batch_norm_act");
  FlatBwd<T> p{};
  T* rep = rb.as<T>();
  p.x = static_cast<const T*>(a.x);
  p.r = static_cast<const T*>(a.residual);
  p.g = static_cast<const T*>(a.grad_y);
  p.gr = static_cast<T*>(a.grad_residual);
  p.gx = static_cast<T*>(a.grad_x);
  repeat_channels<T>(fs, coef.scale, rep);
  repeat_channels<T>(fs, coef.shift, rep + Q);
  repeat_channels<T>(fs, static_cast<const T*>(a.mean), rep + 2 * Q);
  p.scale = rep;
  p.shift = rep + Q;
  p.mean = rep + 2 * Q;
  Scratch sb(sizeof(double) * 2 * C, "batch_norm_act");
  double* sg = sb.as<double>();  // sum gz
  double* sgx = sg + C;          // sum gz * (x - mean)
  const bool resid = p.r != nullptr;
  if (a.relu) {
    resid ? backward_flat_sums<T, true, true>(fs, p, sg, sgx) : backward_flat_sums<T, true, false>(fs, p, sg, sgx);
  } else {
    resid ? backward_flat_sums<T, false, true>(fs, p, sg, sgx) : backward_flat_sums<T, false, false>(fs, p, sg, sgx);
  }
  store_param_grads<T>(a, coef, sg, sgx);
  if (p.gx == nullptr) return;
  const GradCoefficients<T> gk(a, coef, sg, sgx);  // grad_x = A gz + B (x - mean) + D
  const T *ca = gk.a, *cbv = gk.b, *cd = gk.d;
  repeat_channels<T>(fs, ca, rep + 3 * Q);
  repeat_channels<T>(fs, cbv, rep + 4 * Q);
  repeat_channels<T>(fs, cd, rep + 5 * Q);
  p.ca = rep + 3 * Q;
  p.cb = rep + 4 * Q;
  p.cd = rep + 5 * Q;
  if (a.training) {
    if (a.relu) {
      resid ? backward_flat_apply<T, true, true, true>(fs, p) : backward_flat_apply<T, true, false, true>(fs, p);
    } else {
      backward_flat_apply<T, false, false, true>(fs, p);  // a residual without ReLU: gz was written to gr
    }
  } else {
    if (a.relu) {
      resid ? backward_flat_apply<T, true, true, false>(fs, p) : backward_flat_apply<T, true, false, false>(fs, p);
    } else {
      backward_flat_apply<T, false, false, false>(fs, p);
    }
  }
}

template <typename T>
void forward_t(const BnActArgs& a) {
  if (a.channels_last) return forward_flat<T>(a);
  using V = Vectorized<T>;
  const T* x = static_cast<const T*>(a.x);
  const T* r = static_cast<const T*>(a.residual);
  T* y = static_cast<T*>(a.y);
  if (a.training) batch_stats<T>(a);
  const Coefficients<T> coef(a);
  for_each_vector<T>(a, [&](int64_t pos, int64_t c, int64_t cnt) {
    V z = pre_act<T>(V::loadu(x + pos, cnt), per_channel<T>(a, coef.scale, c, cnt),
                     per_channel<T>(a, coef.shift, c, cnt), r ? r + pos : nullptr, cnt);
    if (a.relu) z = at::vec::clamp_min(z, V(T(0)));
    z.store(y + pos, cnt);
  });
}

template <typename T>
void backward_t(const BnActArgs& a) {
  if (a.channels_last) return backward_flat<T>(a);
  using V = Vectorized<T>;
  const T* x = static_cast<const T*>(a.x);
  const T* r = static_cast<const T*>(a.residual);
  const T* g = static_cast<const T*>(a.grad_y);
  T* gr = static_cast<T*>(a.grad_residual);
  T* gx = static_cast<T*>(a.grad_x);
  const T* mean = static_cast<const T*>(a.mean);
  const int64_t C = a.c;
  const Coefficients<T> coef(a);
  // gz = dL/dz: g through the ReLU mask (recomputed from x [and r]); written to gr when there is a residual.
  auto grad_z = [&](int64_t pos, int64_t c, int64_t cnt) {
    const V gv = V::loadu(g + pos, cnt);
    if (!a.relu) return gv;
    return relu_mask<T>(gv, pre_act<T>(V::loadu(x + pos, cnt), per_channel<T>(a, coef.scale, c, cnt),
                                      per_channel<T>(a, coef.shift, c, cnt), r ? r + pos : nullptr, cnt));
  };
  Scratch sb(sizeof(double) * 2 * C, "batch_norm_act");
  double* sg = sb.as<double>();  // sum gz
  double* sgx = sg + C;          // sum gz * (x - mean)
  channel_sums<T>(
      a,
      [&](int64_t pos, int64_t c, int64_t cnt) {
        const V gz = grad_z(pos, c, cnt);
        if (gr != nullptr) gz.store(gr + pos, cnt);
        return std::make_pair(gz, V::loadu(x + pos, cnt) - per_channel<T>(a, mean, c, cnt));
      },
      sg, sgx);
  store_param_grads<T>(a, coef, sg, sgx);
  if (gx == nullptr) return;
  const GradCoefficients<T> gk(a, coef, sg, sgx);  // grad_x = A gz + B (x - mean) + D
  const T *ca = gk.a, *cbv = gk.b, *cd = gk.d;
  for_each_vector<T>(a, [&](int64_t pos, int64_t c, int64_t cnt) {
    const V gz = gr != nullptr ? V::loadu(gr + pos, cnt) : grad_z(pos, c, cnt);
    V out = gz * per_channel<T>(a, ca, c, cnt);
    if (a.training) {
      const V d = V::loadu(x + pos, cnt) - per_channel<T>(a, mean, c, cnt);
      out = at::vec::fmadd(d, per_channel<T>(a, cbv, c, cnt), out + per_channel<T>(a, cd, c, cnt));
    }
    out.store(gx + pos, cnt);
  });
}

// ---- bn_relu_max_pool: BatchNorm + ReLU + max_pool2d(3, 2, 1) ------------------------------------------------
//
// Memory passes over the full-resolution x (the ShuffleNet stem's [16, 24, 112, 112]), against batch_norm_act
// followed by ATen's max_pool2d with indices (and, backward, its zero fill + scatter):
//   forward:  stats (read x) + normalise-and-pool (read x; write y and argmax, a quarter of x's size, 1 byte)
//             vs stats + apply (read x, write z) + pool (read z; write y and an int64 index a quarter of x's size)
//   backward: sums + grad_x, each reading x and the quarter-size grad_y and argmax (the pooled gradient gathered
//             per input, never written), writing grad_x once
//             vs zero fill + scatter (write and update dL/dz) + BatchNorm's sums and apply (read dL/dz, x twice)
// z = relu(x * scale + shift) is the batch_norm_act forward's own expression: y is bit-identical to
// max_pool2d(batch_norm_act(x)); the backward's ReLU mask recomputes the same z.

// The argmax bytes (window positions 0..8) as the lanes of a vector of T; count <= the vector's size.
// (add_if_argmax's portable path: AVX-512 float and AVX2 float whole vectors compare the bytes themselves.)
template <typename T>
inline Vectorized<T> load_argmax(const uint8_t* src, int64_t count) {
  T tmp[Vectorized<T>::size()] = {};
  for (int64_t l = 0; l < count; ++l) tmp[l] = static_cast<T>(src[l]);
  return Vectorized<T>::loadu(tmp);
}

// The pooled outputs along one dimension whose windows hold input index i, ascending: o[j] and the input's
// offset k[j] in o[j]'s window (window of o: 2 o - 1 .. 2 o + 1).  Returns their number (1 or 2).
inline int windows_holding(int64_t i, int64_t n_out, int64_t* o, int* k) {
  if (i % 2 == 0) {
    o[0] = i / 2;
    k[0] = 1;
    return 1;
  }
  o[0] = (i - 1) / 2;
  k[0] = 2;
  if ((i + 1) / 2 >= n_out) return 1;
  o[1] = (i + 1) / 2;
  k[1] = 0;
  return 2;
}

// channels_last forward: one task = output rows; vectors over the channels of a pixel.
template <typename T>
void pool_forward_cl(const BnPoolArgs& p, const T* scale, const T* shift) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const BnActArgs& a = p.bn;
  const T* x = static_cast<const T*>(a.x);
  T* y = static_cast<T*>(a.y);
  uint8_t* am = static_cast<uint8_t*>(p.argmax);
  const int64_t C = a.c, H = p.h, W = p.w, Ho = p.ho, Wo = p.wo;
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(4 * Wo * C, 1));
  at::parallel_for(0, a.n * Ho, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t img = r / Ho, oy = r % Ho;
      int64_t y0, y1;
      pool_window(oy, H, y0, y1);
      for (int64_t ox = 0; ox < Wo; ++ox) {
        int64_t x0, x1;
        pool_window(ox, W, x0, x1);
        const int64_t out = (r * Wo + ox) * C;
        for (int64_t c = 0; c < C; c += L) {
          const int64_t cnt = std::min<int64_t>(L, C - c);
          const V sc = V::loadu(scale + c, cnt), sh = V::loadu(shift + c, cnt);
          V best, arg;
          bool first = true;
          for (int64_t iy = y0; iy < y1; ++iy) {
            const T* row = x + (img * H + iy) * W * C + c;
            for (int64_t ix = x0; ix < x1; ++ix) {
              const V z = at::vec::clamp_min(at::vec::fmadd(V::loadu(row + ix * C, cnt), sc, sh), V(T(0)));
              const V k(static_cast<T>(3 * (iy - 2 * oy + 1) + (ix - 2 * ox + 1)));
              if (first) {
                best = z;
                arg = k;
                first = false;
                continue;
              }
              take_if_larger<T>(z, k, best, arg);
            }
          }
          best.store(y + out + c, cnt);
          store_argmax<T>(arg, am + out + c, cnt);
        }
      }
    }
  });
}

// NCHW forward: one task = planes, pooled by pool3x3s2_plane (csrc/cpu/vec/pool3x3s2.h) from z = relu(x * scale
// + shift) computed row by row.
template <typename T>
void pool_forward_nchw(const BnPoolArgs& p, const T* scale, const T* shift) {
  using V = Vectorized<T>;
  const BnActArgs& a = p.bn;
  const T* x = static_cast<const T*>(a.x);
  T* y = static_cast<T*>(a.y);
  uint8_t* am = static_cast<uint8_t*>(p.argmax);
  const int64_t C = a.c, H = p.h, W = p.w, Ho = p.ho, Wo = p.wo, HW = H * W;
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(HW, 1));
  at::parallel_for(0, a.n * C, grain, [&](int64_t p0, int64_t p1) {
    Scratch rows(sizeof(T) * pool3x3s2_rows_len<T>(H, Wo), "bn_relu_max_pool");
    for (int64_t plane = p0; plane < p1; ++plane) {
      const int64_t c = plane % C;
      const V sc(scale[c]), sh(shift[c]), zero(T(0));
      pool3x3s2_plane<T>(x + plane * HW, H, W, Ho, Wo, rows.as<T>(), y + plane * Ho * Wo, am + plane * Ho * Wo,
                         [&](const V& v) { return at::vec::clamp_min(at::vec::fmadd(v, sc, sh), zero); });
    }
  });
}

// The operands of the backward passes, [C] each (the BatchNorm's per-channel values).
template <typename T>
struct PoolBwd {
  const T *x, *g, *scale, *shift, *mean;
  const uint8_t* am;
  const T *ca, *cb, *cd;  // grad_x = A gz + B (x - mean) + D
  T* gx;
};

// gp + the pooled gradient g[0..count) where argmax[0..count) == k (lanes past count untouched): one window's
// share of an input's gradient.  The same sum either way (adding +0.0 to a sum that started at +0.0 changes
// nothing); AVX-512 float compares the argmax bytes and adds under the lane mask.
template <typename T>
inline Vectorized<T> add_if_argmax(const Vectorized<T>& gp, const T* g, const uint8_t* argmax, int k, int64_t count) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    const __mmask16 valid = static_cast<__mmask16>((1u << count) - 1);
    const __mmask16 m =
        _mm_mask_cmpeq_epi8_mask(valid, _mm_maskz_loadu_epi8(valid, argmax), _mm_set1_epi8(static_cast<char>(k)));
    return Vectorized<float>(_mm512_mask_add_ps(gp, m, gp, _mm512_maskz_loadu_ps(m, g)));
  }
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, float>) {
    if (count == 8) {  // the bytes compared, their 0 / 0xff widened to lane masks
      const __m128i eq = _mm_cmpeq_epi8(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(argmax)),
                                        _mm_set1_epi8(static_cast<char>(k)));
      const __m256 m = _mm256_castsi256_ps(_mm256_cvtepi8_epi32(eq));
      return Vectorized<float>(_mm256_add_ps(gp, _mm256_and_ps(_mm256_loadu_ps(g), m)));
    }
  }
#endif
  using V = Vectorized<T>;
  return gp + (V::loadu(g, count) & (load_argmax<T>(argmax, count) == V(static_cast<T>(k))));
}

// channels_last: the windows over input row r (of n * H): `at` = the offsets of their output rows' first
// pixels (img * Ho + oy) * Wo * C, ky = the row's offset in each; returns their number (1 or 2).
inline int cl_rows_holding(const BnPoolArgs& p, int64_t r, int64_t* at, int* ky) {
  const int64_t img = r / p.h, iy = r % p.h;
  int64_t oy[2];
  const int ny = windows_holding(iy, p.ho, oy, ky);
  for (int i = 0; i < ny; ++i) at[i] = (img * p.ho + oy[i]) * p.wo * p.bn.c;
  return ny;
}

// gz = dL/dz at input pixel ix of the row, channels c..c+count: the pooled gradients of the <= 4 windows holding
// it whose argmax it is, summed in ATen's order (output rows, then columns, ascending), through the ReLU mask.
template <typename T>
inline Vectorized<T> cl_grad_z(const PoolBwd<T>& b, const int64_t* at, const int* ky, int ny, int64_t ix,
                               int64_t Wo, int64_t C, int64_t c, int64_t count, const Vectorized<T>& xv,
                               const Vectorized<T>& scale, const Vectorized<T>& shift) {
  int64_t ox[2];
  int kx[2];
  const int nx = windows_holding(ix, Wo, ox, kx);
  Vectorized<T> gp(T(0));
  for (int i = 0; i < ny; ++i) {
    for (int j = 0; j < nx; ++j) {
      const int64_t off = at[i] + ox[j] * C + c;
      gp = add_if_argmax<T>(gp, b.g + off, b.am + off, 3 * ky[i] + kx[j], count);
    }
  }
  return relu_mask<T>(gp, at::vec::fmadd(xv, scale, shift));
}

// Per-channel sums sg = sum gz, sgx = sum gz (x - mean), channels_last: threads take input rows and keep [C]
// partials in double; a channel vector is summed in T over blocks of kBlock pixels, its operands in registers.
template <typename T>
void pool_backward_sums_cl(const BnPoolArgs& p, const PoolBwd<T>& b, double* sg, double* sgx) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t C = p.bn.c, W = p.w;
  const int threads = at::get_num_threads();
  Scratch partial(sizeof(double) * 2 * C * threads, "bn_relu_max_pool", /*zero=*/true);
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(W * C, 1));
  at::parallel_for(0, p.bn.n * p.h, grain, [&](int64_t r0, int64_t r1) {
    double* d1 = partial.as<double>() + 2 * C * at::get_thread_num();
    double* d2 = d1 + C;
    for (int64_t r = r0; r < r1; ++r) {
      int64_t at[2];
      int ky[2];
      const int ny = cl_rows_holding(p, r, at, ky);
      const T* xr = b.x + r * W * C;
      for (int64_t c = 0; c < C; c += L) {
        const int64_t cnt = std::min<int64_t>(L, C - c);
        const V sc = V::loadu(b.scale + c, cnt), sh = V::loadu(b.shift + c, cnt), mean = V::loadu(b.mean + c, cnt);
        for (int64_t ix0 = 0; ix0 < W; ix0 += kBlock) {
          V a1(T(0)), a2(T(0));
          for (int64_t ix = ix0; ix < std::min(W, ix0 + kBlock); ++ix) {
            const V xv = V::loadu(xr + ix * C + c, cnt);
            const V gz = cl_grad_z<T>(b, at, ky, ny, ix, p.wo, C, c, cnt, xv, sc, sh);
            a1 = a1 + gz;
            a2 = at::vec::fmadd(gz, xv - mean, a2);
          }
          T t1[L], t2[L];
          a1.store(t1);
          a2.store(t2);
          for (int64_t l = 0; l < cnt; ++l) {
            d1[c + l] += static_cast<double>(t1[l]);
            d2[c + l] += static_cast<double>(t2[l]);
          }
        }
      }
    }
  });
  sum_thread_partials(partial.as<double>(), C, threads, sg, sgx);
}

template <typename T, bool TRAINING>
void pool_backward_apply_cl(const BnPoolArgs& p, const PoolBwd<T>& b) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t C = p.bn.c, W = p.w;
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(W * C, 1));
  at::parallel_for(0, p.bn.n * p.h, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int64_t at[2];
      int ky[2];
      const int ny = cl_rows_holding(p, r, at, ky);
      const T* xr = b.x + r * W * C;
      T* gr = b.gx + r * W * C;
      for (int64_t c = 0; c < C; c += L) {
        const int64_t cnt = std::min<int64_t>(L, C - c);
        const V sc = V::loadu(b.scale + c, cnt), sh = V::loadu(b.shift + c, cnt), mean = V::loadu(b.mean + c, cnt);
        const V ca = V::loadu(b.ca + c, cnt), cb = V::loadu(b.cb + c, cnt), cd = V::loadu(b.cd + c, cnt);
        for (int64_t ix = 0; ix < W; ++ix) {
          const V xv = V::loadu(xr + ix * C + c, cnt);
          V out = cl_grad_z<T>(b, at, ky, ny, ix, p.wo, C, c, cnt, xv, sc, sh) * ca;
          if constexpr (TRAINING) out = at::vec::fmadd(xv - mean, cb, out + cd);
          out.store(gr + ix * C + c, cnt);
        }
      }
    }
  });
}

// NCHW: gz of one plane into `gz` (scratch of H * W): the pooled gradients scattered to their argmax in
// output order (ATen's order and sums, on a zeroed plane), then the ReLU mask with z recomputed.  An argmax
// outside the input (possible only in a hand-made argmax: the forward never makes one) is skipped.
template <typename T>
void nchw_plane_grad_z(const BnPoolArgs& p, const PoolBwd<T>& b, int64_t plane, T* gz) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t C = p.bn.c, H = p.h, W = p.w, Ho = p.ho, Wo = p.wo, HW = H * W;
  std::memset(gz, 0, sizeof(T) * HW);
  const T* gp = b.g + plane * Ho * Wo;
  const uint8_t* ap = b.am + plane * Ho * Wo;
  for (int64_t oy = 0; oy < Ho; ++oy) {
    for (int64_t ox = 0; ox < Wo; ++ox) {
      const int k = ap[oy * Wo + ox];
      const int64_t iy = 2 * oy - 1 + k / 3, ix = 2 * ox - 1 + k % 3;
      if (k < 9 && iy >= 0 && iy < H && ix >= 0 && ix < W) gz[iy * W + ix] += gp[oy * Wo + ox];
    }
  }
  const int64_t c = plane % C;
  const V sc(b.scale[c]), sh(b.shift[c]);
  const T* xp = b.x + plane * HW;
  for (int64_t i = 0; i < HW; i += L) {
    const int64_t cnt = std::min<int64_t>(L, HW - i);
    relu_mask<T>(V::loadu(gz + i, cnt), at::vec::fmadd(V::loadu(xp + i, cnt), sc, sh)).store(gz + i, cnt);
  }
}

// NCHW sums: threads take channels (all images of one), as channel_sums.
template <typename T>
void pool_backward_sums_nchw(const BnPoolArgs& p, const PoolBwd<T>& b, double* sg, double* sgx) {
  using V = Vectorized<T>;
  const int64_t C = p.bn.c, HW = p.h * p.w;
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(p.bn.n * HW, 1));
  at::parallel_for(0, C, grain, [&](int64_t c0, int64_t c1) {
    Scratch zb(sizeof(T) * HW, "bn_relu_max_pool");
    T* gz = zb.as<T>();
    for (int64_t c = c0; c < c1; ++c) {
      double u = 0, v = 0;
      const V mean(b.mean[c]);
      for (int64_t img = 0; img < p.bn.n; ++img) {
        const int64_t plane = img * C + c;
        nchw_plane_grad_z<T>(p, b, plane, gz);
        const T* xp = b.x + plane * HW;
        const auto terms = [&](int64_t i, int64_t cnt) {
          return std::make_pair(V::loadu(gz + i, cnt), V::loadu(xp + i, cnt) - mean);
        };
        add_plane_sums<T>(HW, terms, u, v);
      }
      sg[c] = u;
      sgx[c] = v;
    }
  });
}

template <typename T, bool TRAINING>
void pool_backward_apply_nchw(const BnPoolArgs& p, const PoolBwd<T>& b) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t C = p.bn.c, HW = p.h * p.w;
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(HW, 1));
  at::parallel_for(0, p.bn.n * C, grain, [&](int64_t p0, int64_t p1) {
    Scratch zb(sizeof(T) * HW, "bn_relu_max_pool");
    T* gz = zb.as<T>();
    for (int64_t plane = p0; plane < p1; ++plane) {
      const int64_t c = plane % C;
      nchw_plane_grad_z<T>(p, b, plane, gz);
      const T* xp = b.x + plane * HW;
      T* out_p = b.gx + plane * HW;
      const V ca(b.ca[c]), cb(b.cb[c]), cd(b.cd[c]), mean(b.mean[c]);
      for (int64_t i = 0; i < HW; i += L) {
        const int64_t cnt = std::min<int64_t>(L, HW - i);
        V out = V::loadu(gz + i, cnt) * ca;
        if constexpr (TRAINING) out = at::vec::fmadd(V::loadu(xp + i, cnt) - mean, cb, out + cd);
        out.store(out_p + i, cnt);
      }
    }
  });
}

template <typename T>
void pool_forward_t(const BnPoolArgs& p) {
  if (p.bn.training) batch_stats<T>(p.bn);
  const Coefficients<T> coef(p.bn);
  p.bn.channels_last ? pool_forward_cl<T>(p, coef.scale, coef.shift) : pool_forward_nchw<T>(p, coef.scale, coef.shift);
}

template <typename T>
void pool_backward_t(const BnPoolArgs& p) {
  const BnActArgs& a = p.bn;
  const Coefficients<T> coef(a);
  PoolBwd<T> b{};
  b.x = static_cast<const T*>(a.x);
  b.g = static_cast<const T*>(a.grad_y);
  b.am = static_cast<const uint8_t*>(p.argmax);
  b.scale = coef.scale;
  b.shift = coef.shift;
  b.mean = static_cast<const T*>(a.mean);
  b.gx = static_cast<T*>(a.grad_x);
  Scratch sb(sizeof(double) * 2 * a.c, "bn_relu_max_pool");
  double* sg = sb.as<double>();  // sum gz
  double* sgx = sg + a.c;        // sum gz * (x - mean)
  a.channels_last ? pool_backward_sums_cl<T>(p, b, sg, sgx) : pool_backward_sums_nchw<T>(p, b, sg, sgx);
  store_param_grads<T>(a, coef, sg, sgx);
  if (b.gx == nullptr) return;
  const GradCoefficients<T> gk(a, coef, sg, sgx);
  b.ca = gk.a;
  b.cb = gk.b;
  b.cd = gk.d;
  if (a.channels_last) {
    a.training ? pool_backward_apply_cl<T, true>(p, b) : pool_backward_apply_cl<T, false>(p, b);
  } else {
    a.training ? pool_backward_apply_nchw<T, true>(p, b) : pool_backward_apply_nchw<T, false>(p, b);
  }
}

void pool_forward_kernel(const BnPoolArgs& p) {
  p.bn.dtype == kBnDouble ? pool_forward_t<double>(p) : pool_forward_t<float>(p);
}

void pool_backward_kernel(const BnPoolArgs& p) {
  p.bn.dtype == kBnDouble ? pool_backward_t<double>(p) : pool_backward_t<float>(p);
}

void forward_kernel(const BnActArgs& a) {
  a.dtype == kBnDouble ? forward_t<double>(a) : forward_t<float>(a);
}

void backward_kernel(const BnActArgs& a) {
  a.dtype == kBnDouble ? backward_t<double>(a) : backward_t<float>(a);
}

}  // namespace
}  // namespace CPU_CAPABILITY

SK_REGISTER_KERNEL(batch_norm_act_forward_table, &CPU_CAPABILITY::forward_kernel);
SK_REGISTER_KERNEL(batch_norm_act_backward_table, &CPU_CAPABILITY::backward_kernel);
SK_REGISTER_KERNEL(bn_relu_max_pool_forward_table, &CPU_CAPABILITY::pool_forward_kernel);
SK_REGISTER_KERNEL(bn_relu_max_pool_backward_table, &CPU_CAPABILITY::pool_backward_kernel);

}  // namespace shufflekern::cpu
