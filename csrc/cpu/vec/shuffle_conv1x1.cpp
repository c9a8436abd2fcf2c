// shuffle_conv1x1 kernels (forward and grad of the input), compiled once per CPU ISA.
//
// Both are grouped GEMMs whose operands are addressed through small index tables, so the channel
// shuffle is folded into the indexing and x is never copied (csrc/shuffle_conv1x1.h has the maths):
//   C(i, n) = bias + sum_j A(i, j) * B(j, n),  A(i, j) = a[i*lda + acol[j]],  B(j, n) = brow[j][n],
//   C(i, n) = crows[i][n].
// One register-blocked microkernel (MR rows x NV vectors of accumulators, A broadcast, B loaded as
// vectors, accumulation in float for bf16) serves all four cases:
//   NCHW forward       per (image, group): C = y rows,     A = packed weight, B = x rows (gathered)
//   NCHW grad input    per (image, group): C = gx rows (scattered), A = packed weight^T, B = grad rows
//   NHWC forward       per (pixel tile, group): C = y pixels, A = x pixels (gathered columns), B = weight^T
//   NHWC grad input    per (pixel tile, group): C = a small tile, then copied run by run into gx

// ATen's vec headers trip these under `#pragma GCC target`; the code paths never cross ISAs.
#pragma GCC diagnostic ignored "-Wpsabi"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>

#include "cpu/dispatch.h"
#include "cpu/scratch.h"
#include "cpu/shuffle_conv1x1_kernel.h"

namespace shufflekern::cpu {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, c10::BFloat16>, float, T>;
template <typename T>
using AVec = Vectorized<acc_t<T>>;

#if defined(CPU_CAPABILITY_AVX512)
constexpr int kVecRegs = 32;
constexpr int kMaxNV = 4;
#else
// Three column vectors (4 x 3 accumulators): a 20-column operand (ShuffleNetV1 g=3 stage 2) is then one
// tile of 24 instead of 16 + 8 half-masked; 10-15% faster on those shapes, the same elsewhere (AVX2 EPYC).
constexpr int kVecRegs = 16;
constexpr int kMaxNV = 3;
#endif
constexpr int kMaxMR = 12;
// Accumulators + B vectors + one broadcast must fit the register file.
constexpr int mr_max(int nv) {
  const int r = (kVecRegs - nv - 1) / nv;
  return r > kMaxMR ? kMaxMR : r;
}

template <typename T>
inline AVec<T> vload(const T* p, int64_t count) {
  constexpr int L = AVec<T>::size();
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    if (count >= L) {
      Vectorized<float> v;
      at::vec::load_to_float(p, v);
      return v;
    }
    float tmp[L] = {};
    for (int64_t i = 0; i < count; ++i) tmp[i] = static_cast<float>(p[i]);
    return Vectorized<float>::loadu(tmp);
  } else {
    return Vectorized<T>::loadu(p, count);
  }
}

template <typename T>
inline void vstore(T* p, const AVec<T>& v, int64_t count) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    constexpr int L = AVec<T>::size();
    float tmp[L];
    v.store(tmp);
    for (int64_t i = 0; i < count; ++i) p[i] = c10::BFloat16(tmp[i]);
  } else {
    v.store(p, count);
  }
}

template <typename T>
struct Gemm {
  int64_t M, N, K;
  const T* a;
  const int64_t* arow;     // [M]: A(i, j) = a[arow[i] + acol[j]]
  const int64_t* acol;     // [K]
  const T* const* brow;    // [K]
  int64_t boff;            // column offset added to every B row
  T* const* crows;         // [M]
  int64_t coff;
  const acc_t<T>* bias_row;  // [M] or null: added to row i
  const acc_t<T>* bias_col;  // [N rounded up to a vector] or null: added to column n
  // B rows may be read up to N rounded up to 16 (the packed weights' zero padding): the K loop then loads
  // whole vectors even when the last C vector is partial (masked loads are slow on AMD).
  bool b_padded = false;
  const char* const* pf_lines = nullptr;  // lines of the caller's next task, one per K step
  int64_t pf_count = 0;
};

// Cache lines of the caller's next task, prefetched (into L2: prefetcht1) one per K step by the microkernel
// working on the current tile (channels_last drivers: forward_nhwc, grad_input_nhwc, grad_weight_nhwc).
struct Prefetch {
  const char* const* rd = nullptr;
  int nrd = 0;
};

