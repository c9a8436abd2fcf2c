// at_loss kernels over the maps (q = mean_c f^2 forward; grad = (2 / C) f g backward), compiled once per CPU
// ISA.  Each reads its map once; the backward writes the gradient once.  Nothing of the map's size is
// allocated besides the gradient: q and g are [N, H*W].
//   NCHW forward:   a sample's [C, H*W] block is read in memory order, plane after plane, so the reads are one
//                   sequential stream (measured on Zen 4: several planes a sweep, or chunks of a plane, are up
//                   to 2x slower once the map is not in L2: the prefetchers follow one stream, not 4-8 short
//                   ones).  Small H*W (<= kRegVecs vectors): the pixel sums stay in vector registers; larger:
//                   in an accumulator row of H*W (up to kMaxRowBytes; L1 to 28x28 fp32 and beyond, else L2),
//                   loaded and stored once a plane.  Samples are the parallel tasks; when they do not share
//                   evenly among the threads, a sample's pixels are split into chunks of >= kMinChunk (the
//                   same sums in the same channel order: the same bits at any thread count).
//   NCHW backward:  plane rows scaled by (2 / C) g (vectors along the pixels): one read of f, one write.
//   channels_last:  a pixel's C channels are contiguous: vector sums along the row, one horizontal add;
//                   the backward scales the row by (2 / C) g[pixel].
// Sums are in the map's type (float32 or float64), as the brief's "accumulate in fp32" for float32, and add
// the channels in order 0..C-1 in every path.
#pragma GCC diagnostic ignored "-Wpsabi"

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "cpu/at_loss_kernel.h"
#include "cpu/dispatch.h"

namespace shufflekern::cpu {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

constexpr int64_t kGrainElems = 32768;   // map elements per parallel task, at least
constexpr int kRegVecs = 8;              // NCHW pixel sums held in registers up to this many vectors
constexpr int64_t kMaxRowBytes = 256 << 10;  // NCHW accumulator row, at most (L2; a 256 x 256 fp32 map)
constexpr int64_t kMinChunk = 256;        // pixels of an NCHW chunk, at least, when samples are split

// Small H*W: the sample's NV full vectors (+ a partial one when TAIL) of pixel sums live in registers while
// the planes stream past.  Writes q's row (times 1 / C).
template <typename T, int NV, bool TAIL>
void sq_mean_regs(const T* base, int64_t C, int64_t HW, T inv_c, T* out) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t tail = HW - NV * L;
  V acc[NV + 1];
  for (int k = 0; k <= NV; ++k) acc[k] = V(T(0));
  for (int64_t c = 0; c < C; ++c) {
    const T* plane = base + c * HW;
    for (int k = 0; k < NV; ++k) {
      const V x = V::loadu(plane + k * L);
      acc[k] = at::vec::fmadd(x, x, acc[k]);
    }
    if constexpr (TAIL) {
      const V x = V::loadu(plane + NV * L, tail);
      acc[NV] = at::vec::fmadd(x, x, acc[NV]);
    }
  }
  const V s(inv_c);
  for (int k = 0; k < NV; ++k) (acc[k] * s).store(out + k * L);
  if constexpr (TAIL) (acc[NV] * s).store(out + NV * L, tail);
}

template <typename T, int NV>
bool sq_mean_regs_if(int64_t nv, int64_t tail, const T* base, int64_t C, int64_t HW, T inv_c, T* out) {
  if constexpr (NV > kRegVecs) {
    return false;
  } else {
    if (nv != NV) return sq_mean_regs_if<T, NV + 1>(nv, tail, base, C, HW, inv_c, out);
    if (tail > 0) {
      if constexpr (NV < kRegVecs) sq_mean_regs<T, NV, true>(base, C, HW, inv_c, out);
      else return false;  // NV full vectors + a partial one: more than kRegVecs
    } else {
      sq_mean_regs<T, NV, false>(base, C, HW, inv_c, out);
    }
    return true;
  }
}

// Larger H*W: pixels [0, len) of every plane (stride HW) summed into acc, one plane at a time.
template <typename T>
void sq_mean_row(const T* base, int64_t C, int64_t HW, int64_t len, T* acc) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t vlen = len - len % L;  // chunks start on whole vectors: the scalar tail is the map's last pixels
  {  // the first plane initialises the row
    int64_t i = 0;
    for (; i < vlen; i += L) {
      const V x = V::loadu(base + i);
      (x * x).store(acc + i);
    }
    for (; i < len; ++i) acc[i] = base[i] * base[i];
  }
  for (int64_t c = 1; c < C; ++c) {
    const T* plane = base + c * HW;
    int64_t i = 0;
    for (; i < vlen; i += L) {
      const V x = V::loadu(plane + i);
      at::vec::fmadd(x, x, V::loadu(acc + i)).store(acc + i);
    }
    for (; i < len; ++i) acc[i] += plane[i] * plane[i];
  }
}

template <typename T>
void sq_mean_nchw(const T* f, T* q, int64_t N, int64_t C, int64_t HW) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const T inv_c = T(1) / T(C);
  const int64_t nv = HW / L, tail = HW % L;
  if (nv + (tail > 0) <= kRegVecs) {
    const int64_t grain = std::max<int64_t>(1, kGrainElems / (C * HW));
    at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const bool done = sq_mean_regs_if<T, 0>(nv, tail, f + n * C * HW, C, HW, inv_c, q + n * HW);
        TORCH_INTERNAL_ASSERT(done);
      }
    });
    return;
  }
  // A task sums a whole sample (its planes back to back: one stream), or, when the samples do not divide
  // evenly over the threads (fewer than 4 a thread), a chunk of its pixels: T / gcd(N, T) chunks a sample.
  constexpr int64_t kMaxRow = kMaxRowBytes / sizeof(T);
  int64_t chunks = (HW + kMaxRow - 1) / kMaxRow;
  const int64_t nt = at::get_num_threads();
  if (N < 4 * nt) chunks = std::max(chunks, std::min(nt / std::gcd(N, nt), HW / kMinChunk));
  // chunks of whole cache lines (so of whole vectors: each pixel is summed alike at any split)
  constexpr int64_t kLine = 64 / sizeof(T);
  static_assert(kLine % L == 0 && kMaxRow % kLine == 0, "chunks must start on whole vectors");
  const int64_t row = std::min(kMaxRow, ((HW + chunks - 1) / chunks + kLine - 1) / kLine * kLine);
  chunks = (HW + row - 1) / row;
  const int64_t grain = std::max<int64_t>(1, kGrainElems / (C * row));
  at::parallel_for(0, N * chunks, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> buf(row);  // the accumulator row: L1 up to 32 KiB, else L2
    T* acc = buf.data();
    const V s(inv_c);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / chunks, p0 = (task % chunks) * row, len = std::min(row, HW - p0);
      sq_mean_row(f + n * C * HW + p0, C, HW, len, acc);
      T* out = q + n * HW + p0;
      int64_t i = 0;
      for (; i + L <= len; i += L) (V::loadu(acc + i) * s).store(out + i);
      for (; i < len; ++i) out[i] = acc[i] * inv_c;
    }
  });
}

template <typename T>
void sq_mean_t(const AtMapArgs& a) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const T* f = static_cast<const T*>(a.f);
  T* q = static_cast<T*>(a.q);
  const int64_t C = a.c, HW = a.hw;
  if (!a.channels_last) {
    sq_mean_nchw(f, q, a.n, C, HW);
    return;
  }
  const T inv_c = T(1) / T(C);
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
