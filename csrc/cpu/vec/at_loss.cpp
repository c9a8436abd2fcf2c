// at_loss kernels over the maps (q = mean_c f^2 forward; grad = (2 / C) f g backward), compiled once per CPU
// ISA.  Each reads its map once; the backward writes the gradient once.  Nothing of the map's size is
// allocated besides the gradient: q and g are [N, H*W].
//   NCHW:           a task takes a sample's chunk of pixels and adds f^2 plane by plane into a row of
//                   vector accumulators (kept in L1), so the loads stream along each channel plane;
//                   the backward scales plane rows by g (vectors along the pixels).
//   channels_last:  a pixel's C channels are contiguous: vector sums along the row, one horizontal add;
//                   the backward scales the row by (2 / C) g[pixel].
// Sums are in the map's type (float32 or float64), as the brief's "accumulate in fp32" for float32.
#pragma GCC diagnostic ignored "-Wpsabi"

#include <algorithm>
#include <cstdint>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "cpu/at_loss_kernel.h"
#include "cpu/dispatch.h"

namespace shufflekern::cpu {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

constexpr int64_t kGrainElems = 32768;  // map elements per parallel task, at least
constexpr int64_t kChunk = 512;         // pixels of an NCHW task (its accumulator row: 2-4 KiB)

template <typename T>
void sq_mean_t(const AtMapArgs& a) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const T* f = static_cast<const T*>(a.f);
  T* q = static_cast<T*>(a.q);
  const int64_t C = a.c, HW = a.hw;
  const T inv_c = T(1) / T(C);
  if (a.channels_last) {
    const int64_t grain = std::max<int64_t>(1, kGrainElems / C);
    at::parallel_for(0, a.n * HW, grain, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const T* row = f + p * C;
        V acc(T(0));
        int64_t c = 0;
        for (; c + L <= C; c += L) {
          const V x = V::loadu(row + c);
          acc = at::vec::fmadd(x, x, acc);
        }
        T s = at::vec::vec_reduce_all<T>([](V& u, V& v) { return u + v; }, acc);
        for (; c < C; ++c) s += row[c] * row[c];
        q[p] = s * inv_c;
      }
    });
    return;
  }
  const int64_t chunks = (HW + kChunk - 1) / kChunk;
  const int64_t grain = std::max<int64_t>(1, kGrainElems / (C * std::min(HW, kChunk)));
  at::parallel_for(0, a.n * chunks, grain, [&](int64_t begin, int64_t end) {
    alignas(64) T acc[kChunk];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / chunks, p0 = (task % chunks) * kChunk, len = std::min(kChunk, HW - p0);
      std::fill(acc, acc + len, T(0));
      const T* base = f + n * C * HW + p0;
      int64_t c = 0;
      // four planes a sweep: one load and store of the accumulator row per four squares added
      for (; c + 4 <= C; c += 4) {
        const T* p0r = base + c * HW;
        const T* p1r = p0r + HW;
        const T* p2r = p1r + HW;
        const T* p3r = p2r + HW;
        int64_t i = 0;
        for (; i + L <= len; i += L) {
          const V x0 = V::loadu(p0r + i), x1 = V::loadu(p1r + i), x2 = V::loadu(p2r + i), x3 = V::loadu(p3r + i);
          V a = at::vec::fmadd(x0, x0, V::loadu(acc + i));
          a = at::vec::fmadd(x1, x1, a);
          a = at::vec::fmadd(x2, x2, a);
          at::vec::fmadd(x3, x3, a).store(acc + i);
        }
        for (; i < len; ++i) acc[i] += p0r[i] * p0r[i] + p1r[i] * p1r[i] + p2r[i] * p2r[i] + p3r[i] * p3r[i];
      }
      for (; c < C; ++c) {
        const T* plane = base + c * HW;
        int64_t i = 0;
        for (; i + L <= len; i += L) {
          const V x = V::loadu(plane + i);
          at::vec::fmadd(x, x, V::loadu(acc + i)).store(acc + i);
        }
        for (; i < len; ++i) acc[i] += plane[i] * plane[i];
      }
      T* out = q + n * HW + p0;
      for (int64_t i = 0; i < len; ++i) out[i] = acc[i] * inv_c;
    }
  });
}

template <typename T>
void grad_map_t(const AtMapArgs& a) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const T* f = static_cast<const T*>(a.f);
  const T* g = static_cast<const T*>(a.g);
  T* out = static_cast<T*>(a.grad);
  const int64_t C = a.c, HW = a.hw;
  const T two_c = T(2) / T(C);
  if (a.channels_last) {
    const int64_t grain = std::max<int64_t>(1, kGrainElems / C);
    at::parallel_for(0, a.n * HW, grain, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const T k = two_c * g[p];
        const V kv(k);
        const T* row = f + p * C;
        T* dst = out + p * C;
        int64_t c = 0;
        for (; c + L <= C; c += L) (V::loadu(row + c) * kv).store(dst + c);
        for (; c < C; ++c) dst[c] = row[c] * k;
      }
    });
    return;
  }
  const int64_t grain = std::max<int64_t>(1, kGrainElems / HW);
  const V tv(two_c);
  at::parallel_for(0, a.n * C, grain, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / C;
      const T* src = f + plane * HW;
      const T* gr = g + n * HW;
      T* dst = out + plane * HW;
      int64_t i = 0;
      for (; i + L <= HW; i += L) (V::loadu(src + i) * (V::loadu(gr + i) * tv)).store(dst + i);
      for (; i < HW; ++i) dst[i] = src[i] * (gr[i] * two_c);
    }
  });
}

void sq_mean_kernel(const AtMapArgs& a) { a.dtype == kAtDouble ? sq_mean_t<double>(a) : sq_mean_t<float>(a); }
void grad_map_kernel(const AtMapArgs& a) { a.dtype == kAtDouble ? grad_map_t<double>(a) : grad_map_t<float>(a); }

}  // namespace
}  // namespace CPU_CAPABILITY

SK_REGISTER_KERNEL(at_loss_sq_mean_table, &CPU_CAPABILITY::sq_mean_kernel);
SK_REGISTER_KERNEL(at_loss_grad_map_table, &CPU_CAPABILITY::grad_map_kernel);

}  // namespace shufflekern::cpu
