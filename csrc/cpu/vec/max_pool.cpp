// ShuffleNet's stem max pool (3x3 window, stride 2, padding 1) without the indices that ATen's CPU max_pool2d
// always computes (it runs max_pool2d_with_indices and drops them: an int64 tensor twice the output's size
// written for nothing at inference).  Compiled once per CPU ISA (csrc/cpu/dispatch.h).  NaN propagates as in
// ATen (a window holding a NaN gives NaN); padding never wins (a window always holds an input element).
#pragma GCC diagnostic ignored "-Wpsabi"
// gcc 12's AVX-512 conversion intrinsics (pool3x3s2.h's argmax bytes) start from an undefined register: false alarms.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <algorithm>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "cpu/dispatch.h"
#include "cpu/max_pool_kernel.h"
#include "cpu/scratch.h"
#include "cpu/vec/pool3x3s2.h"

namespace shufflekern::cpu {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

constexpr int64_t kGrainElems = 16384;  // output elements per parallel task, at least

// channels_last: a pixel's C channels are contiguous; one task = output rows, vectors over the channels.
template <typename T>
void pool_cl(const T* x, T* y, int64_t n, int64_t C, int64_t H, int64_t W, int64_t Ho, int64_t Wo) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(Wo * C, 1));
  at::parallel_for(0, n * Ho, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t img = r / Ho, oy = r % Ho;
      int64_t y0, y1;
      pool_window(oy, H, y0, y1);
      for (int64_t ox = 0; ox < Wo; ++ox) {
        int64_t x0, x1;
        pool_window(ox, W, x0, x1);
        T* out = y + (r * Wo + ox) * C;
        const T* first = x + ((img * H + y0) * W + x0) * C;
        int64_t c = 0;
        for (; c < C; c += L) {
          const int64_t cnt = std::min<int64_t>(L, C - c);
          V acc = V::loadu(first + c, cnt);
          for (int64_t iy = y0; iy < y1; ++iy) {
            const T* row = x + ((img * H + iy) * W) * C + c;
            for (int64_t ix = x0; ix < x1; ++ix) acc = at::vec::maximum(acc, V::loadu(row + ix * C, cnt));
          }
          acc.store(out + c, cnt);
        }
      }
    }
  });
}

// NCHW: one task = planes (image, channel), each pooled with output columns as vector lanes (pool3x3s2.h).
template <typename T>
void pool_nchw(const T* x, T* y, int64_t n, int64_t C, int64_t H, int64_t W, int64_t Ho, int64_t Wo) {
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(Ho * Wo, 1));
  at::parallel_for(0, n * C, grain, [&](int64_t p0, int64_t p1) {
    Scratch rows(sizeof(T) * pool3x3s2_rows_len<T>(H, Wo), "max_pool3x3s2");
    for (int64_t p = p0; p < p1; ++p) {
      pool3x3s2_plane<T>(x + p * H * W, H, W, Ho, Wo, rows.as<T>(), y + p * Ho * Wo, nullptr,
                         [](const Vectorized<T>& v) { return v; });
    }
  });
}

void max_pool_kernel(const void* x, void* y, bool is_double, bool channels_last, int64_t n, int64_t c, int64_t h,
                     int64_t w, int64_t ho, int64_t wo) {
  if (is_double) {
    const auto* xs = static_cast<const double*>(x);
    auto* ys = static_cast<double*>(y);
    return channels_last ? pool_cl(xs, ys, n, c, h, w, ho, wo) : pool_nchw(xs, ys, n, c, h, w, ho, wo);
  }
  const auto* xs = static_cast<const float*>(x);
  auto* ys = static_cast<float*>(y);
  channels_last ? pool_cl(xs, ys, n, c, h, w, ho, wo) : pool_nchw(xs, ys, n, c, h, w, ho, wo);
}

}  // namespace
}  // namespace CPU_CAPABILITY

SK_REGISTER_KERNEL(max_pool3x3s2_table, &CPU_CAPABILITY::max_pool_kernel);

}  // namespace shufflekern::cpu
