// CUDA entry points and kernels of shufflekern::batch_norm_act and its backward (maths in
// csrc/batch_norm_act.h).  Written against csrc/cuda/runtime.h: nvcc builds it for CUDA tensors,
// csrc/emu/batch_norm_act.cpp runs the same source under the emulator.
//
// Element (p, c), p = n*HW + q, lives at n*sN + c*sC + q*sQ (NCHW: sQ = 1; channels_last: sC = 1).
//
// BatchNorm in training needs two passes over its input: the statistics (forward) or the sums (backward)
// must be complete before any output.  The kernels keep the data of the second pass on chip when it fits,
// the way the persistent softmax keeps a row in registers:
//   tile      the unit one block reads in whole 32-byte sectors: NCHW one channel over N*H*W; channels_last
//             the channels of one sector (8 fp32) over N*H*W when a pixel's C channels are whole sectors,
//             else every channel (partial sectors would be moved by two blocks)
//   cached    (the tile's x [and dL/dz] fit kCacheBudget, 224 KiB, and the device's shared memory) one block a
//             tile: forward _bn_cached_fwd_kernel reads x once into shared memory, takes mean and variance
//             from there (two passes over shared memory), writes y; backward _bn_cached_bwd_kernel reads
//             g, x [, r] once, keeps x and dL/dz on chip, writes grad_residual as it forms it and grad_x from
//             the cache.  Every input read once, every output written once.
//   streamed  (otherwise) _bn_reduce (or, channels_last rows that are not whole sectors, _bn_rows_reduce) ->
//             per-channel partial sums [2, tiles, C]; _bn_finalize (C threads) -> mean, var, scale, shift /
//             grad_weight, grad_bias, the grad_x coefficients; _bn_apply / _bn_grad_apply (_bn_rows_apply)
//             re-reading x (and dL/dz: grad_residual, or grad_y re-masked).
// Loads and stores of the tile and row kernels go through for_slots: 16-byte vectors (elements when a buffer
// or a span is not 16-byte aligned) laid on the buffer's sectors, so that no sector is moved twice.
// Evaluation mode has no statistics: one elementwise pass.  Partial sums are added in a fixed order (warp
// shuffles, then shared memory, then the finalize kernels in double): no atomics, the same bits every run.
// Nothing is synchronised with the host.
//
// A cached tile is one block on one multiprocessor: with few tiles (channels_last 8x240x28x28 fp32: 30 blocks
// of 196 KiB) a GPU has idle multiprocessors, which the traffic model (bytes, not time) does not show.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <type_traits>

#include "batch_norm_act.h"
#include "checks.h"
#include "cuda/runtime.h"

namespace shufflekern::SK_DEV_NS {
namespace {

using namespace ::shufflekern::bn_checks;

constexpr int kWarp = 32, kRows = 8;   // a block is kWarp x kRows threads
constexpr int64_t kChunk = 512;        // positions a block of _bn_reduce sums
constexpr int kApplyThreads = 256;
constexpr int kThreads = 256;          // a block of the row kernels and of small cached tiles
constexpr int kBigThreads = 1024;      // a block of cached tiles of kBigTile bytes or more (latency hiding)
constexpr int64_t kBigTile = 32 * 1024;
constexpr int64_t kCacheBudget = 224 * 1024;  // bytes of cached activations a block (an H100: 227 KiB)
constexpr int64_t kRowsStage = 48 * 1024;     // bytes a block of the channels_last row streams stages
constexpr int kMaxGridY = 65535;

// Rows of the per-channel coefficient tensor (accumulation type, [kCoefRows, C]).
enum CoefRow { kScale = 0, kShift = 1, kGradA = 2, kGradB = 3, kGradD = 4, kMean = 5, kCoefRows = 6 };

struct BnGeo {
  int64_t P, C, HW, sN, sC, sQ;
  bool cl;
  SK_HOST_DEVICE int64_t off(int64_t p, int64_t c) const {
    const int64_t n = p / HW;
    return n * sN + c * sC + (p - n * HW) * sQ;
  }
};

// z = x * scale + shift [+ r] and its ReLU, one expression for the forward and the backward's mask.
template <typename Acc>
__device__ __forceinline__ Acc bn_pre_act(Acc x, Acc scale, Acc shift) {
  return x * scale + shift;
}

// What _bn_reduce sums per channel: the statistics (x - k, (x - k)^2; k = the channel's first value) or
// the backward's (gz, gz (x - mean)).
enum class Sums { kStats, kGrad };

// Grid: (position chunks, channel tiles).  NCHW: a warp reads 32 consecutive positions of one channel
// (threadIdx.y picks the channel) and reduces with shuffles; channels_last: a warp reads 32 consecutive
// channels of one position (threadIdx.y picks the position) and the 8 rows reduce through shared memory.
template <typename T, typename Acc, Sums kSums>
__global__ void _bn_reduce_kernel(SK_GLOBAL(const T) x, SK_GLOBAL(const T) g, SK_GLOBAL(const T) r,
                                  SK_GLOBAL(const Acc) coef, SK_GLOBAL(T) gr, SK_GLOBAL(Acc) partial, BnGeo geo,
                                  bool relu) {
  SK_SHARED(Acc, sh, [2][kRows][kWarp]);
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t tiles = gridDim.x;
  const int64_t p0 = blockIdx.x * kChunk;
  const int64_t p1 = p0 + kChunk < geo.P ? p0 + kChunk : geo.P;
  const int64_t c = geo.cl ? int64_t(blockIdx.y) * kWarp + tx : int64_t(blockIdx.y) * kRows + ty;
  const bool live = c < geo.C;
  Acc s1 = Acc(0), s2 = Acc(0);
  if (live) {
    Acc k = Acc(0), scale = Acc(0), shift = Acc(0);
    if (kSums == Sums::kStats) {
      k = Acc(x[geo.off(0, c)]);
    } else {
      k = coef[kMean * geo.C + c];
      scale = coef[kScale * geo.C + c];
      shift = coef[kShift * geo.C + c];
    }
    const int64_t first = p0 + (geo.cl ? ty : tx), step = geo.cl ? kRows : kWarp;
    for (int64_t p = first; p < p1; p += step) {
      const int64_t o = geo.off(p, c);
      const Acc xv = Acc(x[o]);
      if (kSums == Sums::kStats) {
        const Acc d = xv - k;
        s1 += d;
        s2 += d * d;
      } else {
        Acc gz = Acc(g[o]);
        if (relu) {
          Acc z = bn_pre_act(xv, scale, shift);
          if (r) z += Acc(r[o]);
          if (z <= Acc(0)) gz = Acc(0);
        }
        if (gr) gr[o] = T(gz);
        s1 += gz;
        s2 += gz * (xv - k);
      }
    }
  }
  if (!geo.cl) {
    for (int o = kWarp / 2; o > 0; o /= 2) {
      s1 += __shfl_xor_sync(0xFFFFFFFFu, s1, o);
      s2 += __shfl_xor_sync(0xFFFFFFFFu, s2, o);
    }
    if (tx == 0 && live) {
      partial[blockIdx.x * geo.C + c] = s1;
      partial[(tiles + blockIdx.x) * geo.C + c] = s2;
    }
    return;
  }
  sh[0][ty][tx] = s1;
  sh[1][ty][tx] = s2;
  __syncthreads();
  if (ty == 0 && live) {
    Acc a = Acc(0), b = Acc(0);
    for (int i = 0; i < kRows; ++i) {
      a += sh[0][i][tx];
      b += sh[1][i][tx];
    }
    partial[blockIdx.x * geo.C + c] = a;
    partial[(tiles + blockIdx.x) * geo.C + c] = b;
  }
}

// One thread a channel.  kStats: mean and var from the partials (or, without partials, the given running
// statistics), then scale and shift from the stored (rounded) mean and var.  kGrad: grad_weight, grad_bias
// and the grad_x coefficients.
template <typename T, typename Acc, Sums kSums>
__global__ void _bn_finalize_kernel(SK_GLOBAL(const Acc) partial, int64_t tiles, SK_GLOBAL(const T) x,
                                    SK_GLOBAL(T) mean, SK_GLOBAL(T) var, SK_GLOBAL(const T) weight,
                                    SK_GLOBAL(const T) bias, SK_GLOBAL(Acc) coef, SK_GLOBAL(T) grad_weight,
                                    SK_GLOBAL(T) grad_bias, BnGeo geo, double eps, bool training) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= geo.C) return;
  double s1 = 0.0, s2 = 0.0;
  for (int64_t t = 0; partial && t < tiles; ++t) {
    s1 += double(partial[t * geo.C + c]);
    s2 += double(partial[(tiles + t) * geo.C + c]);
  }
  const double m = double(geo.P);
  if (kSums == Sums::kStats && partial) {  // training forward: store the batch statistics
    const double d = s1 / m;
    const double v = s2 / m - d * d;
    mean[c] = T(double(x[geo.off(0, c)]) + d);
    var[c] = T(v > 0.0 ? v : 0.0);
  }
  const double w = weight ? double(weight[c]) : 1.0;
  const BnCoef k = bn_coefficients(double(mean[c]), double(var[c]), w, bias ? double(bias[c]) : 0.0, eps);
  coef[kScale * geo.C + c] = Acc(k.scale);
  coef[kShift * geo.C + c] = Acc(k.shift);
  coef[kMean * geo.C + c] = Acc(mean[c]);
  if (kSums == Sums::kGrad && partial) {
    if (grad_weight) grad_weight[c] = T(s2 * k.invstd);
    if (grad_bias) grad_bias[c] = T(s1);
    const BnGradCoef gk = bn_grad_coefficients(w, k.invstd, s1, s2, m, training);
    coef[kGradA * geo.C + c] = Acc(gk.a);
    coef[kGradB * geo.C + c] = Acc(gk.b);
    coef[kGradD * geo.C + c] = Acc(gk.d);
  }
}

