// CUDA entry points and kernels of shufflekern::shuffle_conv1x1 and its backward ops.
//
// Pixels p = n*H*W + hw are GEMM rows; element (n, c, hw) lives at n*s_n + c*s_c + hw*s_hw (NCHW and
// channels_last).  Accumulation in at::opmath_type (float for half/bf16).  The shuffle is the gather of x's
// channels through sconv_src_channel (csrc/shuffle_conv1x1.h), a free index remap:
//   y[p, k*Mg + m]       = sum_j x[p, src(k, j)] * W[k*Mg + m, j] (+ b)
//   gx[p, src(k, j)]     = sum_m gy[p, k*Mg + m] * W[k*Mg + m, j]      (each x channel written once)
//   gW[k*Mg + m, j]      = sum_p gy[p, k*Mg + m] * x[p, src(k, j)]     (one owner a sum, deterministic)
// Forward and grad_input: a block computes ALL outputs of a group for a tile of pixels, so activations are
// read once and written once (see sconv_gemm); grad_weight reads x and gy once per pixel slice.  The backward
// op (what the autograd calls) is one launch whose blocks split by role: grad_x tiles, and grad_W tiles that sum
// over all pixels (or a few slices, then summed in order by a second kernel), so no per-tile partial grad_W goes
// through DRAM (see "backward in one launch").  Plans are chosen from the modeled memory traffic (see "plans").  Loads and stores run along the contiguous dimension (pixels in NCHW,
// channel runs in channels_last).  In channels_last a second family of kernels (_shuffle_conv1x1_cl_*) tiles
// pixels over ALL groups, so whole channel vectors are read and written once (see cl_gemm); the planner picks
// the family of least modeled time.
//
// Written against csrc/cuda/runtime.h: nvcc builds it for CUDA tensors, csrc/emu/shuffle_conv1x1.cpp runs the
// same source under the emulator.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <vector>

#include "checks.h"
#include "cuda/runtime.h"
#include "shuffle_conv1x1.h"