// C rows [i0, i0+MR) x columns [n0, n0+ncols), ncols in ((NV-1)*L, NV*L].
//
// fp32 on AVX-512 / AVX2: the microkernel in raw intrinsics (through the traits below).  GCC keeps an
// __m512 / __m256 accumulator array in registers, while an array of at::vec::Vectorized is also written
// back to the stack on every update.  On an AVX2 EPYC this cut the ShuffleNetV1 g=3 forward from 2.27 to
// 1.70 ms and grad_input from 2.44 to 1.96 ms per call (torch.profiler, training step).
#if defined(CPU_CAPABILITY_AVX512)
struct F32Simd {
  using V = __m512;
  using M = __mmask16;
  static constexpr int L = 16;
  static M lanes(int64_t n) { return n >= 16 ? M(0xFFFF) : M((1u << n) - 1); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V load(const float* p, M m) { return _mm512_maskz_loadu_ps(m, p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static void store(float* p, V v, M m) { _mm512_mask_storeu_ps(p, m, v); }
  static V set1(float v) { return _mm512_set1_ps(v); }
  static V zero() { return _mm512_setzero_ps(); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static float sum(V v) { return _mm512_reduce_add_ps(v); }
};
#define SK_F32_SIMD 1
#elif defined(CPU_CAPABILITY_AVX2)
struct F32Simd {
  using V = __m256;
  using M = __m256i;
  static constexpr int L = 8;
  static M lanes(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::min<int64_t>(n, 8))),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V load(const float* p, M m) { return _mm256_maskload_ps(p, m); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static void store(float* p, V v, M m) { _mm256_maskstore_ps(p, m, v); }
  static V set1(float v) { return _mm256_set1_ps(v); }
  static V zero() { return _mm256_setzero_ps(); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static float sum(V v) {
    const __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 h = _mm_add_ps(q, _mm_movehl_ps(q, q));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
  }
};
#define SK_F32_SIMD 1
#endif

#if defined(SK_F32_SIMD)
// MASK_C: the last column vector of C is partial.  MASK_B: so are B's rows there (B not padded), and the
// K loop loads them masked (slow on AMD: a 20-column, K = 80 forward in L2 ran at 60 GFLOP/s with masked
// B loads, 68 without; Zen 4, AVX-512, 1 thread).  A is
// read through one base pointer per row and one column offset per k, i.e. one addressing-mode operand
// per broadcast: no address arithmetic in the K loop.
template <int MR, int NV, bool MASK_B, bool MASK_C>
void micro_f32(const Gemm<float>& g, int64_t i0, int64_t n0, int64_t ncols, const Prefetch& pf) {
  using S = F32Simd;
  constexpr int L = S::L;
  const typename S::M lmask = S::lanes(ncols - (NV - 1) * L);
  auto load_last_b = [&](const float* p) { return MASK_B ? S::load(p, lmask) : S::load(p); };
  typename S::V acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      acc[r][v] = g.bias_row ? S::set1(g.bias_row[i0 + r]) : S::zero();
      if (g.bias_col) acc[r][v] = S::add(acc[r][v], S::load(g.bias_col + n0 + v * L));
    }
  }
  const float* ar[MR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) ar[r] = g.a + g.arow[i0 + r];
  const int64_t boff = g.boff + n0;
  const float* const* brow = g.brow;
  const int64_t* acol = g.acol;
  const int64_t K = g.K;
  const int npr = pf.nrd;
  for (int64_t j = 0; j < K; ++j) {
    if (j < npr) __builtin_prefetch(pf.rd[j], 0, 2);
    const float* b = brow[j] + boff;
    typename S::V bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV - 1; ++v) bv[v] = S::load(b + v * L);
    bv[NV - 1] = load_last_b(b + (NV - 1) * L);
    const int64_t col = acol[j];
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const typename S::V av = S::set1(ar[r][col]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = S::fmadd(av, bv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    float* c = g.crows[i0 + r] + g.coff + n0;
#pragma GCC unroll 4
    for (int v = 0; v < NV - 1; ++v) S::store(c + v * L, acc[r][v]);
    if (MASK_C) {
      S::store(c + (NV - 1) * L, acc[r][NV - 1], lmask);
    } else {
      S::store(c + (NV - 1) * L, acc[r][NV - 1]);
    }
  }
}

#if defined(CPU_CAPABILITY_AVX512)
// AVX-512 with at most 8 columns in the last vector: that vector in a ymm register.  Zen 4 runs two 256-bit
// FMAs or one 512-bit FMA a cycle, so a 20-column tile (ShuffleNetV1 g=3 stage 2: mg = 20, cg = 20) costs
// 1.5 instead of 2 zmm FMAs per row and k, a 40-column one 2.5 instead of 3.  MASK_C: fewer than 8 columns
// in the ymm vector; MASK_B: B's rows too (as micro_f32).
template <int MR, int NV, bool MASK_B, bool MASK_C>
void micro_f32_half(const Gemm<float>& g, int64_t i0, int64_t n0, int64_t ncols, const Prefetch& pf) {
  using S = F32Simd;
  constexpr int L = S::L;
  constexpr int NF = NV - 1;  // whole zmm vectors before the ymm one
  const __mmask8 hmask = static_cast<__mmask8>((1u << (ncols - NF * L)) - 1);
  auto load_hb = [&](const float* p) { return MASK_B ? _mm256_maskz_loadu_ps(hmask, p) : _mm256_loadu_ps(p); };
  __m512 acc[MR][NF > 0 ? NF : 1];
  __m256 acch[MR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NF; ++v) {
      acc[r][v] = g.bias_row ? S::set1(g.bias_row[i0 + r]) : S::zero();
      if (g.bias_col) acc[r][v] = S::add(acc[r][v], S::load(g.bias_col + n0 + v * L));
    }
    acch[r] = g.bias_row ? _mm256_set1_ps(g.bias_row[i0 + r]) : _mm256_setzero_ps();
    if (g.bias_col) acch[r] = _mm256_add_ps(acch[r], _mm256_loadu_ps(g.bias_col + n0 + NF * L));
  }
  const float* ar[MR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) ar[r] = g.a + g.arow[i0 + r];
  const int64_t boff = g.boff + n0;
  const float* const* brow = g.brow;
  const int64_t* acol = g.acol;
  const int64_t K = g.K;
  const int npr = pf.nrd;
  for (int64_t j = 0; j < K; ++j) {
    if (j < npr) __builtin_prefetch(pf.rd[j], 0, 2);
    const float* b = brow[j] + boff;
    __m512 bv[NF > 0 ? NF : 1];
#pragma GCC unroll 4
    for (int v = 0; v < NF; ++v) bv[v] = S::load(b + v * L);
    const __m256 bh = load_hb(b + NF * L);
    const int64_t col = acol[j];
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      if constexpr (NF > 0) {
        const __m512 av = S::set1(ar[r][col]);  // one broadcast load; its low half feeds the ymm FMA
#pragma GCC unroll 4
        for (int v = 0; v < NF; ++v) acc[r][v] = S::fmadd(av, bv[v], acc[r][v]);
        acch[r] = _mm256_fmadd_ps(_mm512_castps512_ps256(av), bh, acch[r]);
      } else {
        acch[r] = _mm256_fmadd_ps(_mm256_set1_ps(ar[r][col]), bh, acch[r]);
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    float* c = g.crows[i0 + r] + g.coff + n0;
#pragma GCC unroll 4
    for (int v = 0; v < NF; ++v) S::store(c + v * L, acc[r][v]);
    if (MASK_C) {
      _mm256_mask_storeu_ps(c + NF * L, hmask, acch[r]);
    } else {
      _mm256_storeu_ps(c + NF * L, acch[r]);
    }
  }
}
#endif
#endif

template <typename T, int MR, int NV>
void micro(const Gemm<T>& g, int64_t i0, int64_t n0, int64_t ncols, const Prefetch& pf) {
#if defined(SK_F32_SIMD)
  if constexpr (std::is_same_v<T, float>) {
    if (ncols == NV * F32Simd::L) {
      micro_f32<MR, NV, false, false>(g, i0, n0, ncols, pf);
    }
#if defined(CPU_CAPABILITY_AVX512)
    else if (ncols - (NV - 1) * F32Simd::L <= 8) {
      if (ncols - (NV - 1) * F32Simd::L == 8) {
        micro_f32_half<MR, NV, false, false>(g, i0, n0, ncols, pf);
      } else if (g.b_padded) {
        micro_f32_half<MR, NV, false, true>(g, i0, n0, ncols, pf);
      } else {
        micro_f32_half<MR, NV, true, true>(g, i0, n0, ncols, pf);
      }
    }
#endif
    else if (g.b_padded) {
      micro_f32<MR, NV, false, true>(g, i0, n0, ncols, pf);
    } else {
      micro_f32<MR, NV, true, true>(g, i0, n0, ncols, pf);
    }
    return;
  }
#endif
  using V = AVec<T>;
  using A = acc_t<T>;
  constexpr int L = V::size();
  const int64_t last = ncols - (NV - 1) * L;
  V acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      acc[r][v] = g.bias_row ? V(g.bias_row[i0 + r]) : V(A(0));
      if (g.bias_col) acc[r][v] = acc[r][v] + V::loadu(g.bias_col + n0 + v * L);
    }
  }
  int64_t ao[MR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) ao[r] = g.arow[i0 + r];
  const int64_t boff = g.boff + n0;
  for (int64_t j = 0; j < g.K; ++j) {
    const T* b = g.brow[j] + boff;
    V bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV - 1; ++v) bv[v] = vload<T>(b + v * L, L);
    bv[NV - 1] = vload<T>(b + (NV - 1) * L, last);
    const T* ac = g.a + g.acol[j];
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const V av(static_cast<A>(ac[ao[r]]));
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = at::vec::fmadd(av, bv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    T* c = g.crows[i0 + r] + g.coff + n0;
#pragma GCC unroll 4
    for (int v = 0; v < NV - 1; ++v) vstore<T>(c + v * L, acc[r][v], L);
    vstore<T>(c + (NV - 1) * L, acc[r][NV - 1], last);
  }
}

template <typename T>
using MicroFn = void (*)(const Gemm<T>&, int64_t, int64_t, int64_t, const Prefetch&);

template <typename T, int MR, int NV>
constexpr MicroFn<T> pick() {
  if constexpr (MR <= mr_max(NV)) {
    return &micro<T, MR, NV>;
  } else {
    return nullptr;
  }
}

template <typename T, int NV, int... R>
constexpr void fill_row(MicroFn<T>* row, std::integer_sequence<int, R...>) {
  ((row[R] = pick<T, R + 1, NV>()), ...);
}

template <typename T, int... N>
constexpr void fill_table(MicroFn<T> (*t)[kMaxMR], std::integer_sequence<int, N...>) {
  (fill_row<T, N + 1>(t[N], std::make_integer_sequence<int, kMaxMR>{}), ...);
}

template <typename T>
struct MicroTable {
  MicroFn<T> fn[kMaxNV][kMaxMR] = {};
  MicroTable() { fill_table<T>(fn, std::make_integer_sequence<int, kMaxNV>{}); }
};

// Splits n items into ceil(n / max) nearly equal parts; part t of `parts` starting at `done`.
inline int64_t balanced(int64_t remaining, int64_t parts_left) {
  return (remaining + parts_left - 1) / parts_left;
}

template <typename T>
void run_gemm(const Gemm<T>& g) {
  static const MicroTable<T> table;
  constexpr int L = AVec<T>::size();
  const int64_t nvec = (g.N + L - 1) / L;
  const int64_t ntiles = (nvec + kMaxNV - 1) / kMaxNV;
  Prefetch pf;
  int64_t cursor = 0;
  int64_t v0 = 0;
  for (int64_t t = 0; t < ntiles; ++t) {
    const int nv = static_cast<int>(balanced(nvec - v0, ntiles - t));
    const int64_t n0 = v0 * L;
    const int64_t ncols = std::min<int64_t>(nv * L, g.N - n0);
    const int64_t mr = mr_max(nv);
    const int64_t mtiles = (g.M + mr - 1) / mr;
    int64_t i0 = 0;
    for (int64_t s = 0; s < mtiles; ++s) {
      const int r = static_cast<int>(balanced(g.M - i0, mtiles - s));
      pf.rd = g.pf_lines + cursor;  // up to K lines a microkernel call; none once all are issued
      pf.nrd = static_cast<int>(std::min<int64_t>(g.K, g.pf_count - cursor));
      cursor += pf.nrd;
      table.fn[nv - 1][r - 1](g, i0, n0, ncols, pf);
      i0 += r;
    }
    v0 += nv;
  }
}

constexpr int64_t kPixelTile = 96;
constexpr int64_t kPrefetchBytes = int64_t(2) << 20;  // an A operand beyond L2 (1 MB a core on Zen 4)

// Columns of an NCHW image are split into chunks only when images x groups give too few tasks.
inline int64_t nchw_chunks(const SconvArgs& a, int64_t vec_len) {
  const int64_t tasks = a.n * a.groups;
  const int64_t want = 4 * static_cast<int64_t>(at::get_num_threads());
  if (tasks >= want) return 1;
  const int64_t max_chunks = std::max<int64_t>(1, a.hw / (4 * vec_len));
  return std::min<int64_t>(max_chunks, (want + tasks - 1) / tasks);
}

inline void fill_stride(int64_t* v, int64_t n, int64_t stride, int64_t start = 0) {
  for (int64_t i = 0; i < n; ++i) v[i] = start + i * stride;
}

// Scratch layout shared by the drivers: arow [M], acol [K], brow [K], crows [M], then optional data.
template <typename T>
struct Tables {
  int64_t* arow;
  int64_t* acol;
  const T** brow;
  T** crows;
  void* extra;
  Tables(Scratch& s, int64_t m, int64_t k) {
    auto* base = s.as<char>();
    arow = reinterpret_cast<int64_t*>(base);
    acol = arow + m;
    brow = reinterpret_cast<const T**>(acol + k);
    crows = reinterpret_cast<T**>(reinterpret_cast<void**>(acol + k) + k);
    extra = crows + m;
  }
  static size_t bytes(int64_t m, int64_t k) { return (2 * m + 2 * k) * 8; }
};

template <typename T>
void forward_nchw(const SconvArgs& a) {
  constexpr int64_t L = AVec<T>::size();
  const T* x = static_cast<const T*>(a.in);
  T* y = static_cast<T*>(a.out);
  const T* wp = static_cast<const T*>(a.wp);
  const auto* bias = static_cast<const acc_t<T>*>(a.bias);
  const int64_t chunks = nchw_chunks(a, L);
  const int64_t chunk = (a.hw + chunks - 1) / chunks;
  at::parallel_for(0, a.n * a.groups * chunks, 1, [&](int64_t begin, int64_t end) {
    Scratch s(Tables<T>::bytes(a.mg, a.cg), "shuffle_conv1x1");
    Tables<T> t(s, a.mg, a.cg);
    fill_stride(t.arow, a.mg, a.cgp);
    fill_stride(t.acol, a.cg, 1);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t ch = task % chunks;
      const int64_t k = (task / chunks) % a.groups;
      const int64_t img = task / (chunks * a.groups);
      const int64_t hw0 = ch * chunk;
      const int64_t hw1 = std::min(a.hw, hw0 + chunk);
      if (hw0 >= hw1) continue;
      const T* xi = x + img * a.c_in * a.hw;
      T* yi = y + img * a.c_out * a.hw;
      for (int64_t j = 0; j < a.cg; ++j) t.brow[j] = xi + a.src[k * a.cg + j] * a.hw;
      for (int64_t m = 0; m < a.mg; ++m) t.crows[m] = yi + (k * a.mg + m) * a.hw;
      run_gemm<T>({a.mg, hw1 - hw0, a.cg, wp + k * a.mg * a.cgp, t.arow, t.acol, t.brow, hw0, t.crows, hw0,
                   bias ? bias + k * a.mgp : nullptr, nullptr});
    }
  });
}

// channels_last forward.  Tasks are pixel tiles (and parts of the groups when tiles alone give too few
// tasks); a task runs every group of its tile, one GEMM each.  A tile's x and y pixels are two contiguous
// blocks, sized together to ~128 KB (an eighth of a Zen 4 core's L2); when x is beyond L2 the next tile's
// blocks are prefetched into L2 during this tile's GEMMs, one line per K step (Gemm::pf_lines).  The fused
// shuffle makes each group read a few channels from all over every pixel's row, a pattern the hardware
// prefetchers follow badly; the next tile's blocks are plain contiguous memory.  Against oneDNN's grouped
// conv on the unshuffled input (2 providers interleaved, 150 rounds, 4 runs, Zen 4 AVX-512, 2 threads), the
// old 96-pixel (tile, group) tasks without it read 0.87-0.96x (g=8 384->96 @28, 8 images), 1.14-1.17x
// (g=3 240->60 @28) and 0.97-0.99x (g=3 120->480 @14); tiles sized this way with the prefetch 1.15-1.49x,
// 1.12-1.24x and 1.01-1.05x (64, 96 and 48 pixels).
constexpr int64_t kTileBytes = 128 << 10;

// Whether the microkernels for T issue Gemm::pf_lines (the fp32 SIMD ones do; the portable one does not).
template <typename T>
constexpr bool kPrefetches =
#if defined(SK_F32_SIMD)
    std::is_same_v<T, float>;
#else
    false;
#endif

// Appends the 64-byte lines of [p, q) to lines[n...] (the prefetch lists of the channels_last drivers).
inline void append_lines(const char** lines, int64_t& n, const void* p, const void* q) {
  for (auto l = reinterpret_cast<uintptr_t>(p) & ~uintptr_t(63); l < reinterpret_cast<uintptr_t>(q); l += 64)
    lines[n++] = reinterpret_cast<const char*>(l);
}

// The pixel tiles of the channels_last forward and grad_input.  `read_channels`: channels of the tensor the
// GEMMs read (x, grad_out), whose size decides the prefetch; `prefetches`: kPrefetches<T>.
struct NhwcTiles {
  int64_t pixels, pt, tiles, gparts, max_lines;
  bool ahead;
  NhwcTiles(const SconvArgs& a, int64_t esize, int64_t read_channels, bool prefetches) {
    pixels = a.n * a.hw;
    const int64_t pixel_bytes = (a.c_in + a.c_out) * esize;
    pt = std::clamp<int64_t>(kTileBytes / pixel_bytes / 16 * 16, 16, kPixelTile);
    tiles = (pixels + pt - 1) / pt;
    const int64_t want = 4 * static_cast<int64_t>(at::get_num_threads());
    gparts = tiles >= want ? 1 : std::min(a.groups, (want + tiles - 1) / tiles);
    ahead = prefetches && gparts == 1 && pixels * read_channels * esize > kPrefetchBytes;
    max_lines = ahead ? pt * pixel_bytes / 64 + 4 : 0;
  }
  int64_t tasks() const { return tiles * gparts; }
  // Task `task`: pixels [p0, p0 + np), groups [k0, k1).
  void task(const SconvArgs& a, int64_t task, int64_t& p0, int64_t& np, int64_t& k0, int64_t& k1) const {
    const int64_t part = task % gparts;
    p0 = task / gparts * pt;
    np = std::min(pt, pixels - p0);
    k0 = part * a.groups / gparts;
    k1 = (part + 1) * a.groups / gparts;
  }
};

// The lines of the next tile's two blocks (u: cu channels a pixel, v: cv), handed to this tile's GEMMs in
// equal shares.
struct NextTileLines {
  const char** lines;
  int64_t n = 0, done = 0;
  template <typename T>
  void plan(const NhwcTiles& nt, bool has_next, int64_t p0, int64_t np, const T* u, int64_t cu, const T* v,
            int64_t cv) {
    n = done = 0;
    if (!nt.ahead || !has_next) return;
    const int64_t q0 = p0 + np, q1 = std::min(nt.pixels, q0 + nt.pt);
    append_lines(lines, n, u + q0 * cu, u + q1 * cu);
    append_lines(lines, n, v + q0 * cv, v + q1 * cv);
  }
  template <typename T>
  void share(Gemm<T>& g, int64_t gemms_left) {
    if (done >= n) return;
    g.pf_lines = lines + done;
    g.pf_count = (n - done + gemms_left - 1) / gemms_left;
    done += g.pf_count;
  }
};

template <typename T>
void forward_nhwc(const SconvArgs& a) {
  const T* x = static_cast<const T*>(a.in);
  T* y = static_cast<T*>(a.out);
  const T* wpt = static_cast<const T*>(a.wpt);
  const auto* bias = static_cast<const acc_t<T>*>(a.bias);
  const NhwcTiles nt(a, sizeof(T), a.c_in, kPrefetches<T>);
  at::parallel_for(0, nt.tasks(), 1, [&](int64_t begin, int64_t end) {
    Scratch s(Tables<T>::bytes(nt.pt, a.cg * a.groups) + nt.max_lines * sizeof(const char*), "shuffle_conv1x1");
    Tables<T> t(s, nt.pt, a.cg * a.groups);
    NextTileLines next{static_cast<const char**>(t.extra)};
    fill_stride(t.arow, nt.pt, a.c_in);
    for (int64_t j = 0; j < a.cg * a.groups; ++j) t.brow[j] = wpt + j * a.mgp;  // group k: brow + k * cg
    for (int64_t task = begin; task < end; ++task) {
      int64_t p0, np, k0, k1;
      nt.task(a, task, p0, np, k0, k1);
      for (int64_t r = 0; r < np; ++r) t.crows[r] = y + (p0 + r) * a.c_out;  // group k: + k * mg (coff)
      next.plan(nt, task + 1 < end, p0, np, x, a.c_in, y, a.c_out);
      for (int64_t k = k0; k < k1; ++k) {
        Gemm<T> g{np, a.mg, a.cg, x + p0 * a.c_in, t.arow, a.src + k * a.cg, t.brow + k * a.cg, 0, t.crows,
                  k * a.mg, nullptr, bias ? bias + k * a.mgp : nullptr};
        g.b_padded = true;  // wpt rows: mgp >= mg rounded up to 16
        next.share(g, k1 - k);
        run_gemm<T>(g);
      }
    }
  });
}

// grad_x[src(j')] = sum_m wp[k][m][j'] * grad_y[k*mg + m]; every x channel belongs to exactly one
// (group, j'), so the rows written are disjoint.
template <typename T>
void grad_input_nchw(const SconvArgs& a) {
  constexpr int64_t L = AVec<T>::size();
  const T* gy = static_cast<const T*>(a.in);
  T* gx = static_cast<T*>(a.out);
  const T* wpt = static_cast<const T*>(a.wpt);
  const int64_t chunks = nchw_chunks(a, L);
  const int64_t chunk = (a.hw + chunks - 1) / chunks;
  at::parallel_for(0, a.n * a.groups * chunks, 1, [&](int64_t begin, int64_t end) {
    Scratch s(Tables<T>::bytes(a.cg, a.mg), "shuffle_conv1x1");
    Tables<T> t(s, a.cg, a.mg);
    fill_stride(t.arow, a.cg, a.mgp);
    fill_stride(t.acol, a.mg, 1);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t ch = task % chunks;
      const int64_t k = (task / chunks) % a.groups;
      const int64_t img = task / (chunks * a.groups);
      const int64_t hw0 = ch * chunk;
      const int64_t hw1 = std::min(a.hw, hw0 + chunk);
      if (hw0 >= hw1) continue;
      const T* gyi = gy + img * a.c_out * a.hw;
      T* gxi = gx + img * a.c_in * a.hw;
      for (int64_t m = 0; m < a.mg; ++m) t.brow[m] = gyi + (k * a.mg + m) * a.hw;
      for (int64_t j = 0; j < a.cg; ++j) t.crows[j] = gxi + a.src[k * a.cg + j] * a.hw;
      run_gemm<T>({a.cg, hw1 - hw0, a.mg, wpt + k * a.cg * a.mgp, t.arow, t.acol, t.brow, hw0, t.crows, hw0,
                   nullptr, nullptr});
    }
  });
}