// The elementwise passes walk the tensor as _bn_reduce does (grid: position chunks x channel tiles; a warp
// along the contiguous dimension), so that each thread keeps one channel and loads its coefficients once.
struct BnTile {
  int64_t c, first, end, step;
  __device__ BnTile(const BnGeo& geo) {
    const int tx = threadIdx.x, ty = threadIdx.y;
    c = geo.cl ? int64_t(blockIdx.y) * kWarp + tx : int64_t(blockIdx.y) * kRows + ty;
    const int64_t p0 = int64_t(blockIdx.x) * kChunk;
    first = p0 + (geo.cl ? ty : tx);
    end = p0 + kChunk < geo.P ? p0 + kChunk : geo.P;
    step = geo.cl ? kRows : kWarp;
  }
};

// y = relu(x * scale + shift [+ r]).
template <typename T, typename Acc>
__global__ void _bn_apply_kernel(SK_GLOBAL(const T) x, SK_GLOBAL(const T) r, SK_GLOBAL(const Acc) coef,
                                 SK_GLOBAL(T) y, BnGeo geo, bool relu) {
  const BnTile t(geo);
  if (t.c >= geo.C) return;
  const Acc scale = coef[kScale * geo.C + t.c], shift = coef[kShift * geo.C + t.c];
  for (int64_t p = t.first; p < t.end; p += t.step) {
    const int64_t o = geo.off(p, t.c);
    Acc z = bn_pre_act(Acc(x[o]), scale, shift);
    if (r) z += Acc(r[o]);
    if (relu && z <= Acc(0)) z = Acc(0);  // NaN stays NaN, as torch.relu
    y[o] = T(z);
  }
}

// grad_x = A gz + B (x - mean) + D.  src is gr (already dL/dz) when there is a residual, else grad_y with the
// ReLU mask recomputed.
template <typename T, typename Acc>
__global__ void _bn_grad_apply_kernel(SK_GLOBAL(const T) src, SK_GLOBAL(const T) x, SK_GLOBAL(const Acc) coef,
                                      SK_GLOBAL(T) gx, BnGeo geo, bool relu) {
  const BnTile t(geo);
  if (t.c >= geo.C) return;
  const int64_t C = geo.C, c = t.c;
  const Acc scale = coef[kScale * C + c], shift = coef[kShift * C + c], mean = coef[kMean * C + c];
  const Acc ca = coef[kGradA * C + c], cb = coef[kGradB * C + c], cd = coef[kGradD * C + c];
  for (int64_t p = t.first; p < t.end; p += t.step) {
    const int64_t o = geo.off(p, c);
    const Acc xv = Acc(x[o]);
    Acc gz = Acc(src[o]);
    if (relu && bn_pre_act(xv, scale, shift) <= Acc(0)) gz = Acc(0);
    gx[o] = T(gz * ca + (xv - mean) * cb + cd);
  }
}