namespace shufflekern::SK_DEV_NS {
namespace {

constexpr int64_t kMaxGridY = 65535;

struct Layout {
  int64_t hw, s_n, s_c, s_hw;
  __device__ int64_t pixel(int64_t p) const {
    const int64_t n = p / hw;
    return n * s_n + (p - n * hw) * s_hw;
  }
};

Layout layout_of(const at::Tensor& t) { return Layout{t.size(2) * t.size(3), t.stride(0), t.stride(1), t.stride(3)}; }

struct Dims {
  int64_t pixels, cg, mg, sg, cs;
};

// NCHW planes that start at the same offset in a sector: channel and image strides whole sectors.
template <typename T>
__device__ __forceinline__ bool uniform_rows(const Layout& l) {
  const int64_t E = 32 / int64_t(sizeof(T));
  return l.s_c % E == 0 && l.s_n % E == 0;
}

// The byte address a global pointer holds (gptr under the emulator).
template <typename P>
__device__ __forceinline__ uintptr_t address_of(const P& p) {
#if defined(__CUDACC__)
  return reinterpret_cast<uintptr_t>(p);
#else
  return reinterpret_cast<uintptr_t>(p.get());
#endif
}

// NCHW rows with aligned requests.  The TP pixels [p0, p0 + TP) of one channel plane (TP: the tile's pixels that
// exist, so no lane skips an access at the end of the tensor) are one contiguous segment
// an image; a row (one channel) is laid out in slots, each segment's slots starting on a multiple of E (the
// elements of a 32-byte sector) and its first element at slot (its address mod E), so a warp's 32 consecutive
// slots cover whole aligned sectors of each segment and no sector is split between two requests (an H*W of 196
// or 49 fp32 starts half the planes mid-sector).  A padding slot accesses its segment's nearest element again
// (a sector the request moves anyway; a store writes the same value twice), so that every lane of a warp makes
// the same accesses in the same order, as a GPU's predicated lanes would issue them.  Used when H*W >= 32 (the
// padding is at most 2E - 2 slots a segment).
struct AlignedRows {
  int64_t p0, TP, hw, E, L0, s0, sf, slots;
  // uniform: every row's segments start at the same offsets in their sectors (channel and image strides whole
  // sectors), given by row 0 (elem0: its element offsets); then a segment's slots are exactly its sectors'
  // elements, else up to E - 1 more.
  template <typename F>
  __device__ AlignedRows(int64_t p0_, int64_t TP_, int64_t hw_, int64_t E_, bool uniform, uintptr_t base, int64_t t,
                         F elem0)
      : p0(p0_), TP(TP_), hw(hw_), E(E_) {
    L0 = TP < hw - p0 % hw ? TP : hw - p0 % hw;
    int64_t m0 = E - 1, m1 = E - 1;
    if (uniform) {
      m0 = int64_t((base + uintptr_t(elem0(0)) * uintptr_t(t)) % 32) / t;
      m1 = TP > L0 ? int64_t((base + uintptr_t(elem0(L0)) * uintptr_t(t)) % 32) / t : 0;
    }
    s0 = (L0 + m0 + E - 1) / E * E;
    sf = (hw + m1 + E - 1) / E * E;
    const int64_t rest = TP - L0, last = rest % hw;
    slots = s0 + rest / hw * sf + (last ? (last + m1 + E - 1) / E * E : 0);
  }
  // The tile pixel of slot s of a row (pad: a padding slot, given its segment's nearest pixel); elem(px): the
  // element offset of tile pixel px in the row; base and t: the buffer's address and element size.
  template <typename F>
  __device__ int64_t px(int64_t s, uintptr_t base, int64_t t, F elem, bool& pad) const {
    int64_t start = 0, len = L0;
    if (s >= s0) {
      const int64_t i = (s - s0) / sf;
      s = s - s0 - i * sf;
      start = L0 + i * hw;
      len = TP - start < hw ? TP - start : hw;
    }
    const int64_t m = int64_t((base + uintptr_t(elem(start)) * uintptr_t(t)) % 32) / t;
    const int64_t k = s - m;
    pad = k < 0 || k >= len;
    return start + (k < 0 ? 0 : k >= len ? len - 1 : k);
  }
};

// ---- forward and grad_input: one pixel-tile GEMM --------------------------------------------------------
//
// out[p, o] = sum_i in[p, i] * W'[o, i] for the TP pixels of a block (blockIdx.x) and ALL O outputs of group
// blockIdx.z, so each activation is read once and written once:
//   forward     in = x (i: the group's Cg input channels), out = y (o: its Mg outputs), W'[o, i] = W[k*Mg+o, i]
//   grad_input  in = gy (i: the Mg outputs), out = gx (o: the Cg input channels), W'[o, i] = W[k*Mg+i, o]
// The x side is indexed in "packed" order (csrc/shuffle_conv1x1.h): position q of the group's channels sorted
// by source channel, q -> weight column tab[q] -> x channel sconv_src_channel(k, tab[q]), so channels_last
// loads and stores run along contiguous channel runs; the shuffle is only this index table.
// Shared memory (dynamic): in_s [IC][TP] (a chunk of IC inputs of the pixel tile), w_s [IW][OC] (a chunk of W'),
// out_s [TP][OSC] (the outputs being accumulated, stored coalesced), tab/inv [Cg] ints.  A thread owns kRP
// pixels x kRO outputs of an OC-wide chunk in registers.  Three plans (plan_gemm picks by modeled traffic):
//   single  IC = I: the whole input tile staged once, OSC = OC: outputs chunk by chunk, W streamed in chunks
//   stream  IC < I, OSC = O: input chunks streamed once, partial sums of all O outputs kept in out_s
//   reread  IC < I, OSC < O: no room for either: the input tile is read once per OSC outputs
// Loads and stores run along the contiguous dimension: pixels in NCHW, channels in channels_last.
constexpr int kThreads = 256, kRP = 4, kRO = 8;
constexpr int64_t kChunkElems = int64_t(kThreads) * kRP * kRO;  // TP * OC

// NCHW, a chunk of whole images (p0, pcc multiples of H*W): dst[r * PS + px] = src[pixel p0 + px, channel ch(r)],
// each image's rows of consecutive channels read as one contiguous range (planes of H*W < 64 elements start and
// end mid-sector: row by row, every plane would move its boundary sectors twice).  A range is read in aligned
// slots, a multiple of 32 of them, so a warp's request covers whole sectors of one range; a padding slot reads
// the range's nearest element again (a sector the request moves anyway), so every lane of a warp makes the same
// accesses in the same order.
template <typename T, typename Acc, typename Ch>
__device__ __forceinline__ void stage_images(SK_GLOBAL(const T) src, Acc* dst, int64_t PS, const Layout& l,
                                             int64_t p0, int64_t pcc, int64_t R, Ch ch) {
  const int tid = threadIdx.x;
  const int64_t t = int64_t(sizeof(T)), hw = l.hw, n0 = p0 / hw, imgs = pcc / hw;
  for (int64_t ra = 0; ra < R;) {
    int64_t rb = ra + 1;
    while (rb < R && ch(rb) == ch(rb - 1) + 1) ++rb;
    const int64_t len = (rb - ra) * hw;
    for (int64_t i = 0; i < imgs; ++i) {
      const int64_t start = (n0 + i) * l.s_n + ch(ra) * l.s_c;
      const int64_t m = int64_t((address_of(src) + uintptr_t(start) * uintptr_t(t)) % 32) / t;
      const int64_t slots = (len + m + 31) / 32 * 32;
      for (int64_t s = tid; s < slots; s += kThreads) {
        const int64_t e = s - m < 0 ? 0 : s - m >= len ? len - 1 : s - m;
        const Acc v = Acc(src[start + e]);
        if (s - m == e) dst[(ra + e / hw) * PS + i * hw + e % hw] = v;
      }
    }
    ra = rb;
  }
}

// dst[r * PS + px] = src[pixel p0 + px, channel ch(r)] for r < R, px < pcc.  Pixel-fast rows (NCHW, H*W >= 32) in
// aligned slots (AlignedRows); else along the contiguous dimension (channel runs of a pixel in channels_last).
template <typename T, typename Acc, typename Ch>
__device__ __forceinline__ void stage_rows(SK_GLOBAL(const T) src, Acc* dst, int64_t PS, const Layout& l, int64_t p0,
                                           int64_t pcc, int64_t R, Ch ch) {
  const int tid = threadIdx.x;
  const bool pfast = l.s_hw == 1;
  if (pfast && l.hw >= 32) {
    const int64_t t = int64_t(sizeof(T));
    const AlignedRows rows(p0, pcc, l.hw, 32 / t, uniform_rows<T>(l), address_of(src), t,
                           [&](int64_t q) { return l.pixel(p0 + q); });
    for (int64_t idx = tid; idx < R * rows.slots; idx += kThreads) {
      const int64_t r = idx / rows.slots, c = ch(r);
      bool pad;
      const int64_t px = rows.px(idx - r * rows.slots, address_of(src), t,
                                 [&](int64_t q) { return l.pixel(p0 + q) + c * l.s_c; }, pad);
      const Acc v = Acc(src[l.pixel(p0 + px) + c * l.s_c]);
      if (!pad) dst[r * PS + px] = v;
    }
    return;
  }
  for (int64_t idx = tid; idx < R * pcc; idx += kThreads) {
    const int64_t r = pfast ? idx / pcc : idx % R, px = pfast ? idx % pcc : idx / R;
    dst[r * PS + px] = Acc(src[l.pixel(p0 + px) + ch(r) * l.s_c]);
  }
}

// channels_last, pixel vectors of whole sectors (every pixel's channels at the same offsets in their sectors):
// A thread's kRP x kRO register tile += one input row's kRP values (stride PG in shared memory) times one W' row's
// kRO values (stride OG): the inner step of the per-group and the whole-pixel GEMMs.
template <typename Acc>
__device__ __forceinline__ void tile_fma(Acc (&acc)[kRP][kRO], const Acc* in, int64_t PG, const Acc* w, int64_t OG) {
  Acc a[kRP], bv[kRO];
#pragma unroll
  for (int r = 0; r < kRP; ++r) a[r] = in[PG * r];
#pragma unroll
  for (int s = 0; s < kRO; ++s) bv[s] = w[OG * s];
#pragma unroll
  for (int r = 0; r < kRP; ++r)
#pragma unroll
    for (int s = 0; s < kRO; ++s) acc[r][s] += a[r] * bv[s];
}

struct GemmPlan {
  int64_t tp, oc, ic, iw, osc;  // pixels a block, outputs a register chunk, inputs staged, W inputs a chunk,
                                // outputs accumulated in out_s
  size_t smem;
  int64_t span = 0;             // > 0: pixels a tile (<= tp; the forward's whole images of NCHW planes < 64)
};

// Returns with in_s holding inputs [I - icc_last, I) (with a single plan: the whole input tile) and the shared
// memory after it free.
template <bool kFwd, typename T, typename Acc>
__device__ __forceinline__ void sconv_gemm(SK_GLOBAL(const T) in, SK_GLOBAL(const T) w, SK_GLOBAL(const T) bias,
                                           SK_GLOBAL(T) out, const Dims& d, const Layout& lin,
                                           const Layout& lout, const GemmPlan& pl, int64_t tile = -1,
                                           int64_t group = -1) {
  SK_DYNAMIC_SHARED(unsigned char, smem);
  const int64_t TP = pl.tp, OC = pl.oc, IC = pl.ic, OSC = pl.osc;
  Acc* in_s = reinterpret_cast<Acc*>(smem);
  Acc* w_s = in_s + IC * TP;
  Acc* out_s = w_s + pl.iw * OC;
  int* tab = reinterpret_cast<int*>(out_s + TP * OSC);  // packed position -> weight column
  int* inv = tab + d.cg;                                 // weight column -> packed position
  const int tid = threadIdx.x;
  const int64_t k = group < 0 ? int64_t(blockIdx.z) : group;
  const int64_t I = kFwd ? d.cg : d.mg, O = kFwd ? d.mg : d.cg;
  const int64_t SPAN = pl.span > 0 ? pl.span : TP;
  const int64_t p0 = (tile < 0 ? int64_t(blockIdx.x) : tile) * SPAN;
  const int64_t tpe = d.pixels - p0 < SPAN ? d.pixels - p0 : SPAN;  // pixels of the tile that exist
  // A forward tile of whole images of NCHW planes: packed order, so that an image's rows of a run of consecutive
  // x channels are one contiguous range (stage_images); the single plan reads W's columns in order (row inv[j]).
  const bool images = kFwd && pl.span > 0 && lin.s_hw == 1 && lin.s_c == lin.hw;
  const bool packed = images || !(kFwd ? lin.s_hw == 1 : lout.s_hw == 1);  // NCHW: natural order, W rows contiguous
  if (tid == 0 && !packed) {
    for (int64_t q = 0; q < d.cg; ++q) tab[q] = inv[q] = int(q);
  } else if (tid == 0) {
    sconv_packed_columns(k, d.cg, d.sg, d.cs, [&](int64_t q, int64_t col, int64_t) {
      tab[q] = int(col);
      inv[col] = int(q);
    });
  }
  __syncthreads();
  const bool in_pfast = lin.s_hw == 1, out_pfast = lout.s_hw == 1;
  // in_s[c][px] = in[p0 + px, input ib + c] for c < icc (0 beyond the last pixel).
  const bool in_rows = in_pfast && lin.hw >= 32, out_rows = out_pfast && lout.hw >= 32;
  auto stage = [&](int64_t ib, int64_t icc) {
    if (images) {
      for (int64_t idx = tid; idx < icc * (TP - tpe); idx += kThreads)
        in_s[idx / (TP - tpe) * TP + tpe + idx % (TP - tpe)] = Acc(0);
      stage_images<T, Acc>(in, in_s, TP, lin, p0, tpe, icc,
                           [&](int64_t r) { return sconv_src_channel(k, tab[ib + r], d.cg, d.sg, d.cs); });
      return;
    }
    if (in_rows) {
      for (int64_t idx = tid; idx < icc * (TP - tpe); idx += kThreads)
        in_s[idx / (TP - tpe) * TP + tpe + idx % (TP - tpe)] = Acc(0);
      stage_rows<T, Acc>(in, in_s, TP, lin, p0, tpe, icc, [&](int64_t c) {
        return kFwd ? sconv_src_channel(k, tab[ib + c], d.cg, d.sg, d.cs) : k * d.mg + ib + c;
      });
      return;
    }
    for (int64_t idx = tid; idx < icc * TP; idx += kThreads) {
      const int64_t c = in_pfast ? idx / TP : idx % icc, px = in_pfast ? idx % TP : idx / icc;
      const int64_t p = p0 + px, i = ib + c;
      Acc v = Acc(0);
      if (px < tpe) {
        const int64_t ch = kFwd ? sconv_src_channel(k, tab[i], d.cg, d.sg, d.cs) : k * d.mg + i;
        v = Acc(in[lin.pixel(p) + ch * lin.s_c]);
      }
      in_s[c * TP + px] = v;
    }
  };
  const bool single = IC >= I;
  const int64_t PG = TP / kRP, OG = kThreads / PG;
  const int64_t pg = tid % PG, og = tid / PG;
  for (int64_t os0 = 0; os0 < O; os0 += OSC) {
    const int64_t osc = O - os0 < OSC ? O - os0 : OSC;
    for (int64_t i0 = 0; i0 < I; i0 += IC) {
      const int64_t icc = I - i0 < IC ? I - i0 : IC;
      if (!single || os0 == 0) {
        stage(i0, icc);
        __syncthreads();
      }
      for (int64_t o0 = os0; o0 < os0 + osc; o0 += OC) {
        const int64_t occ = os0 + osc - o0 < OC ? os0 + osc - o0 : OC;
        Acc acc[kRP][kRO];
#pragma unroll
        for (int r = 0; r < kRP; ++r)
#pragma unroll
          for (int s = 0; s < kRO; ++s) acc[r][s] = Acc(0);
        for (int64_t iw0 = 0; iw0 < icc; iw0 += pl.iw) {
          const int64_t iwc = icc - iw0 < pl.iw ? icc - iw0 : pl.iw;  // this W chunk's inputs
          // w_s[c][oc] = W'[o0 + oc, i0 + iw0 + c]; global reads run along W's rows (weight columns).
          if (kFwd) {
            // W'[o, i] = W[k*Mg + o, tab[i]].  Whole tile staged: the chunk is W's columns iw0 + c (contiguous
            // reads; in_s row inv[column]); else the packed positions of the staged chunk.
            for (int64_t idx = tid; idx < OC * iwc; idx += kThreads) {
              const int64_t oc = idx / iwc, c = idx % iwc;
              Acc v = Acc(0);
              if (oc < occ) v = Acc(w[(k * d.mg + o0 + oc) * d.cg + (single ? iw0 + c : tab[i0 + iw0 + c])]);
              w_s[c * OC + oc] = v;
            }
          } else {
            // W'[o, i] = W[k*Mg + i, tab[o]]: a whole row when one chunk holds all O, else the chunk's columns.
            const bool all_o = OC >= O;
            for (int64_t idx = tid; idx < OC * iwc; idx += kThreads) {
              const int64_t c = idx / OC, e = idx % OC;
              Acc v = Acc(0);
              int64_t oc = e;
              if (e < occ) {
                const int64_t j = all_o ? e : tab[o0 + e];
                if (all_o) oc = inv[j];
                v = Acc(w[(k * d.mg + i0 + iw0 + c) * d.cg + j]);
              }
              w_s[c * OC + oc] = v;
            }
          }
          __syncthreads();
          for (int64_t c = 0; c < iwc; ++c) {
            const int64_t row = kFwd && single ? inv[iw0 + c] : iw0 + c;
            tile_fma(acc, in_s + row * TP + pg, PG, w_s + c * OC + og, OG);
          }
          __syncthreads();
        }
        // Each out_s element is owned by one thread across the input chunks: no barrier needed here.
#pragma unroll
        for (int r = 0; r < kRP; ++r)
#pragma unroll
          for (int s = 0; s < kRO; ++s) {
            const int64_t oc = o0 - os0 + og + OG * s;
            if (oc < OSC) {
              Acc* dst = &out_s[(pg + PG * r) * OSC + oc];
              *dst = i0 == 0 ? acc[r][s] : *dst + acc[r][s];
            }
          }
      }
    }
    __syncthreads();
    const AlignedRows rows(p0, tpe, out_rows ? lout.hw : 32, 32 / int64_t(sizeof(T)), uniform_rows<T>(lout),
                           address_of(out), int64_t(sizeof(T)), [&](int64_t q) { return lout.pixel(p0 + q); });
    for (int64_t idx = tid; idx < osc * (out_rows ? rows.slots : TP); idx += kThreads) {
      int64_t oc = out_pfast ? idx / TP : idx % osc, px = out_pfast ? idx % TP : idx / osc;
      if (out_rows) {
        oc = idx / rows.slots;
        const int64_t ch = kFwd ? k * d.mg + os0 + oc : sconv_src_channel(k, tab[os0 + oc], d.cg, d.sg, d.cs);
        bool pad;
        px = rows.px(idx - oc * rows.slots, address_of(out), int64_t(sizeof(T)),
                     [&](int64_t q) { return lout.pixel(p0 + q) + ch * lout.s_c; }, pad);
      }
      const int64_t p = p0 + px, o = os0 + oc;
      if (px < tpe) {
        Acc v = out_s[px * OSC + oc];
        int64_t ch;
        if (kFwd) {
          ch = k * d.mg + o;
          if (bias != nullptr) v += Acc(bias[ch]);
        } else {
          ch = sconv_src_channel(k, tab[o], d.cg, d.sg, d.cs);
        }
        out[lout.pixel(p) + ch * lout.s_c] = T(v);
      }
    }
    __syncthreads();
  }
}

template <typename T, typename Acc>
__global__ void _shuffle_conv1x1_fwd_kernel(SK_GLOBAL(const T) x, SK_GLOBAL(const T) w,
                                            SK_GLOBAL(const T) bias, SK_GLOBAL(T) y, Dims d, Layout lx,
                                            Layout ly, GemmPlan pl) {
  sconv_gemm<true, T, Acc>(x, w, bias, y, d, lx, ly, pl);
}

template <typename T, typename Acc>
__global__ void _shuffle_conv1x1_grad_input_kernel(SK_GLOBAL(const T) gy, SK_GLOBAL(const T) w,
                                                   SK_GLOBAL(T) gx, Dims d, Layout lg, Layout lx, GemmPlan pl) {
  sconv_gemm<false, T, Acc>(gy, w, nullptr, gx, d, lg, lx, pl);
}

// Which gradients the backward computes (output_mask).
struct BwdFlags {
  bool gx, gw, gb;
};

// ---- channels_last, whole pixels: a block's pixel tile covers ALL groups -------------------------------------
//
// In channels_last the channel vectors of consecutive pixels are one contiguous range, so a block that computes
// every group for its TP pixels reads x (gy) and writes y (gx) as contiguous copies: each sector once, whatever
// the group boundaries.  (A tile per group reads the group's channel runs of each pixel; where a run starts or
// ends mid-sector, e.g. Cg = 20 floats, the neighbouring group's block moves that sector again.)  The shuffle is
// the row index into the staged tile.  Shared memory (dynamic): in_s [I_all][TP] (the tile, channel-major),
// out_s [TP][O_all] (the outputs of every group, stored as one contiguous range), w_s [IW][OC] (a chunk of one
// group's W').  A thread owns kRP pixels x kRO outputs of an OC-wide chunk in registers, as in sconv_gemm.
struct ClPlan {
  int64_t tp, oc, iw;   // pixels a tile, outputs a register chunk, W' inputs a chunk
  int64_t tiles;        // pixel tiles (blocks)
  size_t smem;
};

// dst[c * TP + px] = src[pixel p0 + px, channel c] for c < C (0 beyond the last pixel): the tile's contiguous
// range read in order.
template <typename T, typename Acc>
__device__ __forceinline__ void cl_stage(SK_GLOBAL(const T) src, Acc* dst, const Layout& l, int64_t p0, int64_t C,
                                         int64_t TP, int64_t pixels) {
  for (int64_t idx = threadIdx.x; idx < TP * C; idx += kThreads) {
    const int64_t px = idx / C, c = idx - px * C, p = p0 + px;
    dst[c * TP + px] = p < pixels ? Acc(src[l.pixel(p) + c * l.s_c]) : Acc(0);
  }
}

// out_s[px * O_all + col(o)] = sum_i in_s[row(i) * TP + px] * W'(o, i) for group k's outputs o (O_all: every
// group's outputs; written after its last barrier, so the caller synchronises before reading out_s).
// Forward: i = column j (row: x channel src(k, j)), o = m (col: k*Mg + m), W'(m, j) =
// W[k*Mg + m, j].  grad_input: i = m (row: gy channel k*Mg + m), o = j (col: src(k, j)).  W' chunks are read
// along W's rows.  Ends with a barrier after the last read of w_s.
template <bool kFwd, typename T, typename Acc>
__device__ __forceinline__ void cl_group_gemm(SK_GLOBAL(const T) w, const Acc* in_s, Acc* w_s, Acc* out_s,
                                              const Dims& d, int64_t k, const ClPlan& pl, int64_t O_all) {
  const int tid = threadIdx.x;
  const int64_t TP = pl.tp, OC = pl.oc, IW = pl.iw;
  const int64_t I = kFwd ? d.cg : d.mg, O = kFwd ? d.mg : d.cg;
  const int64_t PG = TP / kRP, OG = kThreads / PG;
  const int64_t pg = tid % PG, og = tid / PG;
  for (int64_t o0 = 0; o0 < O; o0 += OC) {
    const int64_t occ = O - o0 < OC ? O - o0 : OC;
    Acc acc[kRP][kRO];
#pragma unroll
    for (int r = 0; r < kRP; ++r)
#pragma unroll
      for (int s = 0; s < kRO; ++s) acc[r][s] = Acc(0);
    for (int64_t i0 = 0; i0 < I; i0 += IW) {
      const int64_t iwc = I - i0 < IW ? I - i0 : IW;
      for (int64_t idx = tid; idx < OC * iwc; idx += kThreads) {
        int64_t c, oc;
        if (kFwd) {
          oc = idx / iwc;
          c = idx - oc * iwc;
        } else {
          c = idx / OC;
          oc = idx - c * OC;
        }
        Acc v = Acc(0);
        if (oc < occ) v = Acc(kFwd ? w[(k * d.mg + o0 + oc) * d.cg + i0 + c] : w[(k * d.mg + i0 + c) * d.cg + o0 + oc]);
        w_s[c * OC + oc] = v;
      }
      __syncthreads();
      for (int64_t c = 0; c < iwc; ++c) {
        const int64_t row = kFwd ? sconv_src_channel(k, i0 + c, d.cg, d.sg, d.cs) : k * d.mg + i0 + c;
        tile_fma(acc, in_s + row * TP + pg, PG, w_s + c * OC + og, OG);
      }
      __syncthreads();
      // Each W' chunk's sums are added to out_s (each element owned by one thread): a blocked sum, as accurate
      // as a library GEMM's over thousands of inputs.
#pragma unroll
      for (int s = 0; s < kRO; ++s) {
        const int64_t oc = og + OG * s;
        if (oc >= occ) continue;
        const int64_t col = kFwd ? k * d.mg + o0 + oc : sconv_src_channel(k, o0 + oc, d.cg, d.sg, d.cs);
#pragma unroll
        for (int r = 0; r < kRP; ++r) {
          Acc* dst = &out_s[(pg + PG * r) * O_all + col];
          *dst = i0 == 0 ? acc[r][s] : *dst + acc[r][s];
          acc[r][s] = Acc(0);
        }
      }
    }
  }
}

// The tile's outputs from out_s [TP][C] to global, one contiguous range (plus the bias).
template <typename T, typename Acc>
__device__ __forceinline__ void cl_store(SK_GLOBAL(T) dst, SK_GLOBAL(const T) bias, const Acc* out_s,
                                         const Layout& l, int64_t p0, int64_t C, int64_t TP, int64_t pixels) {
  for (int64_t idx = threadIdx.x; idx < TP * C; idx += kThreads) {
    const int64_t px = idx / C, c = idx - px * C, p = p0 + px;
    if (p >= pixels) break;  // idx only grows
    Acc v = out_s[idx];
    if (bias != nullptr) v += Acc(bias[c]);
    dst[l.pixel(p) + c * l.s_c] = T(v);
  }
}

// Forward (kFwd: in = x, out = y) or grad_input (in = gy, out = gx): one pixel tile a block, every group.
template <bool kFwd, typename T, typename Acc>
__device__ __forceinline__ void cl_gemm(SK_GLOBAL(const T) in, SK_GLOBAL(const T) w, SK_GLOBAL(const T) bias,
                                        SK_GLOBAL(T) out, const Dims& d, const Layout& lin, const Layout& lout,
                                        const ClPlan& pl, int64_t tile = -1) {
  SK_DYNAMIC_SHARED(unsigned char, smem);
  const int64_t G = d.cs * d.sg / d.cg;
  const int64_t I_all = (kFwd ? d.cg : d.mg) * G, O_all = (kFwd ? d.mg : d.cg) * G;
  Acc* in_s = reinterpret_cast<Acc*>(smem);
  Acc* out_s = in_s + I_all * pl.tp;
  Acc* w_s = out_s + O_all * pl.tp;
  const int64_t p0 = (tile < 0 ? int64_t(blockIdx.x) : tile) * pl.tp;
  cl_stage<T, Acc>(in, in_s, lin, p0, I_all, pl.tp, d.pixels);
  __syncthreads();
  for (int64_t k = 0; k < G; ++k) cl_group_gemm<kFwd, T, Acc>(w, in_s, w_s, out_s, d, k, pl, O_all);
  __syncthreads();
  cl_store<T, Acc>(out, bias, out_s, lout, p0, O_all, pl.tp, d.pixels);
}

template <typename T, typename Acc>
__global__ void _shuffle_conv1x1_cl_fwd_kernel(SK_GLOBAL(const T) x, SK_GLOBAL(const T) w, SK_GLOBAL(const T) bias,
                                               SK_GLOBAL(T) y, Dims d, Layout lx, Layout ly, ClPlan pl) {
  cl_gemm<true, T, Acc>(x, w, bias, y, d, lx, ly, pl);
}

template <typename T, typename Acc>
__global__ void _shuffle_conv1x1_cl_grad_input_kernel(SK_GLOBAL(const T) gy, SK_GLOBAL(const T) w, SK_GLOBAL(T) gx,
                                                      Dims d, Layout lg, Layout lx, ClPlan pl) {
  cl_gemm<false, T, Acc>(gy, w, nullptr, gx, d, lg, lx, pl);
}

// ---- backward in one launch, blocks split by role: grad_x tiles and grad_W tiles ------------------------------
//
// The fused kernels above sum grad_W over each block's pixels, so every block writes a partial grad_W that a second
// kernel reads back: 2 x slices x |W| bytes, which at 14x14 and 7x7 (a large W, few pixels) is as much as the
// activations.  Here the launch's first gx_blocks blocks compute grad_x tiles (the grad_input GEMM: a tile per
// group, sconv_gemm, or channels_last whole pixels, cl_gemm), and the others grad_W (and grad_b):
//   mode 1  a tile of mc rows x jc packed positions of group k's grad_W, summed over a pixel slice (all pixels when
//           slices = 1: no partial sums at all); gy's rows and x's channels of the tile are re-read by the group's
//           other tiles, from the L2 (read-only buffers of one launch), not from DRAM;
//   mode 2  channels_last: all of grad_W (every group) over a pixel slice, x and gy staged as whole channel vectors
//           (contiguous ranges: every sector used), partial sums in shared memory.
// With slices > 1 the partials go to part_w / part_b [slice] and _shuffle_conv1x1_grad_weight_sum_kernel adds
// them in order.  Every sum has one owner and a fixed order: the same bits every run, no atomics.
struct GwTiles {
  int64_t mode;           // 0: no grad_W / grad_b blocks, 1: per-group tiles, 2: channels_last whole pixels
  int64_t mc, jc, mb, jb;  // mode 1: rows of Mg and packed positions of Cg a tile; tiles a group along each
  int64_t pc;             // pixels a staged chunk
  int64_t slices, chunk;  // pixel slices, pixels a slice
  int64_t blocks;         // grad_W blocks of the launch
  size_t smem;
};
constexpr int kGwR = 8;  // mode 1: grad_W sums a thread owns (mc * jc <= kThreads * kGwR)

// dst[r * PS + px] = src[pixel p0 + px, channel ch(r)], each pixel's rows of consecutive channels (a "piece") read
// in aligned slots: a piece's slots start on its first sector, so a warp's 32 slots are whole sectors of the
// pieces (the unaligned order moves a sector that two requests share twice).  pieces: [R + 1] x 4 ints of shared
// memory (first row, length, first slot, offset in its sector), set up by the caller's thread 0 with cl_pieces.
// pieces[0]: their count, pieces[1]: slots a pixel; piece i at pieces[4 + 4i ..]: first row, length, first slot,
// element offset in its sector.
__device__ __forceinline__ void cl_pieces(int* pieces, int64_t R, uintptr_t first, int64_t t, int64_t s_c,
                                          const int* chs, int64_t ch0) {
  int64_t n = 0, slots = 0;
  const int64_t E = 32 / t;
  for (int64_t ra = 0; ra < R;) {
    const int64_t c0 = chs != nullptr ? chs[ra] : ch0 + ra;
    int64_t rb = ra + 1;
    while (rb < R && (chs != nullptr ? chs[rb] : ch0 + rb) == c0 + (rb - ra)) ++rb;
    const int64_t m = int64_t((first + uintptr_t(c0 * s_c) * uintptr_t(t)) % 32) / t;
    int* pc = pieces + 4 + 4 * n;
    pc[0] = int(ra);
    pc[1] = int(rb - ra);
    pc[2] = int(slots);
    pc[3] = int(m);
    slots += (m + rb - ra + E - 1) / E * E;
    ++n;
    ra = rb;
  }
  pieces[0] = int(n);
  pieces[1] = int(slots);
}

template <typename T, typename Acc, typename Ch>
__device__ __forceinline__ void stage_pieces(SK_GLOBAL(const T) src, Acc* dst, int64_t PS, const Layout& l,
                                             int64_t p0, int64_t pcc, const int* pieces, Ch ch) {
  const int64_t np = pieces[0], SP = pieces[1];
  const int* pc = pieces + 4;
  const int64_t total = (pcc * SP + 31) / 32 * 32;
  for (int64_t s = threadIdx.x; s < total; s += kThreads) {
    const int64_t sc = s < pcc * SP ? s : pcc * SP - 1;  // a padding slot: the last slot's element again
    const int64_t px = sc / SP, w = sc - px * SP;
    int64_t i = 0;
    while (i + 1 < np && pc[4 * (i + 1) + 2] <= w) ++i;
    const int64_t len = pc[4 * i + 1], e0 = w - pc[4 * i + 2] - pc[4 * i + 3];
    const int64_t e = e0 < 0 ? 0 : e0 >= len ? len - 1 : e0;
    const int64_t r = pc[4 * i] + e;
    const Acc v = Acc(src[l.pixel(p0 + px) + ch(r) * l.s_c]);
    if (e == e0 && s == sc) dst[r * PS + px] = v;
  }
}

// Mode 1: grad_W block b.  Shared memory (dynamic): g_s [mc][PS], x_s [jc][PS], the packed tables [2 Cg] ints, the
// channels_last pieces of x's and gy's rows [4 (jc + 1)], [4 (mc + 1)] ints.
template <typename T, typename Acc>
__device__ __forceinline__ void gw_group_tile(SK_GLOBAL(const T) gy, SK_GLOBAL(const T) x, SK_GLOBAL(Acc) part_w,
                                              SK_GLOBAL(Acc) part_b, const Dims& d, const Layout& lg,
                                              const Layout& lx, const GwTiles& g, int64_t b, int64_t groups,
                                              BwdFlags f) {
  SK_DYNAMIC_SHARED(unsigned char, smem);
  const int64_t PS = g.pc + 1;
  Acc* g_s = reinterpret_cast<Acc*>(smem);
  Acc* x_s = g_s + g.mc * PS;
  int* tab = reinterpret_cast<int*>(x_s + g.jc * PS);  // packed position -> weight column
  int* chs = tab + d.cg;                                // packed position -> x channel
  int* x_pieces = chs + d.cg;
  int* g_pieces = x_pieces + 4 * (g.jc + 1);
  const int tid = threadIdx.x;
  const int64_t jbi = b % g.jb, mbi = b / g.jb % g.mb, k = b / (g.jb * g.mb) % groups;
  const int64_t slice = b / (g.jb * g.mb * groups);
  const int64_t m0 = mbi * g.mc, q0 = jbi * g.jc;
  const int64_t mcc = d.mg - m0 < g.mc ? d.mg - m0 : g.mc;
  const int64_t jcc = !f.gw ? 0 : d.cg - q0 < g.jc ? d.cg - q0 : g.jc;
  const bool do_b = f.gb && jbi == 0;
  // NCHW planes of >= 64 pixels: weight-column order (contiguous grad_W rows); else packed (x's runs of consecutive
  // channels: contiguous in channels_last, and whole-image ranges in NCHW)
  const bool natural = lx.s_hw == 1 && lx.hw >= 64;
  const bool images = lx.s_hw == 1 && lg.s_hw == 1 && !natural;
  if (tid == 0 && natural) {
    for (int64_t q = 0; q < d.cg; ++q) {
      tab[q] = int(q);
      chs[q] = int(sconv_src_channel(k, q, d.cg, d.sg, d.cs));
    }
  } else if (tid == 0) {
    sconv_packed_columns(k, d.cg, d.sg, d.cs, [&](int64_t q, int64_t col, int64_t src) {
      tab[q] = int(col);
      chs[q] = int(src);
    });
  }
  // channels_last with pixel vectors of whole sectors: aligned pieces (stage_pieces)
  const int64_t tsz = int64_t(sizeof(T));
  const bool x_al = lx.s_hw != 1 && lx.s_hw * tsz % 32 == 0 && lx.s_n * tsz % 32 == 0;
  const bool g_al = lg.s_hw != 1 && lg.s_hw * tsz % 32 == 0 && lg.s_n * tsz % 32 == 0;
  if (tid == 0 && x_al && jcc > 0) cl_pieces(x_pieces, jcc, address_of(x), tsz, lx.s_c, chs + q0, 0);
  if (tid == 0 && g_al) cl_pieces(g_pieces, mcc, address_of(gy), tsz, lg.s_c, nullptr, k * d.mg + m0);
  __syncthreads();
  Acc acc[kGwR];
#pragma unroll
  for (int r = 0; r < kGwR; ++r) acc[r] = Acc(0);
  Acc acc_b = Acc(0);
  const int64_t p_begin = slice * g.chunk;
  const int64_t p_end = d.pixels < p_begin + g.chunk ? d.pixels : p_begin + g.chunk;
  for (int64_t p0 = p_begin; p0 < p_end; p0 += g.pc) {
    const int64_t pcc = p_end - p0 < g.pc ? p_end - p0 : g.pc;
    auto xch = [&](int64_t r) { return int64_t(chs[q0 + r]); };
    auto gch = [&](int64_t r) { return k * d.mg + m0 + r; };
    if (images && p0 % lx.hw == 0 && pcc % lx.hw == 0) {
      if (jcc > 0) stage_images<T, Acc>(x, x_s, PS, lx, p0, pcc, jcc, xch);
      stage_images<T, Acc>(gy, g_s, PS, lg, p0, pcc, mcc, gch);
    } else {
      if (jcc > 0 && x_al) stage_pieces<T, Acc>(x, x_s, PS, lx, p0, pcc, x_pieces, xch);
      else if (jcc > 0) stage_rows<T, Acc>(x, x_s, PS, lx, p0, pcc, jcc, xch);
      if (g_al) stage_pieces<T, Acc>(gy, g_s, PS, lg, p0, pcc, g_pieces, gch);
      else stage_rows<T, Acc>(gy, g_s, PS, lg, p0, pcc, mcc, gch);
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kGwR; ++r) {
      const int64_t e = tid + int64_t(r) * kThreads;
      if (e >= mcc * jcc) break;
      const int64_t m = e / jcc, q = e - m * jcc;
      Acc sum = Acc(0);
      for (int64_t px = 0; px < pcc; ++px) sum += g_s[m * PS + px] * x_s[q * PS + px];
      acc[r] += sum;
    }
    if (do_b && tid < mcc) {
      Acc sum = Acc(0);
      for (int64_t px = 0; px < pcc; ++px) sum += g_s[tid * PS + px];
      acc_b += sum;
    }
    __syncthreads();
  }
  const int64_t base = (slice * groups + k) * d.mg + m0;
#pragma unroll
  for (int r = 0; r < kGwR; ++r) {
    const int64_t e = tid + int64_t(r) * kThreads;
    if (e >= mcc * jcc) break;
    const int64_t m = e / jcc, q = e - m * jcc;
    part_w[(base + m) * d.cg + tab[q0 + q]] = acc[r];
  }
  if (do_b && tid < mcc) part_b[base + tid] = acc_b;
}

// Mode 2 (channels_last): slice b's sums of all of grad_W.  Shared memory: g_s [C_out][pc], x_s [C_in][pc], then
// the sums [C_out][Cg], [C_out].
template <typename T, typename Acc>
__device__ __forceinline__ void gw_cl_slice(SK_GLOBAL(const T) gy, SK_GLOBAL(const T) x, SK_GLOBAL(Acc) part_w,
                                            SK_GLOBAL(Acc) part_b, const Dims& d, const Layout& lg, const Layout& lx,
                                            const GwTiles& g, int64_t slice, int64_t groups, BwdFlags f) {
  SK_DYNAMIC_SHARED(unsigned char, smem);
  const int64_t PC = g.pc, C_in = d.cg * groups, C_out = d.mg * groups, WN = C_out * d.cg;
  Acc* g_s = reinterpret_cast<Acc*>(smem);
  Acc* x_s = g_s + C_out * PC;
  Acc* acc_w = x_s + C_in * PC;
  Acc* acc_b = acc_w + (f.gw ? WN : 0);
  const int tid = threadIdx.x;
  for (int64_t e = tid; e < WN + (f.gb ? C_out : 0); e += kThreads) acc_w[e] = Acc(0);  // each owned by one thread below
  const int64_t p_begin = slice * g.chunk;
  const int64_t p_end = d.pixels < p_begin + g.chunk ? d.pixels : p_begin + g.chunk;
  for (int64_t p0 = p_begin; p0 < p_end; p0 += PC) {
    const int64_t pcc = p_end - p0 < PC ? p_end - p0 : PC;
    cl_stage<T, Acc>(gy, g_s, lg, p0, C_out, PC, p0 + pcc);
    if (f.gw) cl_stage<T, Acc>(x, x_s, lx, p0, C_in, PC, p0 + pcc);
    __syncthreads();
    if (f.gw)
      for (int64_t e = tid; e < WN; e += kThreads) {
        const int64_t o = e / d.cg, j = e - o * d.cg;
        const Acc* gr = g_s + o * PC;
        const Acc* xr = x_s + sconv_src_channel(o / d.mg, j, d.cg, d.sg, d.cs) * PC;
        Acc sum = Acc(0);
        for (int64_t px = 0; px < pcc; ++px) sum += gr[px] * xr[px];
        acc_w[e] += sum;
      }
    if (f.gb)
      for (int64_t o = tid; o < C_out; o += kThreads) {
        Acc sum = Acc(0);
        for (int64_t px = 0; px < pcc; ++px) sum += g_s[o * PC + px];
        acc_b[o] += sum;
      }
    __syncthreads();
  }
  if (f.gw)
    for (int64_t e = tid; e < WN; e += kThreads) part_w[slice * WN + e] = acc_w[e];
  if (f.gb)
    for (int64_t o = tid; o < C_out; o += kThreads) part_b[slice * C_out + o] = acc_b[o];
}

template <typename T, typename Acc>
__global__ void _shuffle_conv1x1_backward_split_kernel(SK_GLOBAL(const T) gy, SK_GLOBAL(const T) x,
                                                       SK_GLOBAL(const T) w, SK_GLOBAL(T) gx, SK_GLOBAL(Acc) part_w,
                                                       SK_GLOBAL(Acc) part_b, Dims d, Layout lg, Layout lx,
                                                       GemmPlan pl, ClPlan cl, bool whole, int64_t gx_blocks,
                                                       GwTiles g, int64_t groups, BwdFlags f) {
  const int64_t b = blockIdx.x;
  if (b < gx_blocks) {
    if (whole) {
      cl_gemm<false, T, Acc>(gy, w, nullptr, gx, d, lg, lx, cl, b);
    } else {
      const int64_t tiles = gx_blocks / groups;
      sconv_gemm<false, T, Acc>(gy, w, nullptr, gx, d, lg, lx, pl, b % tiles, b / tiles);
    }
    return;
  }
  if (g.mode == 2) gw_cl_slice<T, Acc>(gy, x, part_w, part_b, d, lg, lx, g, b - gx_blocks, groups, f);
  else gw_group_tile<T, Acc>(gy, x, part_w, part_b, d, lg, lx, g, b - gx_blocks, groups, f);
}

// ---- plans -------------------------------------------------------------------------------------------------
//
// The planners pick, among the plans that fit in shared memory, the one with the least modeled time on an H100
// SXM (the traffic report's machine), a roofline: max(bytes / bandwidth, FLOPs / compute), where a launch of B
// blocks keeps min(B, 132) multiprocessors busy, each pulling at most twice its share of the 3.35 TB/s and
// computing 67/132 TFLOP/s fp32 (NVIDIA's H100 SXM datasheet).  Bytes are modeled as csrc/emu/emu.h counts them:
// every warp request's 32-byte sectors, no cache, so every tile re-reads its group's weights (W'); fewer, larger
// tiles move fewer bytes, but a GPU wants many blocks.  Minimising bytes alone would run the 7x7 layers on 3
// blocks of 132 multiprocessors; the roofline trades the two.  A tile per group: blocks = tiles x groups; the
// channels_last whole-pixel kernels: blocks = tiles, each reading all of W.
double modeled_time(double bytes, double flops, double blocks) {
  constexpr double kBandwidth = 3.35e12, kSms = 132.0, kSmFlops = 67e12 / 132.0;
  const double active = std::max(1.0, std::min(blocks, kSms));
  return std::max(bytes / std::min(kBandwidth, active * 2.0 * kBandwidth / kSms), flops / (active * kSmFlops));
}

// Modeled time of a launch (a model, like modeled_time, same H100 SXM figures): its DRAM bytes under the L2 model
// (the traffic report's: read-only buffers move each sector once, re-reads hit the 50 MB L2) at the HBM3's
// 3.35 TB/s; its request-level bytes pulled by min(blocks, 132) multiprocessors at twice their share of that each;
// its FLOPs; and its largest block at one multiprocessor's rate (a launch lasts at least as long as its slowest
// block: what a split of grad_W's sums over fewer pixels buys).
double launch_time(double dram, double moved, double flops, double blocks, double block_bytes, double block_flops) {
  constexpr double kBandwidth = 3.35e12, kSms = 132.0, kSmFlops = 67e12 / 132.0;
  const double active = std::max(1.0, std::min(blocks, kSms)), sm_bw = 2.0 * kBandwidth / kSms;
  return std::max({dram / kBandwidth, moved / (active * sm_bw), flops / (active * kSmFlops), block_bytes / sm_bw,
                   block_flops / kSmFlops});
}

size_t smem_limit() {
#if defined(__CUDACC__)
  return at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
#else
  return 227 * 1024;  // the emulator's arena: an H100's opt-in maximum
#endif
}

struct PlanCost {
  double bytes, time;
};

// in_ch/out_ch: the GEMM's inputs and outputs a group; cost(plan, tiles) -> the whole launch's modeled bytes and time.
template <typename Cost>
GemmPlan plan_gemm(int64_t pixels, int64_t in_ch, int64_t out_ch, int64_t cg, size_t acc_size, bool single_only,
                   Cost cost) {
  GemmPlan best{0, 0, 0, 0, 0, 0};
  PlanCost best_cost{0, 0};
  const size_t limit = smem_limit();
  const size_t tab_bytes = size_t(2 * cg) * sizeof(int);
  auto consider = [&](const GemmPlan& pl) {
    const int64_t tiles = (pixels + pl.tp - 1) / pl.tp;
    const PlanCost c = cost(pl, tiles);
    const bool take = best.tp == 0 || c.time < best_cost.time ||
                      (c.time == best_cost.time && c.bytes < best_cost.bytes);
    if (take) {
      best = pl;
      best_cost = c;
    }
  };
  for (int64_t tp = 64; tp <= 1024; tp *= 2) {
    const int64_t oc = kChunkElems / tp;
    const int64_t iw1 = std::min<int64_t>(in_ch, 32);
    // single: the whole input tile, outputs in register chunks
    const size_t single = (size_t(in_ch * tp + iw1 * oc + tp * oc)) * acc_size + tab_bytes;
    if (single <= limit) consider(GemmPlan{tp, oc, in_ch, iw1, oc, single});
    const size_t wide = single + size_t(tp * (out_ch - oc)) * acc_size;  // out_s for all outputs at once
    if (out_ch > oc && wide <= limit) consider(GemmPlan{tp, oc, in_ch, iw1, out_ch, wide});
    if (single_only || in_ch <= 1) continue;
    // stream: all outputs accumulated in out_s, input chunks as large as fit
    const size_t fixed = size_t(tp * out_ch) * acc_size + tab_bytes;
    if (fixed < limit) {
      int64_t ic = std::min<int64_t>(in_ch - 1, int64_t((limit - fixed) / (acc_size * size_t(tp + oc))));
      if (ic >= 8 || ic >= in_ch - 1) {
        const int64_t iw = std::min<int64_t>(ic, 32);
        consider(GemmPlan{tp, oc, ic, iw, out_ch, fixed + size_t(ic * tp + iw * oc) * acc_size});
      }
    }
    // reread: output chunks of oc, input chunks
    const size_t fixed2 = size_t(tp * oc) * acc_size + tab_bytes;
    if (fixed2 < limit) {
      const int64_t ic = std::min<int64_t>(in_ch - 1, int64_t((limit - fixed2) / (acc_size * size_t(tp + oc))));
      if (ic >= 1) {
        const int64_t iw = std::min<int64_t>(ic, 32);
        consider(GemmPlan{tp, oc, ic, iw, oc, fixed2 + size_t(ic * tp + iw * oc) * acc_size});
      }
    }
  }
  return best;
}

// channels_last with a tile per group: the sectors the accesses to every group's channels of a pixel touch, over
// the sectors of its whole channel vector (1 when every group's runs are whole sectors).  x side: group k's sg
// runs of x channels (sconv_block); else the group's Mg contiguous channels k*Mg.  A run that starts or ends
// mid-sector shares that sector with another group, whose block moves it again (Cg = 20 fp32: 1.5 sectors a run
// of ~7); and the staging's warp requests (32 consecutive elements of the group's runs) start mid-run, so a
// request's first sector is moved by the previous request too, about 1 - s/n of the time (s sectors over n
// elements a pixel).  Pixel vectors are taken to start on a sector.
double cl_run_factor(const Dims& d, int64_t groups, size_t t_size, bool x_side) {
  const int64_t E = std::max<int64_t>(1, 32 / int64_t(t_size));
  const int64_t C = (x_side ? d.cg : d.mg) * groups, n = x_side ? d.cg : d.mg;
  if (C == 0 || n == 0) return 1.0;
  double sectors = 0, splits = 0;
  bool aligned = true;
  for (int64_t k = 0; k < groups; ++k) {
    double s_k = 0;
    auto run = [&](int64_t begin, int64_t len) {
      if (len <= 0) return;
      s_k += double((begin + len - 1) / E - begin / E + 1);
      aligned = aligned && begin % E == 0 && len % E == 0;
    };
    if (!x_side) {
      run(k * d.mg, d.mg);
    } else {
      for (int64_t b = 0; b < d.sg; ++b) {
        const SconvBlock blk = sconv_block(k, b, d.cg, d.sg, d.cs);
        run(blk.src_begin, blk.len);
      }
    }
    sectors += s_k;
    splits += double(n) / 32.0 * std::max(0.0, 1.0 - s_k / double(n));
  }
  return aligned ? 1.0 : (sectors + splits) / double((C + E - 1) / E);
}

// Modeled bytes of a forward or grad_input launch (whole grid, all groups); in_ch/out_ch a group; in_f / out_f:
// cl_run_factor of the input / output side (1 in NCHW).
PlanCost gemm_cost(const GemmPlan& pl, int64_t tiles, int64_t pixels, int64_t in_ch, int64_t out_ch,
                   int64_t groups, int64_t sg, bool packed, size_t t_size, double in_f, double out_f) {
  const double P = double(pixels), I = double(in_ch), O = double(out_ch), G = double(groups), t = double(t_size);
  const double in_reads = pl.ic >= in_ch ? 1.0 : std::ceil(O / double(pl.osc));
  // Packed W columns read in the staged (strided) order cost up to sg sectors a useful one.
  const double w_factor = pl.ic < in_ch && packed ? double(std::min<int64_t>(sg, 8)) : 1.0;
  // channels_last: a pixel's channels loaded (stored) in chunks of c cost about one more sector a chunk.
  const double E = 32.0 / t;
  const double in_factor = in_f * (packed && pl.ic < in_ch ? 1.0 + E / double(pl.ic) : 1.0);
  const double out_factor = out_f * (packed && pl.osc < out_ch ? 1.0 + E / double(pl.osc) : 1.0);
  const double bytes =
      t * G * (P * I * in_reads * in_factor + double(tiles) * I * O * w_factor + P * O * out_factor);
  return {bytes, modeled_time(bytes, 2.0 * P * I * O * G, double(tiles) * G)};
}

// channels_last, whole pixels (cl_gemm): the plan of least modeled time among tiles of 16 to 1024 pixels whose
// input tile, every group's outputs and a W' chunk fit in shared memory (tp = 0: none fits).  Modeled bytes: the
// activations read and written once (contiguous ranges), every tile reading all of W.  i_all / o_all: every
// group's inputs / outputs; i_g the group's inputs.
// The whole-pixel plan of tp pixels a tile (tp = 0: it does not fit in shared memory).
ClPlan cl_plan_for(int64_t tp, int64_t pixels, int64_t i_all, int64_t o_all, int64_t i_g, size_t acc_size) {
  const int64_t oc = kChunkElems / tp;
  const int64_t iw = std::min<int64_t>(i_g, std::max<int64_t>(4, 4096 / oc));
  const size_t smem = size_t(tp * (i_all + o_all) + iw * oc) * acc_size;
  if (smem > smem_limit()) return ClPlan{};
  return ClPlan{tp, oc, iw, (pixels + tp - 1) / tp, smem};
}

PlanCost plan_cl(ClPlan& best, int64_t pixels, int64_t i_all, int64_t o_all, int64_t i_g, int64_t w_elems,
                 size_t acc_size, size_t t_size, double flops) {
  best = ClPlan{};
  PlanCost best_cost{0, 0};
  const double t = double(t_size);
  for (int64_t tp = 16; tp <= 1024; tp *= 2) {
    const ClPlan pl = cl_plan_for(tp, pixels, i_all, o_all, i_g, acc_size);
    if (pl.tp == 0) continue;
    const int64_t tiles = pl.tiles;
    const double act = t * double(pixels) * double(i_all + o_all), bytes = act + t * double(tiles) * double(w_elems);
    const PlanCost c{bytes, launch_time(act + t * double(w_elems), bytes, flops, double(tiles),
                                        t * (double(tp) * double(i_all + o_all) + double(w_elems)),
                                        flops / double(tiles))};
    if (best.tp == 0 || c.time < best_cost.time || (c.time == best_cost.time && c.bytes < best_cost.bytes)) {
      best = pl;
      best_cost = c;
    }
  }
  return best_cost;
}
// The separate grad_weight op's shared-memory budget (below an A100's 163 KiB opt-in maximum).
constexpr size_t kSmemBudget = 160 * 1024;

// ---- grad_weight: deterministic two-stage reduction ----------------------------------------------------
//
// Block (slice, group k) sums gW[k*Mg + m, j] over its slice of pixels: chunks of PC pixels of x (all Cg
// channels, loaded in packed order along contiguous runs in channels_last) and of gy (MC channels) staged in
// shared memory, the [MC, Cg] sums in shared memory (each element owned by one thread, fixed order).  x and
// gy are read once when MC = Mg.  Slice sums go to part[slice] (or straight to the result when there is one
// slice); _shuffle_conv1x1_grad_weight_sum_kernel adds the slices in order: the same bits every run.
struct GwPlan {
  int64_t pc, mc, chunk;  // pixels a staged chunk, outputs a pass, pixels a slice
  size_t smem;
};

template <typename T, typename Acc>
__global__ void _shuffle_conv1x1_grad_weight_kernel(SK_GLOBAL(const T) gy, SK_GLOBAL(const T) x,
                                                    SK_GLOBAL(Acc) part, Dims d, Layout lg, Layout lx, GwPlan pl) {
  SK_DYNAMIC_SHARED(unsigned char, smem);
  const int64_t PC = pl.pc, MC = pl.mc, PS = pl.pc + 1;  // PS: padded row stride
  Acc* acc_s = reinterpret_cast<Acc*>(smem);
  Acc* x_s = acc_s + MC * d.cg;  // [Cg][PS], rows by weight column
  Acc* g_s = x_s + d.cg * PS;    // [MC][PS]
  int* tab = reinterpret_cast<int*>(g_s + MC * PS);
  const int tid = threadIdx.x;
  const int64_t k = blockIdx.z, slice = blockIdx.x;
  const int64_t p_begin = slice * pl.chunk;
  const int64_t p_end = d.pixels < p_begin + pl.chunk ? d.pixels : p_begin + pl.chunk;
  const bool xfast = lx.s_hw == 1, gfast = lg.s_hw == 1;
  if (tid == 0 && xfast) {
    for (int64_t q = 0; q < d.cg; ++q) tab[q] = int(q);
  } else if (tid == 0) {
    sconv_packed_columns(k, d.cg, d.sg, d.cs, [&](int64_t q, int64_t col, int64_t) { tab[q] = int(col); });
  }
  __syncthreads();
  for (int64_t m0 = 0; m0 < d.mg; m0 += MC) {
    const int64_t mcc = d.mg - m0 < MC ? d.mg - m0 : MC;
    for (int64_t e = tid; e < mcc * d.cg; e += kThreads) acc_s[e] = Acc(0);
    for (int64_t p0 = p_begin; p0 < p_end; p0 += PC) {
      for (int64_t idx = tid; idx < d.cg * PC; idx += kThreads) {
        const int64_t q = xfast ? idx / PC : idx % d.cg, px = xfast ? idx % PC : idx / d.cg;
        const int64_t p = p0 + px, j = tab[q];
        x_s[j * PS + px] =
            p < p_end ? Acc(x[lx.pixel(p) + sconv_src_channel(k, j, d.cg, d.sg, d.cs) * lx.s_c]) : Acc(0);
      }
      for (int64_t idx = tid; idx < mcc * PC; idx += kThreads) {
        const int64_t m = gfast ? idx / PC : idx % mcc, px = gfast ? idx % PC : idx / mcc;
        const int64_t p = p0 + px;
        g_s[m * PS + px] = p < p_end ? Acc(gy[lg.pixel(p) + (k * d.mg + m0 + m) * lg.s_c]) : Acc(0);
      }
      __syncthreads();
      for (int64_t e = tid; e < mcc * d.cg; e += kThreads) {
        const int64_t m = e / d.cg, j = e - m * d.cg;
        Acc sum = Acc(0);
        for (int64_t px = 0; px < PC; ++px) sum += g_s[m * PS + px] * x_s[j * PS + px];
        acc_s[e] += sum;
      }
      __syncthreads();
    }
    const int64_t base = (slice * gridDim.z + k) * d.mg * d.cg + m0 * d.cg;
    for (int64_t e = tid; e < mcc * d.cg; e += kThreads) part[base + e] = acc_s[e];
    __syncthreads();
  }
}

// gw[e] = sum over slices of part[slice][e], slices in order.
template <typename Acc>
__global__ void _shuffle_conv1x1_grad_weight_sum_kernel(SK_GLOBAL(const Acc) part, SK_GLOBAL(Acc) gw, int64_t n,
                                                        int64_t slices) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= n) return;
  Acc s = Acc(0);
  for (int64_t i = 0; i < slices; ++i) s += Acc(part[i * n + e]);
  gw[e] = s;
}