// Runs are short (C/(groups*sg) channels, often < 16): a call to memcpy each would cost more than the GEMM.
template <typename T>
inline void copy_run(T* dst, const T* src, int64_t len) {
#if defined(SK_F32_SIMD)
  if constexpr (std::is_same_v<T, float>) {
    using S = F32Simd;
    for (; len > 0; len -= S::L, src += S::L, dst += S::L) {
      const typename S::M mk = S::lanes(len);
      S::store(dst, S::load(src, mk), mk);
    }
    return;
  }
#endif
  for (int64_t i = 0; i < len; ++i) dst[i] = src[i];
}

// channels_last grad_input: tiles and the next tile's prefetch as forward_nhwc (there the blocks are grad_out
// and grad_x).
template <typename T>
void grad_input_nhwc(const SconvArgs& a) {
  const T* gy = static_cast<const T*>(a.in);
  T* gx = static_cast<T*>(a.out);
  const T* wp = static_cast<const T*>(a.wp);
  const NhwcTiles nt(a, sizeof(T), a.c_out, kPrefetches<T>);
  at::parallel_for(0, nt.tasks(), 1, [&](int64_t begin, int64_t end) {
    Scratch s(Tables<T>::bytes(nt.pt, a.mg) + nt.pt * a.cgp * sizeof(T) + nt.max_lines * sizeof(const char*),
              "shuffle_conv1x1");
    Tables<T> t(s, nt.pt, a.mg);
    T* tile = static_cast<T*>(t.extra);
    NextTileLines next{reinterpret_cast<const char**>(tile + nt.pt * a.cgp)};
    fill_stride(t.arow, nt.pt, a.c_out);
    for (int64_t task = begin; task < end; ++task) {
      int64_t p0, np, k0, k1;
      nt.task(a, task, p0, np, k0, k1);
      next.plan(nt, task + 1 < end, p0, np, gy, a.c_out, gx, a.c_in);
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t* runs = a.runs + k * a.max_runs * 3;
        const bool direct = a.nruns[k] == 1;  // the group reads one contiguous channel range
        for (int64_t m = 0; m < a.mg; ++m) t.brow[m] = wp + (k * a.mg + m) * a.cgp;
        fill_stride(t.acol, a.mg, 1, k * a.mg);
        for (int64_t r = 0; r < np; ++r) {
          t.crows[r] = direct ? gx + (p0 + r) * a.c_in + runs[0] : tile + r * a.cgp;
        }
        Gemm<T> g{np, a.cg, a.mg, gy + p0 * a.c_out, t.arow, t.acol, t.brow, 0, t.crows, 0, nullptr, nullptr};
        g.b_padded = true;  // wp rows: cgp >= cg rounded up to 16
        next.share(g, k1 - k);
        run_gemm<T>(g);
        if (direct) continue;
        for (int64_t r = 0; r < np; ++r) {
          T* dst = gx + (p0 + r) * a.c_in;
          const T* src = tile + r * a.cgp;
          for (int64_t q = 0; q < a.nruns[k]; ++q) copy_run(dst + runs[3 * q], src + runs[3 * q + 2], runs[3 * q + 1]);
        }
      }
    }
  });
}