// ---- tiles kept on chip (and the channels_last row streams) --------------------------------------------------
// A tile is `ct` channels [c0, c0 + ct) over positions [p0, p0 + np), in global memory `nspan` spans of `len`
// contiguous elements (span i at element off0 + i * stride), the unit a block reads in whole 32-byte sectors:
//   kTilePlanes  (NCHW)  one channel: the N planes of H*W elements
//   kTileSectors (channels_last, C * sizeof(T) a multiple of 32)  the 32 bytes of channels at each position
//   kTileRows    (channels_last otherwise)  every channel of a range of positions: one contiguous span
// In shared memory the tile is channel-major: element (local channel cl, local position pl) at cl * np + pl.
enum TileKind : int { kTilePlanes = 0, kTileSectors = 1, kTileRows = 2 };

struct BnTileSpan {
  int64_t c0, ct, p0, np, nspan, len, stride, off0, HW, C;
  int kind;
  __device__ BnTileSpan(const BnGeo& geo, int kind_, int64_t ct_, int64_t chunk) : HW(geo.HW), C(geo.C), kind(kind_) {
    const int64_t b = blockIdx.x;
    if (kind == kTilePlanes) {
      c0 = b, ct = 1, p0 = 0, np = geo.P, nspan = geo.P / geo.HW, len = geo.HW, stride = geo.sN, off0 = b * geo.sC;
    } else if (kind == kTileSectors) {
      c0 = b * ct_, ct = ct_, p0 = 0, np = geo.P, nspan = geo.P, len = ct_, stride = geo.C, off0 = c0;
    } else {
      c0 = 0, ct = geo.C, p0 = b * chunk, np = geo.P - p0 < chunk ? geo.P - p0 : chunk, nspan = 1, len = np * geo.C,
      stride = 0, off0 = p0 * geo.C;
    }
  }
  __device__ int64_t span_off(int64_t i) const { return off0 + i * stride; }
  // (span, element) -> shared-memory index (channel-major)
  __device__ int64_t sm(int64_t i, int64_t j) const {
    if (kind == kTilePlanes) return i * HW + j;
    if (kind == kTileSectors) return j * np + i;
    const int64_t pl = j / C;
    return (j - pl * C) * np + pl;
  }
  __device__ int64_t chan(int64_t j) const { return kind == kTileRows ? j % C : (kind == kTileSectors ? j : 0); }
};

// V elements at a time: one 16-byte vector (kVec) or one element.
template <typename T, bool kVec>
struct Vec {
  static constexpr int V = kVec ? 16 / int(sizeof(T)) : 1;
  T e[V];
  template <typename G>
  __device__ void load(G p, int64_t o) {
    if constexpr (kVec) {
      const uint4 u = SK_VCAST(const uint4, p + o)[0];
      memcpy(e, &u, sizeof(u));
    } else {
      e[0] = p[o];
    }
  }
  template <typename G>
  __device__ void store(G p, int64_t o) const {
    if constexpr (kVec) {
      uint4 u;
      memcpy(&u, e, sizeof(u));
      SK_VCAST(uint4, p + o)[0] = u;
    } else {
      p[o] = e[0];
    }
  }
};

// Calls f(span, element, global offset) for every V-element slot of the tile in buffer `buf`, the block's
// threads taking consecutive slots.  Slots are laid on the buffer's 32-byte sectors (each span padded to
// whole sectors, a span's first slot at the sector holding its first element), so a warp's request covers
// whole sectors of at most one span edge and no sector is read by two requests; lanes whose slot is padding
// sit the round out.  Every lane runs the same rounds, each ending at __syncwarp (the lanes of a warp issue a
// round's access together).
template <typename T, bool kVec, typename G, typename F>
__device__ void for_slots(G buf, const BnTileSpan& t, F f) {
  constexpr int64_t E = sizeof(T), SEC = 32 / E, V = Vec<T, kVec>::V;
  const uintptr_t base = SK_ADDR(buf);
  const bool uniform = t.nspan == 1 || (t.stride * E) % 32 == 0;  // every span at the same offset in its sector
  const int64_t mis_max = uniform ? int64_t((base + uintptr_t(t.off0 * E)) % 32) / E : SEC - V;
  const int64_t S = (mis_max + t.len + SEC - 1) / SEC * (SEC / V);  // slots a span
  const int64_t total = t.nspan * S;
  const int nt = blockDim.x, tid = threadIdx.x;
  for (int64_t s0 = 0; s0 < total; s0 += nt) {
    const int64_t s = s0 + tid;
    if (s < total) {
      const int64_t i = s / S, o0 = t.span_off(i);
      const int64_t mis = int64_t((base + uintptr_t(o0 * E)) % 32) / E;
      const int64_t j = (s - i * S) * V - mis;
      if (j >= 0 && j < t.len) f(i, j, o0 + j);
    }
    __syncwarp();
  }
}

// Per local channel, the sums over its np positions of f(cl, pl) = {a, b} into out1[cl], out2[cl] (shared
// memory): a power-of-two group of threads a channel, warp shuffles, then the group's warps through `red`
// in a fixed order.  Deterministic; ends with __syncthreads.
template <typename Acc>
struct Pair {
  Acc a, b;
};

template <typename Acc, typename F>
__device__ void channel_sums(int64_t ct, int64_t np, Acc* red, Acc* out1, Acc* out2, F f) {
  const int nt = blockDim.x, tid = threadIdx.x;
  int tpc = 1;
  while (int64_t(tpc) * 2 * ct <= nt) tpc *= 2;
  const int groups = nt / tpc, gi = tid / tpc, li = tid % tpc;
  const int64_t rounds = (ct + groups - 1) / groups;
  for (int64_t rd = 0; rd < rounds; ++rd) {
    const int64_t cl = gi + rd * groups;
    Acc a = Acc(0), b = Acc(0);
    if (cl < ct) {
      for (int64_t p = li; p < np; p += tpc) {
        const Pair<Acc> v = f(cl, p);
        a += v.a;
        b += v.b;
      }
    }
    const int w = tpc < 32 ? tpc : 32;
    for (int o = w / 2; o > 0; o /= 2) {
      a += __shfl_xor_sync(0xFFFFFFFFu, a, o);
      b += __shfl_xor_sync(0xFFFFFFFFu, b, o);
    }
    if (tpc > 32) {
      const int warps = nt / 32, gw = tpc / 32, warp = tid / 32;
      if (tid % 32 == 0) {
        red[warp] = a;
        red[warps + warp] = b;
      }
      __syncthreads();
      if (li == 0) {
        a = red[gi * gw];
        b = red[warps + gi * gw];
        for (int k = 1; k < gw; ++k) {
          a += red[gi * gw + k];
          b += red[warps + gi * gw + k];
        }
      }
      __syncthreads();
    }
    if (li == 0 && cl < ct) {
      out1[cl] = a;
      out2[cl] = b;
    }
  }
  __syncthreads();
}