Dims dims_of(int64_t pixels, int64_t c_in, int64_t c_out, int64_t groups, int64_t sg) {
  return Dims{pixels, c_in / groups, c_out / groups, sg, c_in / sg};
}

void check_grid(int64_t groups, int64_t y_blocks) {
  TORCH_CHECK_VALUE(groups <= kMaxGridY, "shuffle_conv1x1: at most ", kMaxGridY, " groups on CUDA, got ", groups);
  TORCH_CHECK_VALUE(y_blocks <= kMaxGridY, "shuffle_conv1x1: too many channels a group for the CUDA grid");
}

// The plan of the forward (`forward`) or grad_input GEMM: the per-group tiles of least modeled time and, in
// channels_last (`packed`), the whole-pixel plan (cl_gemm), taken when its modeled time is less (or equal with
// no more bytes).
struct GemmChoice {
  GemmPlan pl;
  ClPlan cl;
  bool whole;
};

GemmChoice choose_gemm(const Dims& d, int64_t groups, int64_t shuffle_groups, bool packed, size_t A, size_t t,
                       bool forward) {
  const int64_t c_in = d.cg * groups, c_out = d.mg * groups;
  const int64_t i_g = forward ? d.cg : d.mg, o_g = forward ? d.mg : d.cg;
  const double in_f = packed ? cl_run_factor(d, groups, t, forward) : 1.0;
  const double out_f = packed ? cl_run_factor(d, groups, t, !forward) : 1.0;
  GemmChoice ch{};
  PlanCost cost{0, 0};
  ch.pl = plan_gemm(d.pixels, i_g, o_g, d.cg, A, false, [&](const GemmPlan& p, int64_t tiles) {
    // grad_input: the grad_x side is staged in packed order but its W' reads are whole rows: no packed W factor
    const PlanCost c =
        gemm_cost(p, tiles, d.pixels, i_g, o_g, groups, shuffle_groups, packed && forward, t, in_f, out_f);
    if (cost.time == 0 || c.time < cost.time || (c.time == cost.time && c.bytes < cost.bytes)) cost = c;
    return c;
  });
  const PlanCost cl_cost =
      packed ? plan_cl(ch.cl, d.pixels, forward ? c_in : c_out, forward ? c_out : c_in, i_g, c_out * d.cg, A, t,
                       2.0 * double(d.pixels) * double(c_out) * double(d.cg))
             : PlanCost{0, 0};
  // The per-group plan in the same terms (launch_time: activations and W once from DRAM) and its modeled sector
  // efficiency; the whole-pixel plan uses every sector.  A plan whose modeled efficiency is >= 0.92 comes first,
  // then the least time, then the fewest bytes.
  if (ch.pl.tp != 0 && ch.cl.tp != 0) {
    const int64_t tiles = (d.pixels + ch.pl.tp - 1) / ch.pl.tp;
    const double tb = double(t), Wn = double(c_out) * double(d.cg);
    double moved = cost.bytes;
    if (!forward && ch.pl.oc < o_g) moved += tb * double(tiles) * Wn * double(std::min<int64_t>(shuffle_groups, 8) - 1);
    const double asked =
        gemm_cost(ch.pl, tiles, d.pixels, i_g, o_g, groups, shuffle_groups, false, t, 1.0, 1.0).bytes;
    const double blocks = double(tiles * groups), flops = 2.0 * double(d.pixels) * double(c_out) * double(d.cg);
    const double time = launch_time(tb * (double(d.pixels) * double(c_in + c_out) + Wn), moved, flops, blocks,
                                    moved / blocks, flops / blocks);
    const bool ok = asked >= 0.92 * moved;
    cost = PlanCost{moved, time};
    ch.whole = !ok || cl_cost.time < cost.time || (cl_cost.time == cost.time && cl_cost.bytes <= cost.bytes);
  } else {
    ch.whole = ch.cl.tp != 0;
  }
  return ch;
}

