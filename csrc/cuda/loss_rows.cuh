// Row-loss kernel pieces shared by csrc/cuda/kd_loss.cu and csrc/cuda/dkd_loss.cu (and their emulated builds):
// the launch shape (G threads a row, R rows a block, rows cached in shared memory or streamed), 16-byte vector
// copies of a block's rows between global and shared memory, and the group reduction of online-softmax
// streams (csrc/kd_loss.h).
#pragma once
#include <cstring>

#include "cuda/runtime.h"
#include "kd_loss.h"

namespace shufflekern::SK_DEV_NS {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kCacheBudget = 160 * 1024;  // bytes of shared memory for cached rows (opt-in above 48 KiB)
constexpr int kVecBytes = 16;

// A span of n elements of T at global address `addr`: a head, element by element, up to the first 16-byte
// boundary, whole 16-byte vectors, then the tail (from head + vecs * V).
template <typename T>
struct Span {
  static constexpr int V = kVecBytes / sizeof(T);
  int64_t head, vecs;
  __device__ Span(uintptr_t addr, int64_t n) {
    const int64_t mis = int64_t(addr % kVecBytes) / int64_t(sizeof(T));
    head = mis == 0 ? 0 : (V - mis < n ? V - mis : n);
    vecs = (n - head) / V;
  }
};

// Copies n elements between global and shared memory with all the block's threads (Span's pieces).  Vectors
// move through memcpy, not a pointer cast, which would break C++'s aliasing rules on the host compiler.
template <typename T, typename G>
__device__ void span_load(T* dst, G src, int64_t n) {
  const Span<T> sp(SK_ADDR(src), n);
  constexpr int V = Span<T>::V;
  const int tid = threadIdx.x, nt = blockDim.x;
  for (int64_t i = tid; i < sp.head; i += nt) dst[i] = src[i];
  auto body = SK_VCAST(const uint4, src + sp.head);
  for (int64_t v = tid; v < sp.vecs; v += nt) {
    const uint4 u = body[v];
    T e[V];
    memcpy(e, &u, sizeof(u));
#pragma unroll
    for (int k = 0; k < V; ++k) dst[sp.head + v * V + k] = e[k];
  }
  for (int64_t i = sp.head + sp.vecs * V + tid; i < n; i += nt) dst[i] = src[i];
}

template <typename T, typename G>
__device__ void span_store(G dst, const T* src, int64_t n) {
  const Span<T> sp(SK_ADDR(dst), n);
  constexpr int V = Span<T>::V;
  const int tid = threadIdx.x, nt = blockDim.x;
  for (int64_t i = tid; i < sp.head; i += nt) dst[i] = src[i];
  auto body = SK_VCAST(uint4, dst + sp.head);
  for (int64_t v = tid; v < sp.vecs; v += nt) {
    T e[V];
#pragma unroll
    for (int k = 0; k < V; ++k) e[k] = src[sp.head + v * V + k];
    uint4 u;
    memcpy(&u, e, sizeof(u));
    body[v] = u;
  }
  for (int64_t i = sp.head + sp.vecs * V + tid; i < n; i += nt) dst[i] = src[i];
}

template <typename acc_t>
__device__ __forceinline__ KdStream<acc_t> shfl_xor_stream(KdStream<acc_t> v, int o, int width) {
  return KdStream<acc_t>{__shfl_xor_sync(0xFFFFFFFFu, v.m, o, width), __shfl_xor_sync(0xFFFFFFFFu, v.z, o, width),
                         __shfl_xor_sync(0xFFFFFFFFu, v.a, o, width)};
}

// Merges the N streams over the group of G threads; every thread of the group ends with the row's.
// kd_merge is symmetric, so the butterfly gives every lane the same bits.  `red`: [kThreads / 32][N] shared.
template <int N, typename acc_t>
__device__ void group_reduce(KdStream<acc_t> (&st)[N], int G, KdStream<acc_t> (*red)[N]) {
  const int w = G < 32 ? G : 32;
  for (int o = w / 2; o > 0; o /= 2) {
#pragma unroll
    for (int k = 0; k < N; ++k) st[k] = kd_merge(st[k], shfl_xor_stream(st[k], o, w));
  }
  if (G <= 32) return;
  const int tid = threadIdx.x, warp = tid / 32, warps = G / 32, first = (tid / G) * warps;
  if (tid % 32 == 0) {
#pragma unroll
    for (int k = 0; k < N; ++k) red[warp][k] = st[k];
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < N; ++k) {
    st[k] = red[first][k];
    for (int i = 1; i < warps; ++i) st[k] = kd_merge(st[k], red[first + i][k]);
  }
}

// Copies the block's nrows rows of s and t (rows *_stride elements apart) to the shared [R, C] caches cs, ct.
template <typename scalar_t, typename G>
__device__ void cache_rows(scalar_t* cs, scalar_t* ct, G s_base, G t_base, int64_t r0, int64_t nrows, int64_t C,
                           int64_t s_stride, int64_t t_stride) {
  if (s_stride == C && t_stride == C) {
    span_load(cs, s_base + r0 * C, nrows * C);
    span_load(ct, t_base + r0 * C, nrows * C);
  } else {
    for (int64_t r = 0; r < nrows; ++r) {
      span_load(cs + r * C, s_base + (r0 + r) * s_stride, C);
      span_load(ct + r * C, t_base + (r0 + r) * t_stride, C);
    }
  }
  __syncthreads();
}

// Stores the block's nrows gradient rows, left in the shared caches cs, ct by its groups, as dense [R, C]
// spans of gs_base, gt_base (the wanted ones), once every group has written its row.
template <typename scalar_t, typename G>
__device__ void store_rows(G gs_base, G gt_base, const scalar_t* cs, const scalar_t* ct, int64_t r0, int64_t nrows,
                           int64_t C, bool want_gs, bool want_gt) {
  __syncthreads();
  if (want_gs) span_store(gs_base + r0 * C, cs, nrows * C);
  if (want_gt) span_store(gt_base + r0 * C, ct, nrows * C);
}

// Launch shape: G threads a row (a power of two, at most 8 classes a thread, 2 .. 256), R rows a block, and
// whether the block's rows fit the shared-memory budget; grid() and block() of a launch over `rows` rows.
struct KdShape {
  int G, R;
  bool cached;
  size_t smem;
  dim3 grid(int64_t rows) const { return dim3(static_cast<unsigned>((rows + R - 1) / R)); }
  dim3 block() const { return dim3(G * R); }
};

inline KdShape kd_shape(int64_t C, int64_t esize) {
  int G = 2;
  while (G < kThreads && int64_t(G) * 8 < C) G *= 2;
  int R = kThreads / G;
  while (R > 1 && 2 * int64_t(R) * C * esize > kCacheBudget) R /= 2;
  const int64_t bytes = 2 * int64_t(R) * C * esize;
  const bool cached = bytes <= kCacheBudget;
  return KdShape{G, R, cached, cached ? size_t(bytes) : size_t(0)};
}

}  // namespace
}  // namespace shufflekern::SK_DEV_NS