// Shared-memory layout of the tile kernels: `nacc` accumulation-type arrays of ct, the reduction scratch,
// then `ntiles` caches of ct * np elements of T.
struct SmemPlan {
  int64_t acc_bytes, tile_bytes;
  SK_HOST_DEVICE static int64_t up16(int64_t b) { return (b + 15) / 16 * 16; }
  SK_HOST_DEVICE SmemPlan(int64_t nacc, int64_t ct, int64_t np, int64_t acc_size, int64_t t_size)
      : acc_bytes(up16((nacc * ct + 2 * (kBigThreads / 32)) * acc_size)), tile_bytes(up16(ct * np * t_size)) {}
  SK_HOST_DEVICE int64_t total(int64_t ntiles) const { return acc_bytes + ntiles * tile_bytes; }
};

// Reads the tile of x (its 32-byte sectors, through for_slots) into the channel-major shared-memory copy xs.
template <typename T, bool kVec, typename G>
__device__ void load_tile(G x, const BnTileSpan& t, T* xs) {
  using VT = Vec<T, kVec>;
  for_slots<T, kVec>(x, t, [&](int64_t i, int64_t j, int64_t o) {
    VT v;
    v.load(x, o);
    for (int k = 0; k < VT::V; ++k) xs[t.sm(i, j + k)] = v.e[k];
  });
}

// Reads the tile of grad_y into gs as dL/dz: with the ReLU, 0 where the pre-activation recomputed from the
// cached x (xs; scale[cl], shift[cl] per local channel; + r) is <= 0.  Writes it to gr too when wanted.
template <typename T, typename Acc, bool kVec, typename G, typename GR>
__device__ void load_grad_tile(G g, G r, GR gr, const BnTileSpan& t, const T* xs, const Acc* scale,
                               const Acc* shift, bool relu, T* gs) {
  using VT = Vec<T, kVec>;
  const bool use_r = relu && r;
  for_slots<T, kVec>(g, t, [&](int64_t i, int64_t j, int64_t o) {
    VT gv, rv{};  // rv is read only with use_r ({}: gcc cannot tell)
    gv.load(g, o);
    if (use_r) rv.load(r, o);
    for (int k = 0; k < VT::V; ++k) {
      const int64_t cl = t.chan(j + k), m = t.sm(i, j + k);
      if (relu) {
        Acc z = bn_pre_act(Acc(xs[m]), scale[cl], shift[cl]);
        if (use_r) z += Acc(rv.e[k]);
        if (z <= Acc(0)) gv.e[k] = T(0);
      }
      gs[m] = gv.e[k];
    }
    if (gr) gv.store(gr, o);
  });
}

// Training forward with the tile on chip: one block a tile reads x once into shared memory, takes the
// channels' mean and variance from there (two passes over shared memory: the mean, then the squared
// deviations), stores mean and var, and writes y = relu(x * scale + shift [+ r]) from the cache.
template <typename T, typename Acc, bool kVec>
__global__ void __launch_bounds__(kBigThreads) _bn_cached_fwd_kernel(
    SK_GLOBAL(const T) x, SK_GLOBAL(const T) r, SK_GLOBAL(const T) weight, SK_GLOBAL(const T) bias,
    SK_GLOBAL(T) mean, SK_GLOBAL(T) var, SK_GLOBAL(T) y, BnGeo geo, int kind, int64_t ct_, double eps, bool relu) {
  SK_DYNAMIC_SHARED(unsigned char, smem);
  const BnTileSpan t(geo, kind, ct_, geo.P);
  const int64_t ct = t.ct, np = t.np;
  const SmemPlan plan(3, ct, np, sizeof(Acc), sizeof(T));
  Acc* s1 = reinterpret_cast<Acc*>(smem);  // [ct] sums, then scale
  Acc* s2 = s1 + ct;                       // [ct] sums, then shift
  Acc* mu = s2 + ct;                       // [ct] mean
  Acc* red = mu + ct;
  T* xs = reinterpret_cast<T*>(smem + plan.acc_bytes);
  using VT = Vec<T, kVec>;
  load_tile<T, kVec>(x, t, xs);
  __syncthreads();
  channel_sums<Acc>(ct, np, red, s1, s2, [&](int64_t cl, int64_t p) { return Pair<Acc>{Acc(xs[cl * np + p]), Acc(0)}; });
  for (int64_t cl = threadIdx.x; cl < ct; cl += blockDim.x) mu[cl] = s1[cl] / Acc(np);
  __syncthreads();
  channel_sums<Acc>(ct, np, red, s1, s2, [&](int64_t cl, int64_t p) {
    const Acc d = Acc(xs[cl * np + p]) - mu[cl];
    return Pair<Acc>{d * d, Acc(0)};
  });
  for (int64_t cl = threadIdx.x; cl < ct; cl += blockDim.x) {
    const int64_t c = t.c0 + cl;
    const T mt = T(mu[cl]), vt = T(s1[cl] / Acc(np));
    mean[c] = mt;
    var[c] = vt;
    const BnCoef k = bn_coefficients(double(mt), double(vt), weight ? double(weight[c]) : 1.0,
                                     bias ? double(bias[c]) : 0.0, eps);
    s1[cl] = Acc(k.scale);
    s2[cl] = Acc(k.shift);
  }
  __syncthreads();
  for_slots<T, kVec>(y, t, [&](int64_t i, int64_t j, int64_t o) {
    VT rv, out;
    if (r) rv.load(r, o);
    for (int k = 0; k < VT::V; ++k) {
      const int64_t cl = t.chan(j + k);
      Acc z = bn_pre_act(Acc(xs[t.sm(i, j + k)]), s1[cl], s2[cl]);
      if (r) z += Acc(rv.e[k]);
      if (relu && z <= Acc(0)) z = Acc(0);
      out.e[k] = T(z);
    }
    out.store(y, o);
  });
}