// ---- grad of the weight (float and double: T is its own accumulation type) ----
//
// NCHW: dW[m][j'] = sum_{img, p} gy[img][k*mg + m][p] * x[img][src(j')][p] -- both operands are contiguous
// along the reduction p, so a dot-product microkernel: MR x NR accumulator vectors over all images, reduced
// horizontally once at the end (a per-image reduction would cost as much as the FMAs at 7x7).
template <typename T, int MR, int NR>
void dot_micro(int64_t nimg, int64_t len, const T* const* arows, int64_t a_img, const T* const* brows,
               int64_t b_img, T* c, int64_t ldc) {
#if defined(SK_F32_SIMD)
  if constexpr (std::is_same_v<T, float>) {
    using S = F32Simd;
    constexpr int64_t L = S::L;
    typename S::V acc[MR][NR];
#pragma GCC unroll 4
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int s = 0; s < NR; ++s) acc[r][s] = S::zero();
    // Full vectors, then one masked tail (masked loads are slower on AMD: keep them out of the loop).
    auto step = [&](int64_t img, int64_t p, auto load) {
      typename S::V bv[NR];
#pragma GCC unroll 4
      for (int s = 0; s < NR; ++s) bv[s] = load(brows[s] + img * b_img + p);
#pragma GCC unroll 4
      for (int r = 0; r < MR; ++r) {
        const typename S::V av = load(arows[r] + img * a_img + p);
#pragma GCC unroll 4
        for (int s = 0; s < NR; ++s) acc[r][s] = S::fmadd(av, bv[s], acc[r][s]);
      }
    };
    const int64_t full = len / L * L;
    const typename S::M tail = S::lanes(len - full);
    for (int64_t img = 0; img < nimg; ++img) {
      for (int64_t p = 0; p < full; p += L) step(img, p, [](const float* q) { return S::load(q); });
      if (full < len) step(img, full, [&](const float* q) { return S::load(q, tail); });
    }
#pragma GCC unroll 4
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int s = 0; s < NR; ++s) c[r * ldc + s] += S::sum(acc[r][s]);
    return;
  }
