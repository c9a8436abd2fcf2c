// Whole-unit inference kernels (csrc/unit.h), compiled once per CPU ISA (csrc/cpu/dispatch.h).
//
// One task = one image x a strip of output rows.  A task gathers the input rows its strip needs (the 3x3
// halo included: a strip recomputes the one or two rows of its neighbours) into an NHWC tile, then runs
// GEMM -> depthwise -> GEMM on tiles sized to stay in L2 and writes the interleaved / added output.  No
// intermediate leaves the task's scratch (one per thread, reused across calls).
//
// GEMM: C[m, n] = act(sum_k A[m, k] B[k, n] + bias[n]), A = a pixel tile (pixels x channels, row stride lda),
// B prepacked in panels of 2G (or G) columns (csrc/unit.h); the micro-kernel keeps MR x NV vector
// accumulators in registers, broadcasting A and loading one panel row a step.  The V1 unit's last GEMM reads
// A through an index (kidx): the channel shuffle costs nothing.
//
// No std container or other out-of-line template from a header is instantiated here (csrc/cpu/scratch.h
// says why); everything is in an anonymous namespace.
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/Exception.h>

#include "cpu/dispatch.h"
#include "unit.h"

namespace shufflekern::cpu {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

inline int64_t rup(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Per-thread scratch, grown on demand and kept (a fresh allocation of a few hundred KiB each call would be
// mmapped and page-faulted every time).
struct TlsScratch {
  void* p;
  size_t cap;
};
thread_local TlsScratch tls_scratch{nullptr, 0};

void* thread_scratch(size_t bytes) {
  if (tls_scratch.cap < bytes) {
    std::free(tls_scratch.p);
    tls_scratch.p = nullptr;
    tls_scratch.cap = 0;
    void* p = nullptr;
    const size_t cap = (bytes + 4095) / 4096 * 4096;
    TORCH_CHECK(posix_memalign(&p, 64, cap) == 0 && p != nullptr, "unit kernels: out of memory (", cap, " bytes)");
    tls_scratch.p = p;
    tls_scratch.cap = cap;
  }
  return tls_scratch.p;
}

template <typename T>
struct Cfg {
  using V = Vectorized<T>;
  static constexpr int VS = V::size();
  static constexpr int G = 64 / sizeof(T);  // padding granularity (elements)
  static constexpr int P = 2 * G;           // full panel width
  static constexpr int NVF = P / VS;        // vectors in a full panel
  static constexpr int NVH = G / VS;        // vectors in a half panel
  static constexpr int ACC = (VS * sizeof(T) >= 64) ? 24 : 12;  // accumulator registers to use
};

template <typename T>
inline Vectorized<T> load_part(const T* p, int64_t cnt) {
  using V = Vectorized<T>;
  if (cnt >= V::size()) return V::loadu(p);
  if (cnt <= 0) return V(T(0));
  return V::loadu(p, cnt);
}

// C[0:MR, 0:NV*VS] = act(A[0:MR, kidx or 0:K] B + bias)
template <typename T, int MR, int NV, bool IDX>
inline void ukernel(const T* __restrict A, int64_t lda, const int32_t* __restrict kidx, int64_t K,
                    const T* __restrict B, T* __restrict C, int64_t ldc, const T* bias, int64_t nb, bool relu) {
  using V = Vectorized<T>;
  constexpr int VS = V::size();
  constexpr int W = NV * VS;
  V acc[MR][NV];
  V bv[NV];
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) bv[v] = load_part(bias + v * VS, nb - v * VS);
#pragma GCC unroll 32
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[r][v] = bv[v];
  for (int64_t k = 0; k < K; ++k) {
    const int64_t ka = IDX ? kidx[k] : k;
    const T* b = B + k * W;
    V bk[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) bk[v] = V::loadu(b + v * VS);
#pragma GCC unroll 32
    for (int r = 0; r < MR; ++r) {
      const V a(A[r * lda + ka]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] = at::vec::fmadd(a, bk[v], acc[r][v]);
    }
  }
  const V zero(T(0));
#pragma GCC unroll 32
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      V y = acc[r][v];
      if (relu) y = at::vec::maximum(y, zero);
      y.store(C + r * ldc + v * VS);
    }
}

template <typename T, int NV, bool IDX>
void run_panel(const T* A, int64_t lda, const int32_t* kidx, int64_t M, int64_t K, const T* B, T* C, int64_t ldc,
               const T* bias, int64_t nb, bool relu) {
  constexpr int MR = Cfg<T>::ACC / NV;
  int64_t m = 0;
  for (; m + MR <= M; m += MR) ukernel<T, MR, NV, IDX>(A + m * lda, lda, kidx, K, B, C + m * ldc, ldc, bias, nb, relu);
  for (; m + 4 <= M; m += 4) ukernel<T, 4, NV, IDX>(A + m * lda, lda, kidx, K, B, C + m * ldc, ldc, bias, nb, relu);
  for (; m + 2 <= M; m += 2) ukernel<T, 2, NV, IDX>(A + m * lda, lda, kidx, K, B, C + m * ldc, ldc, bias, nb, relu);
  for (; m < M; ++m) ukernel<T, 1, NV, IDX>(A + m * lda, lda, kidx, K, B, C + m * ldc, ldc, bias, nb, relu);
}

// C[M, 0:rup(N, G)] = act(A[M, K] * Bp + bias[0:N]) (the padded columns get 0).  Rows of M are walked in
// chunks so that a chunk of A stays in L1/L2 while every panel of B passes over it.
template <typename T, bool IDX>
void gemm(const T* A, int64_t lda, const int32_t* kidx, int64_t M, int64_t K, const T* Bp, int64_t N, T* C,
          int64_t ldc, const T* bias, bool relu) {
  using Cf = Cfg<T>;
  const int64_t Np = rup(N, Cf::G);
  const int64_t mc = std::max<int64_t>(48, ((16 << 10) / std::max<int64_t>(1, K * (int64_t)sizeof(T))) / 24 * 24);
  for (int64_t m0 = 0; m0 < M; m0 += mc) {
    const int64_t mm = std::min(mc, M - m0);
    const T* a = IDX ? A + m0 * lda : A + m0 * lda;
    for (int64_t j = 0; j < Np; j += Cf::P) {
      const T* B = Bp + j * K;
      if (Np - j >= Cf::P) {
        run_panel<T, Cf::NVF, IDX>(a, lda, kidx, mm, K, B, C + m0 * ldc + j, ldc, bias + j, N - j, relu);
      } else {
        run_panel<T, Cf::NVH, IDX>(a, lda, kidx, mm, K, B, C + m0 * ldc + j, ldc, bias + j, N - j, relu);
      }
    }
  }
}

// Depthwise 3x3 (padding 1, stride s) over an NHWC tile whose first row is image row iy0 (rows_in rows of
// W pixels, channel stride ldi), output rows [oy0, oy1) x Wo into `out` (channel stride ldo); channels
// [0, Cp) with Cp a multiple of the vector size; AVG: count_include_pad average (sum / 9) instead.
template <typename T, bool AVG>
void dw3x3(const T* in, int64_t ldi, int64_t iy0, int64_t iy1, int64_t W, int64_t s, const T* wd, const T* bias,
           int64_t C, int64_t Cp, T* out, int64_t ldo, int64_t oy0, int64_t oy1, int64_t Wo) {
  using V = Vectorized<T>;
  constexpr int VS = V::size();
  const T* taps[9];
  int64_t woff[9];
  const V nine(T(9));
  for (int64_t oy = oy0; oy < oy1; ++oy) {
    for (int64_t ox = 0; ox < Wo; ++ox) {
      int nt = 0;
      for (int ky = 0; ky < 3; ++ky) {
        const int64_t iy = oy * s - 1 + ky;
        if (iy < iy0 || iy >= iy1) continue;
        for (int kx = 0; kx < 3; ++kx) {
          const int64_t ix = ox * s - 1 + kx;
          if (ix < 0 || ix >= W) continue;
          taps[nt] = in + ((iy - iy0) * W + ix) * ldi;
          woff[nt] = (ky * 3 + kx) * Cp;
          ++nt;
        }
      }
      T* o = out + ((oy - oy0) * Wo + ox) * ldo;
      int64_t c = 0;
      for (; c + 2 * VS <= Cp; c += 2 * VS) {
        V a0 = AVG ? V(T(0)) : load_part(bias + c, C - c);
        V a1 = AVG ? V(T(0)) : load_part(bias + c + VS, C - c - VS);
        for (int t = 0; t < nt; ++t) {
          if (AVG) {
            a0 = a0 + V::loadu(taps[t] + c);
            a1 = a1 + V::loadu(taps[t] + c + VS);
          } else {
            a0 = at::vec::fmadd(V::loadu(taps[t] + c), V::loadu(wd + woff[t] + c), a0);
            a1 = at::vec::fmadd(V::loadu(taps[t] + c + VS), V::loadu(wd + woff[t] + c + VS), a1);
          }
        }
        if (AVG) {
          a0 = a0 / nine;
          a1 = a1 / nine;
        }
        a0.store(o + c);
        a1.store(o + c + VS);
      }
      for (; c < Cp; c += VS) {
        V a0 = AVG ? V(T(0)) : load_part(bias + c, C - c);
        for (int t = 0; t < nt; ++t) {
          if (AVG) {
            a0 = a0 + V::loadu(taps[t] + c);
          } else {
            a0 = at::vec::fmadd(V::loadu(taps[t] + c), V::loadu(wd + woff[t] + c), a0);
          }
        }
        if (AVG) a0 = a0 / nine;
        a0.store(o + c);
      }
    }
  }
}

// Copy image rows [r0, r1) of channels [c0, c0 + C) of x (image `img`) into an NHWC tile with channel stride
// ld, zeroing channels [C, ld).
template <typename T>
void gather(const UnitArgs& a, const T* x, int64_t img, int64_t r0, int64_t r1, int64_t c0, int64_t C, T* tile,
            int64_t ld) {
  const int64_t H = a.h, W = a.w, Ct = a.c_in;
  const int64_t npix = (r1 - r0) * W;
  if (a.channels_last) {
    const T* src = x + ((img * H + r0) * W) * Ct + c0;
    for (int64_t p = 0; p < npix; ++p) {
      std::memcpy(tile + p * ld, src + p * Ct, C * sizeof(T));
      if (ld > C) std::memset(tile + p * ld + C, 0, (ld - C) * sizeof(T));
    }
  } else {
    const T* src = x + (img * Ct + c0) * H * W + r0 * W;
    // Blocks of 8 channels x pixels: reads along rows, writes short runs.
    for (int64_t c = 0; c < C; ++c) {
      const T* s = src + c * H * W;
      for (int64_t p = 0; p < npix; ++p) tile[p * ld + c] = s[p];
    }
    if (ld > C)
      for (int64_t p = 0; p < npix; ++p) std::memset(tile + p * ld + C, 0, (ld - C) * sizeof(T));
  }
}

template <typename T>
struct Plan {
  int64_t k1, lda, ldm, ldo, th, nstrips;
  size_t bytes_a, bytes_m, bytes_d, bytes_o, bytes_d1, bytes_o1;
};

template <typename T>
Plan<T> make_plan(const UnitArgs& a) {
  using Cf = Cfg<T>;
  Plan<T> p{};
  const int64_t G = Cf::G, s = a.stride, W = a.w, Wo = a.wo;
  const bool v2 = a.kind == 2;
  p.k1 = v2 && s == 1 ? a.c_in / 2 : a.c_in;
  p.lda = rup(p.k1, G);
  if (v2) {
    p.ldm = rup(a.mid, G);
    p.ldo = rup(a.bf, G);
  } else {
    const int64_t m1 = a.mid / a.g1, n3 = (a.c_out - (s == 2 ? a.c_in : 0)) / a.g3;
    p.ldm = rup((a.g1 - 1) * m1 + rup(m1, G), G);
    p.ldo = rup((a.g3 - 1) * n3 + rup(n3, G), G);
  }
  const bool extra = s == 2;  // V2: branch1's dw + GEMM tiles; V1: the pooled tile
  const int64_t per_in_row = W * (p.lda + p.ldm);
  const int64_t per_out_row = Wo * (p.ldm + p.ldo + (extra ? p.lda + (v2 ? p.ldo : 0) : 0));
  const int64_t budget = (640 << 10) / (int64_t)sizeof(T);
  int64_t th = std::max<int64_t>(1, (budget - 2 * per_in_row) / std::max<int64_t>(1, s * per_in_row + per_out_row));
  th = std::min(th, a.ho);
  int64_t ns = (a.ho + th - 1) / th;
  if (a.n * ns < a.threads) ns = std::min<int64_t>(a.ho, (a.threads + a.n - 1) / a.n);
  p.nstrips = ns;
  p.th = (a.ho + ns - 1) / ns;
  const int64_t rin = std::min<int64_t>(a.h, p.th * s + 2);
  auto al = [](size_t b) { return (b + 63) / 64 * 64; };
  p.bytes_a = al(rin * W * p.lda * sizeof(T));
  p.bytes_m = al(rin * W * p.ldm * sizeof(T));
  p.bytes_d = al(p.th * Wo * p.ldm * sizeof(T));
  p.bytes_o = al(p.th * Wo * p.ldo * sizeof(T));
  p.bytes_d1 = extra ? al(p.th * Wo * p.lda * sizeof(T)) : 0;
  p.bytes_o1 = extra && v2 ? al(p.th * Wo * p.ldo * sizeof(T)) : 0;
  return p;
}

// out pixel tile writers -------------------------------------------------------------------------------

// out[:, 2i] = lo[i], out[:, 2i + 1] = hi[i] for i < bf, pixels [p0, p0 + np) of image img; lo / hi are
// NHWC tiles (channel strides ldl / ldh; lo may be x itself for a stride-1 unit: ldl = C, lo_img_offset).
template <typename T>
void write_interleaved(const UnitArgs& a, T* out, int64_t img, int64_t p0, int64_t np, const T* lo, int64_t ldl,
                       bool lo_is_x_nchw, const T* hi, int64_t ldh) {
  using V = Vectorized<T>;
  constexpr int VS = V::size();
  const int64_t bf = a.bf, C = 2 * bf, HWo = a.ho * a.wo;
  if (a.channels_last) {
    for (int64_t p = 0; p < np; ++p) {
      T* o = out + (img * HWo + p0 + p) * C;
      const T* l = lo + p * ldl;
      const T* h = hi + p * ldh;
      int64_t i = 0;
      for (; i + VS <= bf; i += VS) {
        auto r = at::vec::interleave2(V::loadu(l + i), V::loadu(h + i));
        r.first.store(o + 2 * i);
        r.second.store(o + 2 * i + VS);
      }
      for (; i < bf; ++i) {
        o[2 * i] = l[i];
        o[2 * i + 1] = h[i];
      }
    }
  } else {
    T* ob = out + img * C * HWo + p0;
    for (int64_t i = 0; i < bf; ++i) {
      T* o0 = ob + (2 * i) * HWo;
      T* o1 = ob + (2 * i + 1) * HWo;
      if (lo_is_x_nchw) {
        std::memcpy(o0, lo + i * HWo, np * sizeof(T));  // lo = x + img offset + p0 (same plane size: stride 1)
      } else {
        for (int64_t p = 0; p < np; ++p) o0[p] = lo[p * ldl + i];
      }
      for (int64_t p = 0; p < np; ++p) o1[p] = hi[p * ldh + i];
    }
  }
}

template <typename T>
void task_v2(const UnitArgs& a, const Plan<T>& pl, int64_t img, int64_t oy0, int64_t oy1) {
  const T* x = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  const int64_t s = a.stride, H = a.h, W = a.w, Wo = a.wo;
  const int64_t ir0 = std::max<int64_t>(0, oy0 * s - 1), ir1 = std::min<int64_t>(H, (oy1 - 1) * s + 2);
  char* base = static_cast<char*>(thread_scratch(pl.bytes_a + pl.bytes_m + pl.bytes_d + pl.bytes_o + pl.bytes_d1 +
                                                 pl.bytes_o1));
  T* A = reinterpret_cast<T*>(base);
  T* M1 = reinterpret_cast<T*>(base + pl.bytes_a);
  T* D = reinterpret_cast<T*>(base + pl.bytes_a + pl.bytes_m);
  T* O = reinterpret_cast<T*>(base + pl.bytes_a + pl.bytes_m + pl.bytes_d);
  T* D1 = reinterpret_cast<T*>(base + pl.bytes_a + pl.bytes_m + pl.bytes_d + pl.bytes_o);
  T* O1 = reinterpret_cast<T*>(base + pl.bytes_a + pl.bytes_m + pl.bytes_d + pl.bytes_o + pl.bytes_d1);
  const int64_t k1 = pl.k1;
  // Stride 1, channels_last: the first GEMM reads x's upper half in place (no tile copy).
  const bool direct = s == 1 && a.channels_last;
  const T* A1 = direct ? x + ((img * H + ir0) * W) * a.c_in + a.bf : A;
  const int64_t lda1 = direct ? a.c_in : pl.lda;
  if (!direct) gather<T>(a, x, img, ir0, ir1, s == 1 ? a.bf : 0, k1, A, pl.lda);
  const int64_t min_ = (ir1 - ir0) * W, mout = (oy1 - oy0) * Wo;
  gemm<T, false>(A1, lda1, nullptr, min_, k1, static_cast<const T*>(a.w1), a.mid, M1, pl.ldm,
                 static_cast<const T*>(a.b1), true);
  dw3x3<T, false>(M1, pl.ldm, ir0, ir1, W, s, static_cast<const T*>(a.wd), static_cast<const T*>(a.bd), a.mid,
                  rup(a.mid, Cfg<T>::G), D, pl.ldm, oy0, oy1, Wo);
  gemm<T, false>(D, pl.ldm, nullptr, mout, a.mid, static_cast<const T*>(a.w2), a.bf, O, pl.ldo,
                 static_cast<const T*>(a.b2), true);
  const int64_t p0 = oy0 * Wo;
  if (s == 1) {
    if (a.channels_last) {
      write_interleaved<T>(a, out, img, p0, mout, x + (img * H * W + p0) * a.c_in, a.c_in, false, O, pl.ldo);
    } else {
      write_interleaved<T>(a, out, img, p0, mout, x + img * a.c_in * H * W + p0, 0, true, O, pl.ldo);
    }
  } else {
    dw3x3<T, false>(A, pl.lda, ir0, ir1, W, s, static_cast<const T*>(a.wd1), static_cast<const T*>(a.bd1), a.c_in,
                    pl.lda, D1, pl.lda, oy0, oy1, Wo);
    gemm<T, false>(D1, pl.lda, nullptr, mout, a.c_in, static_cast<const T*>(a.wp1), a.bf, O1, pl.ldo,
                   static_cast<const T*>(a.bp1), true);
    write_interleaved<T>(a, out, img, p0, mout, O1, pl.ldo, false, O, pl.ldo);
  }
}

template <typename T>
void task_v1(const UnitArgs& a, const Plan<T>& pl, int64_t img, int64_t oy0, int64_t oy1) {
  using V = Vectorized<T>;
  constexpr int VS = V::size();
  const T* x = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  const int64_t s = a.stride, H = a.h, W = a.w, Wo = a.wo, G = Cfg<T>::G;
  const int64_t ir0 = std::max<int64_t>(0, oy0 * s - 1), ir1 = std::min<int64_t>(H, (oy1 - 1) * s + 2);
  char* base = static_cast<char*>(thread_scratch(pl.bytes_a + pl.bytes_m + pl.bytes_d + pl.bytes_o + pl.bytes_d1));
  T* A = reinterpret_cast<T*>(base);
  T* M1 = reinterpret_cast<T*>(base + pl.bytes_a);
  T* D = reinterpret_cast<T*>(base + pl.bytes_a + pl.bytes_m);
  T* O = reinterpret_cast<T*>(base + pl.bytes_a + pl.bytes_m + pl.bytes_d);
  T* Pool = reinterpret_cast<T*>(base + pl.bytes_a + pl.bytes_m + pl.bytes_d + pl.bytes_o);
  const int64_t cin = a.c_in, mid = a.mid;
  const int64_t br = a.c_out - (s == 2 ? cin : 0);
  // Stride 1, channels_last: the first GEMM reads x in place (no tile copy).
  const bool direct = s == 1 && a.channels_last;
  const T* A1 = direct ? x + ((img * H + ir0) * W) * cin : A;
  const int64_t lda1 = direct ? cin : pl.lda;
  if (!direct) gather<T>(a, x, img, ir0, ir1, 0, cin, A, pl.lda);
  const int64_t min_ = (ir1 - ir0) * W, mout = (oy1 - oy0) * Wo;
  // conv1: group g reads input channels [g*k1g, (g+1)*k1g), writes mid channels [g*m1, (g+1)*m1) (each group's
  // padded panel spills into the next group's columns, which the next group then overwrites).
  const int64_t k1g = cin / a.g1, m1 = mid / a.g1, m1p = rup(m1, G);
  for (int64_t g = 0; g < a.g1; ++g)
    gemm<T, false>(A1 + g * k1g, lda1, nullptr, min_, k1g, static_cast<const T*>(a.w1) + g * k1g * m1p, m1,
                   M1 + g * m1, pl.ldm, static_cast<const T*>(a.b1) + g * m1, true);
  dw3x3<T, false>(M1, pl.ldm, ir0, ir1, W, s, static_cast<const T*>(a.wd), static_cast<const T*>(a.bd), mid,
                  rup(mid, G), D, pl.ldm, oy0, oy1, Wo);
  const int64_t k3g = mid / a.g3, n3 = br / a.g3, n3p = rup(n3, G);
  for (int64_t g = 0; g < a.g3; ++g) {
    const T* w = static_cast<const T*>(a.w2) + g * k3g * n3p;
    const T* b = static_cast<const T*>(a.b2) + g * n3;
    if (a.g3 > 1) {
      gemm<T, true>(D, pl.ldm, a.kidx + g * k3g, mout, k3g, w, n3, O + g * n3, pl.ldo, b, s == 2);
    } else {
      gemm<T, false>(D, pl.ldm, nullptr, mout, k3g, w, n3, O + g * n3, pl.ldo, b, s == 2);
    }
  }
  const int64_t p0 = oy0 * Wo, HWo = a.ho * Wo, C = a.c_out;
  if (s == 1) {
    const V zero(T(0));
    if (a.channels_last) {
      for (int64_t p = 0; p < mout; ++p) {
        const T* xi = x + (img * HWo + p0 + p) * C;
        const T* y = O + p * pl.ldo;
        T* o = out + (img * HWo + p0 + p) * C;
        int64_t c = 0;
        for (; c + VS <= C; c += VS) at::vec::maximum(V::loadu(xi + c) + V::loadu(y + c), zero).store(o + c);
        for (; c < C; ++c) o[c] = std::max(xi[c] + y[c], T(0));
      }
    } else {
      for (int64_t c = 0; c < C; ++c) {
        const T* xi = x + (img * C + c) * HWo + p0;
        T* o = out + (img * C + c) * HWo + p0;
        for (int64_t p = 0; p < mout; ++p) o[p] = std::max(xi[p] + O[p * pl.ldo + c], T(0));
      }
    }
  } else {
    dw3x3<T, true>(A, pl.lda, ir0, ir1, W, s, nullptr, nullptr, cin, pl.lda, Pool, pl.lda, oy0, oy1, Wo);
    if (a.channels_last) {
      for (int64_t p = 0; p < mout; ++p) {
        T* o = out + (img * HWo + p0 + p) * C;
        std::memcpy(o, Pool + p * pl.lda, cin * sizeof(T));
        std::memcpy(o + cin, O + p * pl.ldo, br * sizeof(T));
      }
    } else {
      for (int64_t c = 0; c < C; ++c) {
        T* o = out + (img * C + c) * HWo + p0;
        if (c < cin) {
          for (int64_t p = 0; p < mout; ++p) o[p] = Pool[p * pl.lda + c];
        } else {
          for (int64_t p = 0; p < mout; ++p) o[p] = O[p * pl.ldo + c - cin];
        }
      }
    }
  }
}

template <typename T>
void run_unit(const UnitArgs& a) {
  const Plan<T> pl = make_plan<T>(a);
  const int64_t ns = pl.nstrips, th = pl.th;
  at::parallel_for(0, a.n * ns, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t img = t / ns, strip = t % ns;
      const int64_t oy0 = strip * th, oy1 = std::min(a.ho, oy0 + th);
      if (oy0 >= oy1) continue;
      if (a.kind == 2) {
        task_v2<T>(a, pl, img, oy0, oy1);
      } else {
        task_v1<T>(a, pl, img, oy0, oy1);
      }
    }
  });
}

void unit_kernel(const UnitArgs& a) {
  if (a.is_double) {
    run_unit<double>(a);
  } else {
    run_unit<float>(a);
  }
}

}  // namespace
}  // namespace CPU_CAPABILITY

SK_REGISTER_KERNEL(unit_table, CPU_CAPABILITY::unit_kernel);

}  // namespace shufflekern::cpu