// The backward with the tile on chip: x and dL/dz (grad_y masked by the recomputed ReLU) stay in shared
// memory between the sums and grad_x; grad_residual (= dL/dz) is written as it is formed, never read back.
template <typename T, typename Acc, bool kVec>
__global__ void __launch_bounds__(kBigThreads) _bn_cached_bwd_kernel(
    SK_GLOBAL(const T) g, SK_GLOBAL(const T) x, SK_GLOBAL(const T) r, SK_GLOBAL(const T) weight,
    SK_GLOBAL(const T) bias, SK_GLOBAL(const T) mean, SK_GLOBAL(const T) var, SK_GLOBAL(T) gx, SK_GLOBAL(T) gr,
    SK_GLOBAL(T) grad_weight, SK_GLOBAL(T) grad_bias, BnGeo geo, int kind, int64_t ct_, double eps, bool relu,
    bool training) {
  SK_DYNAMIC_SHARED(unsigned char, smem);
  const BnTileSpan t(geo, kind, ct_, geo.P);
  const int64_t ct = t.ct, np = t.np;
  const SmemPlan plan(kCoefRows + 2, ct, np, sizeof(Acc), sizeof(T));
  Acc* cf = reinterpret_cast<Acc*>(smem);  // [kCoefRows][ct]
  Acc* s1 = cf + kCoefRows * ct;
  Acc* s2 = s1 + ct;
  Acc* red = s2 + ct;
  T* xs = reinterpret_cast<T*>(smem + plan.acc_bytes);
  T* gs = reinterpret_cast<T*>(smem + plan.acc_bytes + plan.tile_bytes);
  using VT = Vec<T, kVec>;
  for (int64_t cl = threadIdx.x; cl < ct; cl += blockDim.x) {
    const int64_t c = t.c0 + cl;
    const BnCoef k = bn_coefficients(double(mean[c]), double(var[c]), weight ? double(weight[c]) : 1.0,
                                     bias ? double(bias[c]) : 0.0, eps);
    cf[kScale * ct + cl] = Acc(k.scale);
    cf[kShift * ct + cl] = Acc(k.shift);
    cf[kMean * ct + cl] = Acc(mean[c]);
  }
  load_tile<T, kVec>(x, t, xs);
  __syncthreads();
  load_grad_tile<T, Acc, kVec>(g, r, gr, t, xs, cf + kScale * ct, cf + kShift * ct, relu, gs);
  __syncthreads();
  channel_sums<Acc>(ct, np, red, s1, s2, [&](int64_t cl, int64_t p) {
    const Acc gz = Acc(gs[cl * np + p]);
    return Pair<Acc>{gz, gz * (Acc(xs[cl * np + p]) - cf[kMean * ct + cl])};
  });
  for (int64_t cl = threadIdx.x; cl < ct; cl += blockDim.x) {
    const int64_t c = t.c0 + cl;
    const double w = weight ? double(weight[c]) : 1.0;
    const double invstd = 1.0 / sqrt(double(var[c]) + eps);
    const double sg = double(s1[cl]), sgx = double(s2[cl]);
    if (grad_weight) grad_weight[c] = T(sgx * invstd);
    if (grad_bias) grad_bias[c] = T(sg);
    const BnGradCoef gk = bn_grad_coefficients(w, invstd, sg, sgx, double(np), training);
    cf[kGradA * ct + cl] = Acc(gk.a);
    cf[kGradB * ct + cl] = Acc(gk.b);
    cf[kGradD * ct + cl] = Acc(gk.d);
  }
  __syncthreads();
  if (!gx) return;
  for_slots<T, kVec>(gx, t, [&](int64_t i, int64_t j, int64_t o) {
    VT out;
    for (int k = 0; k < VT::V; ++k) {
      const int64_t cl = t.chan(j + k), m = t.sm(i, j + k);
      out.e[k] = T(Acc(gs[m]) * cf[kGradA * ct + cl] + (Acc(xs[m]) - cf[kMean * ct + cl]) * cf[kGradB * ct + cl] +
                   cf[kGradD * ct + cl]);
    }
    out.store(gx, o);
  });
}

// channels_last with rows that are not whole sectors (C * sizeof(T) not a multiple of 32), too large to keep
// on chip: a block takes `chunk` positions (every channel: one contiguous span) through shared memory and
// writes the chunk's per-channel partial sums, as _bn_reduce_kernel does (kStats: x - k, (x - k)^2 with k the
// channel's first value; kGrad: gz, gz (x - mean), writing gr = gz).
template <typename T, typename Acc, bool kVec, Sums kSums>
__global__ void __launch_bounds__(kThreads) _bn_rows_reduce_kernel(
    SK_GLOBAL(const T) x, SK_GLOBAL(const T) g, SK_GLOBAL(const T) r, SK_GLOBAL(const Acc) coef, SK_GLOBAL(T) gr,
    SK_GLOBAL(Acc) partial, BnGeo geo, int64_t chunk, bool relu) {
  SK_DYNAMIC_SHARED(unsigned char, smem);
  const BnTileSpan t(geo, kTileRows, geo.C, chunk);
  const int64_t ct = t.ct, np = t.np, tiles = gridDim.x;
  const SmemPlan plan(5, ct, chunk, sizeof(Acc), sizeof(T));
  Acc* cf = reinterpret_cast<Acc*>(smem);  // kStats: k; kGrad: scale, shift, mean
  Acc* s1 = cf + 3 * ct;
  Acc* s2 = s1 + ct;
  Acc* red = s2 + ct;
  T* xs = reinterpret_cast<T*>(smem + plan.acc_bytes);
  T* gs = reinterpret_cast<T*>(smem + plan.acc_bytes + plan.tile_bytes);
  for (int64_t c = threadIdx.x; c < ct; c += blockDim.x) {
    if (kSums == Sums::kStats) {
      cf[c] = Acc(x[geo.off(0, c)]);
    } else {
      cf[c] = coef[kScale * geo.C + c];
      cf[ct + c] = coef[kShift * geo.C + c];
      cf[2 * ct + c] = coef[kMean * geo.C + c];
    }
  }
  load_tile<T, kVec>(x, t, xs);
  __syncthreads();
  if (kSums == Sums::kStats) {
    channel_sums<Acc>(ct, np, red, s1, s2, [&](int64_t cl, int64_t p) {
      const Acc d = Acc(xs[cl * np + p]) - cf[cl];
      return Pair<Acc>{d, d * d};
    });
  } else {
    load_grad_tile<T, Acc, kVec>(g, r, gr, t, xs, cf, cf + ct, relu, gs);
    __syncthreads();
    channel_sums<Acc>(ct, np, red, s1, s2, [&](int64_t cl, int64_t p) {
      const Acc gz = Acc(gs[cl * np + p]);
      return Pair<Acc>{gz, gz * (Acc(xs[cl * np + p]) - cf[2 * ct + cl])};
    });
  }
  for (int64_t c = threadIdx.x; c < ct; c += blockDim.x) {
    partial[blockIdx.x * geo.C + c] = s1[c];
    partial[(tiles + blockIdx.x) * geo.C + c] = s2[c];
  }
}