// ---- the backward's plan: grad_x tiles and grad_W tiles in one launch ------------------------------------------
//
struct SplitPlan {
  GemmChoice gxc;     // the grad_x role's plan (choose_gemm of grad_input)
  int64_t gx_blocks;  // 0 without grad_x
  GwTiles g;
  size_t smem;
  double time, moved, dram;
};

// channels_last, grad_W mode 1: the sectors one pass of the tiles' staging (stage_pieces) moves a pixel, over x's
// channels (x_side: group k's packed positions in chunks of jc) or gy's (chunks of mc of its Mg), every group.
// Exact when a pixel's channel vector is whole sectors (pixel 0 on a sector); else each piece is taken to move its
// expected ceil share plus the requests it straddles (stage_rows: about a quarter more).
double cl_piece_sectors(const Dims& d, int64_t groups, size_t t_size, int64_t chunk, bool x_side) {
  const int64_t t = int64_t(t_size), E = std::max<int64_t>(1, 32 / t);
  const int64_t C = (x_side ? d.cg : d.mg) * groups;
  const bool aligned = C * t % 32 == 0;
  double sectors = 0;
  std::vector<int64_t> chs;
  for (int64_t k = 0; k < groups; ++k) {
    chs.clear();
    if (x_side) {
      sconv_packed_columns(k, d.cg, d.sg, d.cs, [&](int64_t, int64_t, int64_t src) { chs.push_back(src); });
    } else {
      for (int64_t m = 0; m < d.mg; ++m) chs.push_back(k * d.mg + m);
    }
    const int64_t n = int64_t(chs.size());
    for (int64_t q0 = 0; q0 < n; q0 += chunk) {
      const int64_t q1 = std::min(n, q0 + chunk);
      for (int64_t ra = q0; ra < q1;) {
        int64_t rb = ra + 1;
        while (rb < q1 && chs[rb] == chs[ra] + (rb - ra)) ++rb;
        const int64_t len = rb - ra, m = chs[ra] % E;
        sectors += aligned ? double((m + len + E - 1) / E) : 1.25 * double(len + E - 1) / double(E);
        ra = rb;
      }
    }
  }
  return sectors;
}