#endif
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  V acc[MR][NR];
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int s = 0; s < NR; ++s) acc[r][s] = V(T(0));
  for (int64_t img = 0; img < nimg; ++img) {
    for (int64_t p = 0; p < len; p += L) {
      const int64_t cnt = std::min<int64_t>(L, len - p);
      V bv[NR];
#pragma GCC unroll 4
      for (int s = 0; s < NR; ++s) bv[s] = V::loadu(brows[s] + img * b_img + p, cnt);
#pragma GCC unroll 4
      for (int r = 0; r < MR; ++r) {
        const V av = V::loadu(arows[r] + img * a_img + p, cnt);
#pragma GCC unroll 4
        for (int s = 0; s < NR; ++s) acc[r][s] = at::vec::fmadd(av, bv[s], acc[r][s]);
      }
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int s = 0; s < NR; ++s)
      c[r * ldc + s] += at::vec::vec_reduce_all<T>([](V& u, V& v) { return u + v; }, acc[r][s]);
}

#if defined(CPU_CAPABILITY_AVX512)
constexpr int kDotTile = 4;
#else
constexpr int kDotTile = 3;
#endif

template <typename T>
using DotFn = void (*)(int64_t, int64_t, const T* const*, int64_t, const T* const*, int64_t, T*, int64_t);