// The elementwise passes over such rows (y, or grad_x from src = gr or the masked grad_y), the chunk's
// coefficients for every channel in shared memory.
template <typename T, typename Acc, bool kVec, bool kGrad>
__global__ void __launch_bounds__(kThreads) _bn_rows_apply_kernel(
    SK_GLOBAL(const T) src, SK_GLOBAL(const T) x, SK_GLOBAL(const T) r, SK_GLOBAL(const Acc) coef, SK_GLOBAL(T) out,
    BnGeo geo, int64_t chunk, bool relu) {
  SK_DYNAMIC_SHARED(unsigned char, smem);
  const BnTileSpan t(geo, kTileRows, geo.C, chunk);
  const int64_t C = geo.C;
  Acc* cf = reinterpret_cast<Acc*>(smem);  // [kCoefRows][C]
  const int rows = kGrad ? kCoefRows : 2;
  for (int64_t i = threadIdx.x; i < rows * C; i += blockDim.x) cf[i] = coef[i];
  __syncthreads();
  using VT = Vec<T, kVec>;
  for_slots<T, kVec>(out, t, [&](int64_t, int64_t j, int64_t o) {
    VT xv, sv, rv, res;
    xv.load(x, o);
    if (kGrad) sv.load(src, o);
    if (!kGrad && r) rv.load(r, o);
    for (int k = 0; k < VT::V; ++k) {
      const int64_t c = t.chan(j + k);
      const Acc xa = Acc(xv.e[k]);
      if (kGrad) {
        Acc gz = Acc(sv.e[k]);
        if (relu && bn_pre_act(xa, cf[kScale * C + c], cf[kShift * C + c]) <= Acc(0)) gz = Acc(0);
        res.e[k] = T(gz * cf[kGradA * C + c] + (xa - cf[kMean * C + c]) * cf[kGradB * C + c] + cf[kGradD * C + c]);
      } else {
        Acc z = bn_pre_act(xa, cf[kScale * C + c], cf[kShift * C + c]);
        if (r) z += Acc(rv.e[k]);
        if (relu && z <= Acc(0)) z = Acc(0);
        res.e[k] = T(z);
      }
    }
    res.store(out, o);
  });
}

// ---- host ---------------------------------------------------------------------------------------------------
bool cuda_dtype(const at::Tensor& x) {
  const auto t = x.scalar_type();
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}
constexpr const char* kCudaDtypes = "the CUDA kernel takes float32, float64, float16 or bfloat16 x";

BnGeo geo_of(const at::Tensor& x, at::MemoryFormat fmt) {
  return BnGeo{x.size(0) * x.size(2) * x.size(3), x.size(1), x.size(2) * x.size(3), x.stride(0), x.stride(1),
               x.stride(3), fmt == at::MemoryFormat::ChannelsLast};
}

dim3 reduce_grid(const BnGeo& geo) {
  const int64_t ctile = geo.cl ? kWarp : kRows;
  const int64_t cy = (geo.C + ctile - 1) / ctile;
  TORCH_CHECK_VALUE(cy <= kMaxGridY, kOp, ": too many channels for the CUDA grid (", geo.C, ")");
  return dim3(unsigned((geo.P + kChunk - 1) / kChunk), unsigned(cy));
}

dim3 channel_grid(int64_t c) { return dim3(unsigned((c + kApplyThreads - 1) / kApplyThreads)); }