// img: H*W in NCHW (grad_W chunks of whole images), 0 in channels_last.
// Every pairing of a grad_x plan (the grad_input op's per-group tiles, or channels_last whole pixels) with a grad_W
// tiling (mode 1: tile sizes and pixel slices; mode 2: pixel slices).  A GPU wants its loads coalesced and its DRAM
// traffic near the minimum, so the plans whose modeled sector efficiency (bytes asked for / moved) is >= 0.92,
// whose modeled DRAM bytes are within 12% of the least (grad_W summed without partials) and whose launch has at
// least the blocks of the grad_input op's plan come first; among them the least launch_time (within 5%: the fewest
// request-level bytes).  A pure function of the shapes.
SplitPlan plan_backward(const Dims& d, int64_t groups, int64_t sg, bool packed, int64_t img, size_t A, size_t t,
                        BwdFlags f) {
  SplitPlan sp{};
  sp.time = -1;
  const double tb = double(t), P = double(d.pixels), G = double(groups), Cg = double(d.cg), Mg = double(d.mg);
  const double Wn = Mg * G * Cg, C_in = Cg * G, C_out = Mg * G;
  const size_t limit = smem_limit();
  struct GxOption {
    bool whole;
    int64_t blocks;
    double asked, moved, block, block_flops;
    size_t smem;
    ClPlan cl;
  };
  std::vector<GxOption> gxs;
  GemmChoice gxc{};
  if (!f.gx) {
    gxs.push_back(GxOption{false, 0, 0, 0, 0, 0, 0, ClPlan{}});
  } else {
    gxc = choose_gemm(d, groups, sg, packed, A, t, /*forward=*/false);
    if (gxc.pl.tp != 0) {
      const GemmPlan& pl = gxc.pl;
      const int64_t tiles = (d.pixels + pl.tp - 1) / pl.tp;
      const double in_f = packed ? cl_run_factor(d, groups, t, false) : 1.0;
      const double out_f = packed ? cl_run_factor(d, groups, t, true) : 1.0;
      double moved = gemm_cost(pl, tiles, d.pixels, d.mg, d.cg, groups, sg, false, t, in_f, out_f).bytes;
      const double asked = gemm_cost(pl, tiles, d.pixels, d.mg, d.cg, groups, sg, false, t, 1.0, 1.0).bytes;
      // channels_last, register chunks narrower than Cg: W' columns read in packed order, sg apart
      if (packed && pl.oc < d.cg) moved += tb * double(tiles) * Wn * double(std::min<int64_t>(sg, 8) - 1);
      gxs.push_back(GxOption{false, tiles * groups, asked, moved, moved / double(tiles * groups),
                             2.0 * double(pl.tp) * Mg * Cg, pl.smem, ClPlan{}});
    }
    for (int64_t tp = 16; packed && tp <= 1024; tp *= 2) {  // every whole-pixel tile size
      const ClPlan cl = cl_plan_for(tp, d.pixels, d.mg * groups, d.cg * groups, d.mg, A);
      if (cl.tp == 0) continue;
      const double moved = tb * (P * (C_in + C_out) + double(cl.tiles) * Wn);
      gxs.push_back(GxOption{true, cl.tiles, moved, moved, tb * (double(cl.tp) * (C_in + C_out) + Wn),
                             2.0 * double(cl.tp) * Wn, cl.smem, cl});
    }
    if (gxs.empty()) return sp;
  }
  // Parallelism kept: at least the blocks of the grad_input op's own plan.
  const double min_blocks = !f.gx ? 0.0
                            : gxc.whole ? double(gxc.cl.tiles)
                                        : double((d.pixels + gxc.pl.tp - 1) / std::max<int64_t>(gxc.pl.tp, 1) * groups);
  // DRAM bytes (L2 model) without grad_W's partial sums: gy, x (for grad_W), W (for grad_x) read once, grad_x written
  const double dram_base = tb * (P * C_out + (f.gw ? P * C_in : 0.0) + (f.gx ? P * C_in + Wn : 0.0));
  const double flops = 2.0 * P * Mg * Cg * G * ((f.gx ? 1 : 0) + (f.gw ? 1 : 0));
  const double sums = (f.gw ? Wn : 0.0) + (f.gb ? C_out : 0.0);  // grad_W, grad_b elements
  const double dram_least = dram_base + double(A) * sums;
  bool best_ok = false;
  auto consider = [&](const GwTiles& g, double w_asked, double w_moved, double w_block, double w_block_flops) {
    const double S = double(g.slices);
    // partial sums: written by the launch, read back by the sum kernel (fits the L2: once), the result written
    const double part = double(A) * sums * (S > 1 ? 2.0 * S + 1.0 : 1.0);
    const double dram = dram_base + part;
    for (const GxOption& o : gxs) {
      const double moved = o.moved + w_moved + part, asked = o.asked + w_asked + part;
      const double blocks = double(o.blocks + g.blocks);
      const double time = launch_time(dram, moved, flops, blocks, std::max(o.block, w_block),
                                      std::max(o.block_flops, w_block_flops));
      const bool ok = asked >= 0.92 * moved && dram <= 1.12 * dram_least && blocks >= min_blocks;
      // modeled times within 5% count as equal (the model is coarse): then the fewer request-level bytes
      const bool faster = time < 0.95 * sp.time || (time <= 1.05 * sp.time && moved < sp.moved);
      if (sp.time < 0 || (ok && !best_ok) || (ok == best_ok && faster)) {
        sp.gxc = gxc;
        sp.gxc.whole = o.whole;
        if (o.whole) sp.gxc.cl = o.cl;
        sp.gx_blocks = o.blocks;
        sp.g = g;
        sp.g.smem = std::max(g.smem, o.smem);
        sp.smem = sp.g.smem;
        sp.time = time;
        sp.moved = moved;
        sp.dram = dram;
        best_ok = ok;
      }
    }
  };
  // slices of pixels: 1, 2, 4, ... (chunks of whole pc-pixel chunks)
  auto each_slicing = [&](int64_t pc, auto&& fn) {
    const int64_t chunks = (d.pixels + pc - 1) / pc;
    for (int64_t s = 1;; s = std::min(2 * s, chunks)) {
      const int64_t chunk = (chunks + s - 1) / s * pc;
      fn((d.pixels + chunk - 1) / chunk, chunk);
      if (s >= chunks) break;
    }
  };
  if (!f.gw && !f.gb) {
    GwTiles g{};
    g.slices = 1;
    consider(g, 0, 0, 0, 0);
    return sp;
  }
  // mode 1: per-group tiles.  NCHW: chunks of whole images when H*W <= 256 (gw_group_tile reads an image's rows of
  // consecutive channels as one range when H*W < 64); rows read along pixels, whole sectors (up to the planes' ends)
  std::vector<int64_t> mcs{d.mg}, jcs{f.gw ? d.cg : 0};
  for (int64_t c = 8; c < d.mg && c <= kThreads; c *= 2) mcs.push_back(c);
  for (int64_t c = 8; f.gw && c < d.cg; c *= 2) jcs.push_back(c);
  for (int64_t mc : mcs)
    for (int64_t jc : jcs) {
      if (mc > kThreads || mc * jc > int64_t(kThreads) * kGwR) continue;
      for (int64_t pc0 = 64; pc0 >= 16; pc0 /= 2) {
        const int64_t pc = img > 0 && img <= 256 ? img * std::max<int64_t>(1, pc0 / img) : pc0;
        const size_t smem =
            size_t((mc + jc) * (pc + 1)) * A + size_t(2 * d.cg + 4 * (mc + jc + 2)) * sizeof(int);
        if (smem > limit) continue;
        const int64_t mb = (d.mg + mc - 1) / mc, jb = jc == 0 ? 1 : (d.cg + jc - 1) / jc;
        const double x_px = f.gw ? (packed ? 32.0 * cl_piece_sectors(d, groups, t, jc, true) : tb * C_in) : 0.0;
        const double g_px = packed ? 32.0 * cl_piece_sectors(d, groups, t, mc, false) : tb * C_out;
        each_slicing(pc, [&](int64_t slices, int64_t chunk) {
          const GwTiles g{1, mc, jc, mb, jb, pc, slices, chunk, slices * groups * mb * jb, smem};
          const double asked = tb * P * G * (Mg * double(jb) + (f.gw ? Cg * double(mb) : 0.0));
          const double moved = P * (g_px * double(jb) + x_px * double(mb));
          const double block = double(chunk) * (g_px / G * double(mc) / Mg + x_px / G * double(jc) / Cg);
          consider(g, asked, moved, block, 2.0 * double(chunk) * double(mc) * double(jc));
        });
        break;  // the largest chunk that fits
      }
    }
  // mode 2: channels_last, whole pixels, all of grad_W a slice
  for (int64_t pc = 64; packed && f.gw && pc >= 8; pc /= 2) {
    const size_t smem = size_t(double(pc) * (C_in + C_out) + sums) * A;
    if (smem > limit) continue;
    each_slicing(pc, [&](int64_t slices, int64_t chunk) {
      const GwTiles g{2, 0, 0, 1, 1, pc, slices, chunk, slices, smem};
      const double bytes = tb * P * (C_in + C_out);
      consider(g, bytes, bytes, tb * double(chunk) * (C_in + C_out), 2.0 * double(chunk) * Wn);
    });
    break;
  }
  return sp;
}