template <typename T, int... I>
constexpr void fill_dot(DotFn<T>* t, std::integer_sequence<int, I...>) {
  ((t[I] = &dot_micro<T, I / kDotTile + 1, I % kDotTile + 1>), ...);
}

template <typename T>
struct DotTable {
  DotFn<T> fn[kDotTile * kDotTile] = {};
  DotTable() { fill_dot<T>(fn, std::make_integer_sequence<int, kDotTile * kDotTile>{}); }
};

// partial: this thread's [groups][mg][cg] buffer (NCHW) or [groups][cg][mg] buffer (NHWC), accumulated.
// NCHW tasks are (group, tile of kDotTile output channels), each reducing over every image.
template <typename T>
void grad_weight_nchw(const SconvArgs& a) {
  static const DotTable<T> table;
  const T* gy = static_cast<const T*>(a.in);
  const T* x = static_cast<const T*>(a.x);
  const int64_t m_tiles = (a.mg + kDotTile - 1) / kDotTile;
  at::parallel_for(0, a.groups * m_tiles, 1, [&](int64_t begin, int64_t end) {
    T* mine = static_cast<T*>(a.out) + at::get_thread_num() * a.groups * a.mg * a.cg;
    const T* arows[kDotTile];
    const T* brows[kDotTile];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t k = task / m_tiles;
      const int64_t m0 = (task % m_tiles) * kDotTile;
      const int mr = static_cast<int>(std::min<int64_t>(kDotTile, a.mg - m0));
      for (int r = 0; r < mr; ++r) arows[r] = gy + (k * a.mg + m0 + r) * a.hw;
      T* c = mine + (k * a.mg + m0) * a.cg;
      for (int64_t j0 = 0; j0 < a.cg; j0 += kDotTile) {
        const int nr = static_cast<int>(std::min<int64_t>(kDotTile, a.cg - j0));
        for (int s = 0; s < nr; ++s) brows[s] = x + a.src[k * a.cg + j0 + s] * a.hw;
        table.fn[(mr - 1) * kDotTile + nr - 1](a.n, a.hw, arows, a.c_out * a.hw, brows, a.c_in * a.hw, c + j0,
                                                a.cg);
      }
    }
  });
}