at::ScalarType acc_type(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

template <typename T>
T* opt_ptr(const at::Tensor& t) {
  return t.defined() ? SK_RT::dptr<T>(t) : nullptr;
}

// Which tile a block keeps on chip (see BnTileSpan), and whether the activations fit there.
struct TilePlan {
  int kind;
  int64_t ct, tiles;
};

TilePlan tile_plan(const BnGeo& geo, int64_t esize) {
  if (!geo.cl) return {kTilePlanes, 1, geo.C};
  if ((geo.C * esize) % 32 == 0) return {kTileSectors, 32 / esize, geo.C / (32 / esize)};
  return {kTileRows, geo.C, 1};
}

// Shared memory a block may have: the device's opt-in maximum (the emulator models an H100: 227 KiB).
int64_t smem_limit() {
#if defined(__CUDACC__)
  return int64_t(at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin);
#else
  return int64_t(::sk_emu::kSharedBytes);
#endif
}

// Whether `ntiles` caches of the whole tile (x; x and dL/dz) fit kCacheBudget and the device; *smem: the
// launch's shared memory.
bool fits_on_chip(const TilePlan& tp, const BnGeo& geo, int64_t esize, int64_t acc_size, int ntiles, int nacc,
                  int64_t* smem, int* threads) {
  const SmemPlan sp(nacc, tp.ct, geo.P, acc_size, esize);
  *smem = sp.total(ntiles);
  *threads = ntiles * sp.tile_bytes >= kBigTile ? kBigThreads : kThreads;
  return ntiles * sp.tile_bytes <= kCacheBudget && *smem <= smem_limit();
}

// Positions a block of the channels_last row streams takes (a multiple that keeps chunks on 32-byte
// boundaries), or 0 when such a chunk would not fit the staging budget.
int64_t rows_chunk(const BnGeo& geo, int64_t esize, int ntiles) {
  const int64_t row = geo.C * esize, q = 32 / std::gcd(row, int64_t(32));
  const int64_t chunk = kRowsStage / (ntiles * row) / q * q;
  return chunk;
}

// 16-byte vectors when every buffer and every span start is 16-byte aligned and spans are whole vectors.
bool vec_ok(const TilePlan& tp, const BnGeo& geo, int64_t esize, std::initializer_list<at::Tensor> ts) {
  for (const at::Tensor& t : ts)
    if (t.defined() && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0) return false;
  if (tp.kind == kTilePlanes) return (geo.HW * esize) % 16 == 0;
  if (tp.kind == kTileRows) return (geo.C * esize) % 16 == 0;
  return true;
}

template <typename F>
void with_vec(bool vec, F&& f) {
  if (vec) f(std::true_type{});
  else f(std::false_type{});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cuda(
    const at::Tensor& x_in, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool training, double eps, bool relu) {
  check_x(x_in, training, cuda_dtype(x_in), kCudaDtypes);
  check_eps(eps);
  SK_RT::Guard guard(x_in.device());
  const auto fmt = format_of(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  const at::Tensor w = channel_param(weight, "weight", x), b = channel_param(bias, "bias", x);
  const at::Tensor r = like_x(residual, "residual", x, fmt);
  at::Tensor mean, var, stats_mean, stats_var;
  if (training) {
    mean = stats_mean = at::empty({x.size(1)}, x.options());
    var = stats_var = at::empty({x.size(1)}, x.options());
  } else {
    check_running(running_mean, running_var);
    mean = channel_param(running_mean, "running_mean", x);
    var = channel_param(running_var, "running_var", x);
    stats_mean = at::empty({0}, x.options());
    stats_var = at::empty({0}, x.options());
  }
  at::Tensor y = at::empty_like(x, fmt);
  if (x.numel() == 0) return {y, stats_mean, stats_var};
  const BnGeo geo = geo_of(x, fmt);
  const int64_t esize = x.element_size(), acc_size = at::elementSize(acc_type(x));
  const TilePlan tp = tile_plan(geo, esize);
  const bool vec = vec_ok(tp, geo, esize, {x, r, y});
  int64_t smem = 0;
  int threads = kThreads;
  if (training && fits_on_chip(tp, geo, esize, acc_size, 1, 3, &smem, &threads)) {
    // x read once: statistics and y from the block's shared memory
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_act_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      with_vec(vec, [&](auto v) {
        SK_LAUNCH((_bn_cached_fwd_kernel<scalar_t, acc_t, decltype(v)::value>), dim3(unsigned(tp.tiles)),
                  dim3(threads), size_t(smem), SK_RT::dptr<scalar_t>(x), opt_ptr<scalar_t>(r), opt_ptr<scalar_t>(w),
                  opt_ptr<scalar_t>(b), SK_RT::dptr<scalar_t>(mean), SK_RT::dptr<scalar_t>(var),
                  SK_RT::dptr<scalar_t>(y), geo, tp.kind, tp.ct, eps, relu);
      });
    });
    return {y, stats_mean, stats_var};
  }
  // Streamed: statistics, then y (channels_last rows that are not whole sectors through the row kernels).
  const int64_t chunk = tp.kind == kTileRows ? rows_chunk(geo, esize, 1) : 0;
  const bool rows = chunk > 0 && SmemPlan(kCoefRows, geo.C, 0, acc_size, esize).total(0) <= smem_limit();
  const int64_t rows_smem = rows ? SmemPlan(5, geo.C, chunk, acc_size, esize).total(1) : 0;
  const int64_t rtiles = rows ? (geo.P + chunk - 1) / chunk : 0;
  const dim3 rgrid = rows ? dim3(unsigned(rtiles)) : reduce_grid(geo);
  const int64_t tiles = rows ? rtiles : int64_t(rgrid.x);
  at::Tensor coef = at::empty({kCoefRows, geo.C}, x.options().dtype(acc_type(x)));
  at::Tensor partial = training ? at::empty({2, tiles, geo.C}, coef.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_act_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_vec(vec, [&](auto v) {
      constexpr bool kVec = decltype(v)::value;
      if (training && rows) {
        SK_LAUNCH((_bn_rows_reduce_kernel<scalar_t, acc_t, kVec, Sums::kStats>), rgrid, dim3(kThreads),
                  size_t(rows_smem), SK_RT::dptr<scalar_t>(x), (const scalar_t*)nullptr, (const scalar_t*)nullptr,
                  (const acc_t*)nullptr, (scalar_t*)nullptr, SK_RT::dptr<acc_t>(partial), geo, chunk, false);
      } else if (training) {
        SK_LAUNCH((_bn_reduce_kernel<scalar_t, acc_t, Sums::kStats>), rgrid, dim3(kWarp, kRows), 0,
                  SK_RT::dptr<scalar_t>(x), (const scalar_t*)nullptr, (const scalar_t*)nullptr,
                  (const acc_t*)nullptr, (scalar_t*)nullptr, SK_RT::dptr<acc_t>(partial), geo, false);
      }
      SK_LAUNCH((_bn_finalize_kernel<scalar_t, acc_t, Sums::kStats>), channel_grid(geo.C), dim3(kApplyThreads), 0,
                opt_ptr<acc_t>(partial), tiles, SK_RT::dptr<scalar_t>(x), SK_RT::dptr<scalar_t>(mean),
                SK_RT::dptr<scalar_t>(var), opt_ptr<scalar_t>(w), opt_ptr<scalar_t>(b), SK_RT::dptr<acc_t>(coef),
                (scalar_t*)nullptr, (scalar_t*)nullptr, geo, eps, training);
      if (rows) {
        SK_LAUNCH((_bn_rows_apply_kernel<scalar_t, acc_t, kVec, false>), rgrid, dim3(kThreads),
                  size_t(2 * geo.C * acc_size), (const scalar_t*)nullptr, SK_RT::dptr<scalar_t>(x),
                  opt_ptr<scalar_t>(r), SK_RT::dptr<acc_t>(coef), SK_RT::dptr<scalar_t>(y), geo, chunk, relu);
      } else {
        SK_LAUNCH((_bn_apply_kernel<scalar_t, acc_t>), reduce_grid(geo), dim3(kWarp, kRows), 0,
                  SK_RT::dptr<scalar_t>(x), opt_ptr<scalar_t>(r), SK_RT::dptr<acc_t>(coef), SK_RT::dptr<scalar_t>(y),
                  geo, relu);
      }
    });
  });
  return {y, stats_mean, stats_var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x_in, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual, const at::Tensor& mean_in,
    const at::Tensor& var_in, bool training, double eps, bool relu, std::array<bool, 4> mask) {
  check_x(x_in, training, cuda_dtype(x_in), kCudaDtypes);
  check_eps(eps);
  SK_RT::Guard guard(x_in.device());
  const auto fmt = format_of(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  const at::Tensor g = like_x(grad_y, "grad_y", x, fmt);
  TORCH_CHECK_VALUE(g.defined(), kOp, ": grad_y is required");
  const at::Tensor w = channel_param(weight, "weight", x), b = channel_param(bias, "bias", x);
  const at::Tensor r = like_x(residual, "residual", x, fmt);
  const at::Tensor mean = channel_param(mean_in, "mean", x), var = channel_param(var_in, "var", x);
  TORCH_CHECK_VALUE(mean.defined() && var.defined(), kOp, ": the backward needs mean and var of length C");
  BnGrads grads(x, r, fmt, mask);
  const at::Tensor &gx = grads.gx, &gr = grads.gr, &gw = grads.gw, &gb = grads.gb;
  if (!grads.any(x)) return grads.result(x, mask);
  const BnGeo geo = geo_of(x, fmt);
  const int64_t esize = x.element_size(), acc_size = at::elementSize(acc_type(x));
  const TilePlan tp = tile_plan(geo, esize);
  const bool vec = vec_ok(tp, geo, esize, {g, x, r, gx, gr});
  int64_t smem = 0;
  int threads = kThreads;
  if (fits_on_chip(tp, geo, esize, acc_size, 2, kCoefRows + 2, &smem, &threads)) {
    // g, x, r read once, gx and gr written once: x and dL/dz stay in the block's shared memory
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_act_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      with_vec(vec, [&](auto v) {
        SK_LAUNCH((_bn_cached_bwd_kernel<scalar_t, acc_t, decltype(v)::value>), dim3(unsigned(tp.tiles)),
                  dim3(threads), size_t(smem), SK_RT::dptr<scalar_t>(g), SK_RT::dptr<scalar_t>(x),
                  opt_ptr<scalar_t>(r), opt_ptr<scalar_t>(w), opt_ptr<scalar_t>(b), SK_RT::dptr<scalar_t>(mean),
                  SK_RT::dptr<scalar_t>(var), opt_ptr<scalar_t>(gx), opt_ptr<scalar_t>(gr), opt_ptr<scalar_t>(gw),
                  opt_ptr<scalar_t>(gb), geo, tp.kind, tp.ct, eps, relu, training);
      });
    });
    return grads.result(x, mask);
  }
  // Streamed: the sums (writing gr), then grad_x re-reading x and dL/dz (gr, or grad_y re-masked).
  const int64_t chunk = tp.kind == kTileRows ? rows_chunk(geo, esize, 2) : 0;
  const bool rows = chunk > 0 && SmemPlan(kCoefRows, geo.C, 0, acc_size, esize).total(0) <= smem_limit();
  const int64_t rows_smem = rows ? SmemPlan(5, geo.C, chunk, acc_size, esize).total(2) : 0;
  const int64_t rtiles = rows ? (geo.P + chunk - 1) / chunk : 0;
  const dim3 rgrid = rows ? dim3(unsigned(rtiles)) : reduce_grid(geo);
  const int64_t tiles = rows ? rtiles : int64_t(rgrid.x);
  at::Tensor coef = at::empty({kCoefRows, geo.C}, x.options().dtype(acc_type(x)));
  at::Tensor partial = at::empty({2, tiles, geo.C}, coef.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_act_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_vec(vec, [&](auto v) {
      constexpr bool kVec = decltype(v)::value;
      // scale, shift, mean for the mask and the sums
      SK_LAUNCH((_bn_finalize_kernel<scalar_t, acc_t, Sums::kGrad>), channel_grid(geo.C), dim3(kApplyThreads), 0,
                (const acc_t*)nullptr, int64_t(0), SK_RT::dptr<scalar_t>(x), SK_RT::dptr<scalar_t>(mean),
                SK_RT::dptr<scalar_t>(var), opt_ptr<scalar_t>(w), opt_ptr<scalar_t>(b), SK_RT::dptr<acc_t>(coef),
                (scalar_t*)nullptr, (scalar_t*)nullptr, geo, eps, training);
      if (rows) {
        SK_LAUNCH((_bn_rows_reduce_kernel<scalar_t, acc_t, kVec, Sums::kGrad>), rgrid, dim3(kThreads),
                  size_t(rows_smem), SK_RT::dptr<scalar_t>(x), SK_RT::dptr<scalar_t>(g), opt_ptr<scalar_t>(r),
                  SK_RT::dptr<acc_t>(coef), opt_ptr<scalar_t>(gr), SK_RT::dptr<acc_t>(partial), geo, chunk, relu);
      } else {
        SK_LAUNCH((_bn_reduce_kernel<scalar_t, acc_t, Sums::kGrad>), rgrid, dim3(kWarp, kRows), 0,
                  SK_RT::dptr<scalar_t>(x), SK_RT::dptr<scalar_t>(g), opt_ptr<scalar_t>(r), SK_RT::dptr<acc_t>(coef),
                  opt_ptr<scalar_t>(gr), SK_RT::dptr<acc_t>(partial), geo, relu);
      }
      SK_LAUNCH((_bn_finalize_kernel<scalar_t, acc_t, Sums::kGrad>), channel_grid(geo.C), dim3(kApplyThreads), 0,
                SK_RT::dptr<acc_t>(partial), tiles, SK_RT::dptr<scalar_t>(x), SK_RT::dptr<scalar_t>(mean),
                SK_RT::dptr<scalar_t>(var), opt_ptr<scalar_t>(w), opt_ptr<scalar_t>(b), SK_RT::dptr<acc_t>(coef),
                opt_ptr<scalar_t>(gw), opt_ptr<scalar_t>(gb), geo, eps, training);
      if (mask[0]) {
        const bool from_gr = gr.defined();
        if (rows) {
          SK_LAUNCH((_bn_rows_apply_kernel<scalar_t, acc_t, kVec, true>), rgrid, dim3(kThreads),
                    size_t(kCoefRows * geo.C * acc_size), SK_RT::dptr<scalar_t>(from_gr ? gr : g),
                    SK_RT::dptr<scalar_t>(x), (const scalar_t*)nullptr, SK_RT::dptr<acc_t>(coef),
                    SK_RT::dptr<scalar_t>(gx), geo, chunk, relu && !from_gr);
        } else {
          SK_LAUNCH((_bn_grad_apply_kernel<scalar_t, acc_t>), rgrid, dim3(kWarp, kRows), 0,
                    SK_RT::dptr<scalar_t>(from_gr ? gr : g), SK_RT::dptr<scalar_t>(x), SK_RT::dptr<acc_t>(coef),
                    SK_RT::dptr<scalar_t>(gx), geo, relu && !from_gr);
        }
      }
    });
  });
  return grads.result(x, mask);
}

}  // namespace

SK_DEVICE_IMPL(m) {
  m.impl("batch_norm_act", &forward_cuda);
  m.impl("batch_norm_act_backward", &backward_cuda);
}

}  // namespace shufflekern::SK_DEV_NS