at::Tensor shuffle_conv1x1_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                int64_t groups, int64_t shuffle_groups) {
  check_shuffle_conv1x1_args(x, weight, bias, groups, shuffle_groups);
  SK_RT::Guard guard(x.device());
  const auto fmt = format_of(x);
  const at::Tensor in = x.contiguous(fmt);
  const at::Tensor w = weight.contiguous();
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  const int64_t c_in = x.size(1), c_out = weight.size(0);
  at::Tensor out = at::empty({x.size(0), c_out, x.size(2), x.size(3)}, x.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  if (c_in == 0) return b.defined() ? out.copy_(b.view({1, c_out, 1, 1}).expand_as(out)) : out.zero_();
  const Dims d = dims_of(x.size(0) * x.size(2) * x.size(3), c_in, c_out, groups, shuffle_groups);
  const bool packed = in.stride(3) != 1;
  const size_t A = x.scalar_type() == at::kDouble ? 8 : 4, t = x.element_size();
  const GemmChoice choice = choose_gemm(d, groups, shuffle_groups, packed, A, t, /*forward=*/true);
  GemmPlan pl = choice.pl;
  // NCHW planes of fewer than 64 pixels (7x7: 49 floats, half of them starting mid-sector): tiles of whole images,
  // read as contiguous ranges of consecutive channels (the single plan: the whole input tile staged)
  const int64_t hw = x.size(2) * x.size(3);
  if (!packed && pl.tp != 0 && hw < 64 && pl.ic >= d.cg && pl.tp >= hw) pl.span = hw * (pl.tp / hw);
  const ClPlan& cl = choice.cl;
  const bool whole = choice.whole;
  TORCH_CHECK(whole || pl.tp != 0, "shuffle_conv1x1: too many channels a group for the CUDA kernel's shared memory");
  check_grid(groups, 1);
  TORCH_CHECK(!whole || cl.tiles <= INT32_MAX, "shuffle_conv1x1: too many pixels for the CUDA grid");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "shuffle_conv1x1_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (whole) {
      SK_LAUNCH((_shuffle_conv1x1_cl_fwd_kernel<scalar_t, acc_t>), dim3(cl.tiles), dim3(kThreads), cl.smem,
                SK_RT::dptr<scalar_t>(in), SK_RT::dptr<scalar_t>(w), b.defined() ? SK_RT::dptr<scalar_t>(b) : nullptr,
                SK_RT::dptr<scalar_t>(out), d, layout_of(in), layout_of(out), cl);
      return;
    }
    const int64_t span = pl.span > 0 ? pl.span : pl.tp;
    const dim3 grid((d.pixels + span - 1) / span, 1, groups);
    SK_LAUNCH((_shuffle_conv1x1_fwd_kernel<scalar_t, acc_t>), grid, dim3(kThreads), pl.smem,
              SK_RT::dptr<scalar_t>(in), SK_RT::dptr<scalar_t>(w), b.defined() ? SK_RT::dptr<scalar_t>(b) : nullptr,
              SK_RT::dptr<scalar_t>(out), d, layout_of(in), layout_of(out), pl);
  });
  return out;
}