// NHWC: dW^T[j'][m] = sum_p x[p][src(j')] * gy[p][k*mg + m] -- the GEMM microkernel with rows j'
// (A broadcast from x, addressed by arow = src), columns m (contiguous in gy) and K = pixels of a chunk.
constexpr int64_t kPixelChunk = 128;

template <typename T>
void grad_weight_nhwc(const SconvArgs& a) {
  const T* gy = static_cast<const T*>(a.in);
  const T* x = static_cast<const T*>(a.x);
  const int64_t pixels = a.n * a.hw;
  const int64_t chunks = (pixels + kPixelChunk - 1) / kPixelChunk;
  at::parallel_for(0, chunks * a.groups, 1, [&](int64_t begin, int64_t end) {
    T* mine = static_cast<T*>(a.out) + at::get_thread_num() * a.groups * a.cg * a.mg;
    Scratch s(Tables<T>::bytes(a.cg, kPixelChunk) + a.cg * a.mgp * sizeof(T), "shuffle_conv1x1");
    Tables<T> t(s, a.cg, kPixelChunk);
    T* tile = static_cast<T*>(t.extra);
    fill_stride(t.acol, kPixelChunk, a.c_in);
    for (int64_t j = 0; j < a.cg; ++j) t.crows[j] = tile + j * a.mgp;
    // Narrow (mg <= 24) fp32 on an x beyond L2: the next task's x and grad_out lines are prefetched during
    // this one (Gemm::pf_lines).  ShuffleNetV1 g=3 stage 2 (cg = 80, mg = 20, 12 MB x) ran 1.3-1.4x faster
    // (median of interleaved rounds on the shared Zen 4, 1 thread; no gain when the machine was quiet);
    // wider shapes gained nothing.
    const bool ahead = std::is_same_v<T, float> && a.mg <= 24 &&
                       pixels * a.c_in * static_cast<int64_t>(sizeof(T)) > kPrefetchBytes;
    int64_t max_span = 0;
    for (int64_t k = 0; ahead && k < a.groups; ++k) {
      max_span = std::max(max_span, a.src[k * a.cg + a.cg - 1] + 1 - a.src[k * a.cg]);
    }
    auto max_lines = [](int64_t n) { return (n * static_cast<int64_t>(sizeof(T)) + 63) / 64 + 1; };
    const int64_t per_pixel = max_lines(max_span) + max_lines(a.mg);
    Scratch lines_s(ahead ? kPixelChunk * per_pixel * sizeof(const char*) : 1, "shuffle_conv1x1");
    const char** lines = lines_s.as<const char*>();
    for (int64_t task = begin; task < end; ++task) {
      const int64_t k = task % a.groups;
      const int64_t p0 = (task / a.groups) * kPixelChunk;
      const int64_t np = std::min(kPixelChunk, pixels - p0);
      for (int64_t j = 0; j < a.cg; ++j) t.arow[j] = a.src[k * a.cg + j];
      for (int64_t p = 0; p < np; ++p) t.brow[p] = gy + (p0 + p) * a.c_out + k * a.mg;
      Gemm<T> g{a.cg, a.mg, np, x + p0 * a.c_in, t.arow, t.acol, t.brow, 0, t.crows, 0, nullptr, nullptr};
      // grad_out's rows may be read past the group's mg channels (whole vectors, the extra lanes never
      // stored) while that stays inside grad_out: all but the tensor's last pixel when groups' tails overrun.
      g.b_padded = (p0 + np - 1) * a.c_out + k * a.mg + a.mgp <= pixels * a.c_out;
      if (ahead && task + 1 < end) {
        int64_t n = 0;
        const int64_t k1 = (task + 1) % a.groups;
        const int64_t q0 = ((task + 1) / a.groups) * kPixelChunk;
        const int64_t nq = std::min(kPixelChunk, pixels - q0);
        const int64_t s0 = a.src[k1 * a.cg], s1 = a.src[k1 * a.cg + a.cg - 1] + 1;
        for (int64_t p = 0; p < nq; ++p) {
          const T* xp = x + (q0 + p) * a.c_in;
          const T* gp = gy + (q0 + p) * a.c_out + k1 * a.mg;
          append_lines(lines, n, xp + s0, xp + s1);
          append_lines(lines, n, gp, gp + a.mg);
        }
        g.pf_lines = lines;
        g.pf_count = n;
      }
      run_gemm<T>(g);
      // Each chunk's sums start from zero and are added to the thread's buffer: two short sums instead of
      // one running over every pixel (at 2 x 56 x 56 pixels that was 4x eager's error in fp32).
      for (int64_t j = 0; j < a.cg; ++j) {
        T* dst = mine + (k * a.cg + j) * a.mg;
        const T* src = tile + j * a.mgp;
        for (int64_t m = 0; m < a.mg; ++m) dst[m] += src[m];
      }
    }
  });
}

