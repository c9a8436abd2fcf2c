// The 3x3 / stride 2 / padding 1 max pool of ShuffleNet's stem, shared by the kernels that pool (csrc/cpu/vec/
// batch_norm_act.cpp's bn_relu_max_pool, csrc/cpu/vec/max_pool.cpp's max_pool3x3s2).  Included only by files of
// csrc/cpu/vec/, which are compiled once per ISA: everything here has internal linkage (as csrc/kd_loss.h).
//
// Tie and NaN rule: ATen's (a window's first maximum in row-major order; a NaN beats everything, the last NaN
// wins), the window positions counted 3 * ky + kx from the unclipped window's corner (2 oy - 1, 2 ox - 1).
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

namespace shufflekern::cpu {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

// The input range [lo, hi) of output o's window along a dimension of n inputs.
inline void pool_window(int64_t o, int64_t n, int64_t& lo, int64_t& hi) {
  lo = std::max<int64_t>(0, 2 * o - 1);
  hi = std::min<int64_t>(n, 2 * o + 2);
}

// best, arg = z, k in the lanes where z beats best by ATen's rule (larger, or NaN: the first maximum in window
// order, the last NaN).  AVX-512 float on mask registers (at::vec's compare results are vectors there).
template <typename T>
inline void take_if_larger(const Vectorized<T>& z, const Vectorized<T>& k, Vectorized<T>& best, Vectorized<T>& arg) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    const __mmask16 m = _mm512_cmp_ps_mask(z, best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(z, z, _CMP_UNORD_Q);
    best = Vectorized<float>(_mm512_mask_mov_ps(best, m, z));
    arg = Vectorized<float>(_mm512_mask_mov_ps(arg, m, k));
    return;
  }
#endif
  const Vectorized<T> take = (z > best) | z.isnan();
  best = Vectorized<T>::blendv(best, z, take);
  arg = Vectorized<T>::blendv(arg, k, take);
}

// The lanes of a vector of T (window positions 0..8) as argmax bytes; count <= the vector's size.
template <typename T>
inline void store_argmax(const Vectorized<T>& k, uint8_t* dst, int64_t count) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    const __mmask16 m = static_cast<__mmask16>((1u << count) - 1);
    _mm_mask_storeu_epi8(dst, m, _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(k)));
    return;
  }
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, float>) {
    if (count == 8) {
      const __m256i i = _mm256_cvttps_epi32(k);
      const __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), _mm_packus_epi16(w, w));
      return;
    }
  }
#endif
  T tmp[Vectorized<T>::size()];
  k.store(tmp);
  for (int64_t l = 0; l < count; ++l) dst[l] = static_cast<uint8_t>(tmp[l]);
}

// Scratch elements pool3x3s2_plane needs for an H-row plane pooled to Wo columns.
template <typename T>
int64_t pool3x3s2_rows_len(int64_t H, int64_t Wo) {
  return H * (2 * Wo + 1 + Vectorized<T>::size());
}

// One [H, W] plane (dense) pooled to yp [Ho, Wo], the argmax to ap [Ho, Wo] unless ap is null, the window taking
// z(x) = zfn(vector of x).  Output columns are vector lanes: z of each input row is split into its even and odd
// columns, ev[j] = z[2j] and od[j + 1] = z[2j + 1] (od[0] and any column past W: -inf, the padding), so output
// ox's window columns 2 ox - 1, 2 ox, 2 ox + 1 are od[ox], ev[ox], od[ox + 1].  Padding never wins over a real
// element (-inf ties keep the first; the value is the same).  rows: pool3x3s2_rows_len<T>(H, Wo) elements.
template <typename T, typename Z>
void pool3x3s2_plane(const T* xp, int64_t H, int64_t W, int64_t Ho, int64_t Wo, T* rows, T* yp, uint8_t* ap,
                     const Z& zfn) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t row_len = 2 * Wo + 1 + L;  // ev [Wo], od [Wo + 1], slack for whole-vector loads
  const T neg_inf = -std::numeric_limits<T>::infinity();
  for (int64_t iy = 0; iy < H; ++iy) {
    T* ev = rows + iy * row_len;
    T* od = ev + Wo;
    const T* xr = xp + iy * W;
    int64_t j = 0;
    for (; 2 * (j + L) <= W; j += L) {
      const auto [e, o] = at::vec::deinterleave2(V::loadu(xr + 2 * j), V::loadu(xr + 2 * j + L));
      zfn(e).store(ev + j);
      zfn(o).store(od + j + 1);
    }
    for (; j < Wo; ++j) {  // the rest, a column pair at a time through the same vector expression
      const int64_t ncol = std::min<int64_t>(2, W - 2 * j);
      T z2[L];
      zfn(V::loadu(xr + 2 * j, ncol)).store(z2);
      ev[j] = z2[0];
      od[j + 1] = ncol > 1 ? z2[1] : neg_inf;
    }
    od[0] = neg_inf;
    for (int64_t k = Wo + 1; k < Wo + 1 + L; ++k) od[k] = neg_inf;
  }
  for (int64_t oy = 0; oy < Ho; ++oy) {
    int64_t y0, y1;
    pool_window(oy, H, y0, y1);
    for (int64_t ox = 0; ox < Wo; ox += L) {
      const int64_t cnt = std::min<int64_t>(L, Wo - ox);
      V best(neg_inf), arg(T(0));
      for (int64_t iy = y0; iy < y1; ++iy) {
        const T* ev = rows + iy * row_len;
        const T* od = ev + Wo;
        const T ky3 = static_cast<T>(3 * (iy - 2 * oy + 1));
        take_if_larger<T>(V::loadu(od + ox), V(ky3), best, arg);
        take_if_larger<T>(V::loadu(ev + ox, cnt), V(ky3 + 1), best, arg);
        take_if_larger<T>(V::loadu(od + ox + 1), V(ky3 + 2), best, arg);
      }
      best.store(yp + oy * Wo + ox, cnt);
      if (ap != nullptr) store_argmax<T>(arg, ap + oy * Wo + ox, cnt);
    }
  }
}

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace shufflekern::cpu