at::Tensor shuffle_conv1x1_grad_input_cuda(const at::Tensor& grad_out, const at::Tensor& weight, int64_t groups,
                                           int64_t shuffle_groups) {
  check_shuffle_conv1x1_grad_input_args(grad_out, weight, groups, shuffle_groups);
  SK_RT::Guard guard(grad_out.device());
  const auto fmt = format_of(grad_out);
  const at::Tensor gy = grad_out.contiguous(fmt);
  const at::Tensor w = weight.contiguous();
  const int64_t c_in = weight.size(1) * groups, c_out = weight.size(0);
  at::Tensor gx = at::empty({gy.size(0), c_in, gy.size(2), gy.size(3)}, gy.options().memory_format(fmt));
  if (gx.numel() == 0) return gx;
  if (c_out == 0) return gx.zero_();
  const Dims d = dims_of(gy.size(0) * gy.size(2) * gy.size(3), c_in, c_out, groups, shuffle_groups);
  const bool packed = gy.stride(3) != 1;
  const size_t A = gy.scalar_type() == at::kDouble ? 8 : 4, t = gy.element_size();
  const GemmChoice choice = choose_gemm(d, groups, shuffle_groups, packed, A, t, /*forward=*/false);
  const GemmPlan& pl = choice.pl;
  const ClPlan& cl = choice.cl;
  const bool whole = choice.whole;
  TORCH_CHECK(whole || pl.tp != 0,
              "shuffle_conv1x1_grad_input: too many channels a group for the CUDA kernel's shared memory");
  check_grid(groups, 1);
  TORCH_CHECK(!whole || cl.tiles <= INT32_MAX, "shuffle_conv1x1_grad_input: too many pixels for the CUDA grid");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gy.scalar_type(), "shuffle_conv1x1_grad_input_cuda",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (whole) {
      SK_LAUNCH((_shuffle_conv1x1_cl_grad_input_kernel<scalar_t, acc_t>), dim3(cl.tiles), dim3(kThreads), cl.smem,
                SK_RT::dptr<scalar_t>(gy), SK_RT::dptr<scalar_t>(w), SK_RT::dptr<scalar_t>(gx), d, layout_of(gy),
                layout_of(gx), cl);
      return;
    }
    const dim3 grid((d.pixels + pl.tp - 1) / pl.tp, 1, groups);
    SK_LAUNCH((_shuffle_conv1x1_grad_input_kernel<scalar_t, acc_t>), grid, dim3(kThreads), pl.smem,
              SK_RT::dptr<scalar_t>(gy), SK_RT::dptr<scalar_t>(w), SK_RT::dptr<scalar_t>(gx), d, layout_of(gy),
              layout_of(gx), pl);
  });
  return gx;
}