template <typename T>
void forward_t(const SconvArgs& a) {
  a.channels_last ? forward_nhwc<T>(a) : forward_nchw<T>(a);
}

template <typename T>
void grad_input_t(const SconvArgs& a) {
  a.channels_last ? grad_input_nhwc<T>(a) : grad_input_nchw<T>(a);
}

template <typename T>
void grad_weight_t(const SconvArgs& a) {
  a.channels_last ? grad_weight_nhwc<T>(a) : grad_weight_nchw<T>(a);
}

void forward_kernel(const SconvArgs& a) {
  switch (a.dtype) {
    case kSconvFloat: return forward_t<float>(a);
    case kSconvDouble: return forward_t<double>(a);
    case kSconvBFloat16: return forward_t<c10::BFloat16>(a);
    default: TORCH_CHECK(false, "shuffle_conv1x1: unsupported dtype code ", a.dtype);
  }
}

void grad_input_kernel(const SconvArgs& a) {
  switch (a.dtype) {
    case kSconvFloat: return grad_input_t<float>(a);
    case kSconvDouble: return grad_input_t<double>(a);
    case kSconvBFloat16: return grad_input_t<c10::BFloat16>(a);
    default: TORCH_CHECK(false, "shuffle_conv1x1: unsupported dtype code ", a.dtype);
  }
}

void grad_weight_kernel(const SconvArgs& a) {
  switch (a.dtype) {
    case kSconvFloat: return grad_weight_t<float>(a);
    case kSconvDouble: return grad_weight_t<double>(a);
    default: TORCH_CHECK(false, "shuffle_conv1x1: grad_weight kernel takes float or double, got code ", a.dtype);
  }
}

}  // namespace
}  // namespace CPU_CAPABILITY

SK_REGISTER_KERNEL(shuffle_conv1x1_forward_table, &CPU_CAPABILITY::forward_kernel);
SK_REGISTER_KERNEL(shuffle_conv1x1_grad_input_table, &CPU_CAPABILITY::grad_input_kernel);
SK_REGISTER_KERNEL(shuffle_conv1x1_grad_weight_table, &CPU_CAPABILITY::grad_weight_kernel);

}  // namespace shufflekern::cpu