at::Tensor shuffle_conv1x1_grad_weight_cuda(const at::Tensor& grad_out, const at::Tensor& x, int64_t groups,
                                            int64_t shuffle_groups) {
  check_shuffle_conv1x1_grad_weight_args(grad_out, x, groups, shuffle_groups);
  SK_RT::Guard guard(x.device());
  const auto fmt = format_of(x);
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor gy = grad_out.contiguous(fmt);
  const int64_t c_in = x.size(1), c_out = grad_out.size(1);
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor acc = at::empty({c_out, c_in / groups, 1, 1}, x.options().dtype(acc_type));
  const Dims d = dims_of(x.size(0) * x.size(2) * x.size(3), c_in, c_out, groups, shuffle_groups);
  if (acc.numel() == 0 || d.pixels == 0) return acc.zero_().to(x.scalar_type());
  const size_t A = acc_type == at::kDouble ? 8 : 4;
  // Shared memory: [MC, Cg] sums + x [Cg][PC+1] + gy [MC][PC+1] + the column table.
  int64_t pc = 64, mc = 0;
  for (; pc >= 1; pc /= 2) {
    const double room = double(kSmemBudget) - double(d.cg) * sizeof(int) - double(d.cg * (pc + 1)) * A;
    mc = room > 0 ? std::min<int64_t>(d.mg, int64_t(room / (double(A) * double(d.cg + pc + 1)))) : 0;
    if (mc >= std::min<int64_t>(d.mg, 8) || (pc == 1 && mc >= 1)) break;
  }
  TORCH_CHECK(mc >= 1, "shuffle_conv1x1: too many channels a group for the CUDA kernel's shared memory");
  // Pixel slices: the partial sums (written and read back: 2 x weight bytes a slice) kept to ~4% of the
  // activation bytes read, at least 128 pixels a slice, at most ~4 blocks an SM.
  const double act_bytes = double(d.pixels) * double(c_in + c_out) * double(x.element_size());
  const double part_bytes = 2.0 * double(acc.numel()) * double(A);
  const int64_t sms = SK_RT::sm_count();
  int64_t slices = std::max<int64_t>(1, int64_t(0.04 * act_bytes / part_bytes));
  slices = std::min<int64_t>({slices, std::max<int64_t>(1, 4 * sms / groups), (d.pixels + 127) / 128, INT32_MAX});
  const int64_t chunk = (d.pixels + slices - 1) / slices;
  slices = (d.pixels + chunk - 1) / chunk;
  const GwPlan pl{pc, mc, chunk,
                  size_t(mc * d.cg + (d.cg + mc) * (pc + 1)) * A + size_t(d.cg) * sizeof(int)};
  check_grid(groups, 1);
  at::Tensor part = slices == 1 ? acc : at::empty({slices, acc.numel()}, acc.options());
  const dim3 grid(slices, 1, groups);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "shuffle_conv1x1_grad_weight_cuda",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    SK_LAUNCH((_shuffle_conv1x1_grad_weight_kernel<scalar_t, acc_t>), grid, dim3(kThreads), pl.smem,
              SK_RT::dptr<scalar_t>(gy), SK_RT::dptr<scalar_t>(xc), SK_RT::dptr<acc_t>(part), d, layout_of(gy),
              layout_of(xc), pl);
    if (slices > 1) {
      const int64_t n = acc.numel();
      SK_LAUNCH((_shuffle_conv1x1_grad_weight_sum_kernel<acc_t>), dim3((n + kThreads - 1) / kThreads),
                dim3(kThreads), 0, SK_RT::dptr<acc_t>(part), SK_RT::dptr<acc_t>(acc), n, slices);
    }
  });
  return acc.to(x.scalar_type());
}

}  // namespace

// The autograd's entry: one launch of grad_x tiles and grad_W / grad_b tiles (_shuffle_conv1x1_backward_split_kernel,
// plan_backward), then, when grad_W is summed over several pixel slices, the slices' partials added in order.
std::tuple<at::Tensor, at::Tensor, at::Tensor> shuffle_conv1x1_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, int64_t groups, int64_t shuffle_groups,
    std::array<bool, 3> output_mask) {
  check_shuffle_conv1x1_backward_args(grad_out, x, weight, groups, shuffle_groups);
  SK_RT::Guard guard(x.device());
  const int64_t c_in = x.size(1), c_out = weight.size(0);
  const int64_t pixels = x.size(0) * x.size(2) * x.size(3);
  auto from_parts = [&] {
    return shuffle_conv1x1_backward_from_parts(grad_out, x, weight, groups, shuffle_groups, output_mask,
                                               shuffle_conv1x1_grad_input_cuda, shuffle_conv1x1_grad_weight_cuda);
  };
  // Nothing to compute a pixel: the separate ops' empty/zero handling.
  if (pixels == 0 || c_in == 0 || c_out == 0 || !(output_mask[0] || output_mask[1] || output_mask[2]))
    return from_parts();
  const auto fmt = format_of(x);
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor gy = grad_out.contiguous(fmt);
  const at::Tensor w = weight.contiguous();
  const Dims d = dims_of(pixels, c_in, c_out, groups, shuffle_groups);
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const size_t A = acc_type == at::kDouble ? 8 : 4, t = x.element_size();
  const BwdFlags f{output_mask[0], output_mask[1], output_mask[2]};
  const bool packed = xc.stride(3) != 1;
  const SplitPlan sp = plan_backward(d, groups, shuffle_groups, packed, packed ? 0 : x.size(2) * x.size(3), A, t, f);
  // A grad_out tile too large for shared memory (thousands of outputs a group): the two separate kernels.
  if (sp.time < 0) return from_parts();
  const GwTiles& g = sp.g;
  const int64_t slices = g.slices, blocks = sp.gx_blocks + g.blocks;
  check_grid(groups, 1);
  TORCH_CHECK(blocks <= INT32_MAX, "shuffle_conv1x1_backward: too many pixels for the CUDA grid");
  at::Tensor gx = f.gx ? at::empty(x.sizes(), x.options().memory_format(fmt)) : x.new_empty({0});
  at::Tensor gw_acc = f.gw ? at::empty({c_out, d.cg, 1, 1}, x.options().dtype(acc_type)) : at::Tensor();
  at::Tensor gb_acc = f.gb ? at::empty({c_out}, x.options().dtype(acc_type)) : at::Tensor();
  at::Tensor part_w = !f.gw ? at::Tensor() : slices == 1 ? gw_acc : at::empty({slices, gw_acc.numel()}, gw_acc.options());
  at::Tensor part_b = !f.gb ? at::Tensor() : slices == 1 ? gb_acc : at::empty({slices, c_out}, gb_acc.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "shuffle_conv1x1_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    SK_LAUNCH((_shuffle_conv1x1_backward_split_kernel<scalar_t, acc_t>), dim3(blocks), dim3(kThreads), sp.smem,
              SK_RT::dptr<scalar_t>(gy), SK_RT::dptr<scalar_t>(xc), SK_RT::dptr<scalar_t>(w),
              f.gx ? SK_RT::dptr<scalar_t>(gx) : nullptr, f.gw ? SK_RT::dptr<acc_t>(part_w) : nullptr,
              f.gb ? SK_RT::dptr<acc_t>(part_b) : nullptr, d, layout_of(gy), layout_of(xc), sp.gxc.pl, sp.gxc.cl,
              sp.gxc.whole, sp.gx_blocks, g, groups, f);
    for (const auto& [part, sum] : {std::pair{part_w, gw_acc}, std::pair{part_b, gb_acc}}) {
      if (!part.defined() || slices == 1) continue;
      const int64_t n = sum.numel();
      SK_LAUNCH((_shuffle_conv1x1_grad_weight_sum_kernel<acc_t>), dim3((n + kThreads - 1) / kThreads),
                dim3(kThreads), 0, SK_RT::dptr<acc_t>(part), SK_RT::dptr<acc_t>(sum), n, slices);
    }
  });
  return {gx, f.gw ? gw_acc.to(x.scalar_type()) : weight.new_empty({0}),
          f.gb ? gb_acc.to(x.scalar_type()) : weight.new_empty({0})};
}

SK_DEVICE_IMPL(m) {
  m.impl("shuffle_conv1x1", &shuffle_conv1x1_cuda);
  m.impl("shuffle_conv1x1_grad_input", &shuffle_conv1x1_grad_input_cuda);
  m.impl("shuffle_conv1x1_grad_weight", &shuffle_conv1x1_grad_weight_cuda);
  m.impl("shuffle_conv1x1_backward", &shuffle_conv1x1_backward_cuda);
}

}  // namespace shufflekern::SK_DEV_NS
