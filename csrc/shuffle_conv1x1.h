// Index math of the shuffle-folded pointwise group convolution, shared by the CPU and CUDA kernels.
//
// y = conv2d(channel_shuffle(x, sg), W, groups=G) with C input channels, Cg = C/G, Cs = C/sg.
// Shuffled channel c' reads input channel src(c') = (c' % sg)*Cs + c'/sg (csrc/channel_shuffle.h), and
// conv group k consumes the shuffled channels c' = k*Cg + j, j < Cg, with weight column j.  So
//     y[k*Mg + m] = sum_j W[k*Mg + m, j] * x[src(k*Cg + j)]            (Mg = C_out/G)
// Split group k's channels by residue b = c' % sg: c' = a*sg + b reads x channel b*Cs + a, and the valid a
// (k*Cg <= a*sg + b < (k+1)*Cg) form one range [a_begin(k, b), a_begin(k+1, b)).  Group k therefore reads
// sg contiguous runs of x's channels ("blocks"), in ascending channel order as b grows; the weight column
// of run element t is j = (a_begin + t)*sg + b - k*Cg (stride sg).  The kernels reorder W's columns once
// per call into this "packed" order (j' = position of the channel inside the group's sorted runs) so that
// the shuffle costs nothing but the indexing of a GEMM.
#pragma once
#include <cstdint>

#include "channel_shuffle.h"
#include "common.h"

namespace shufflekern {

// First a with a*sg + b >= k*Cg, i.e. ceil((k*Cg - b)/sg); k*Cg - b > -sg so a negative value rounds to 0.
SK_HOST_DEVICE inline int64_t sconv_a_begin(int64_t k, int64_t b, int64_t cg, int64_t sg) {
  const int64_t v = k * cg - b;
  return v <= 0 ? 0 : (v + sg - 1) / sg;
}

// Run (k, b): x channels [src_begin, src_begin + len), weight columns col_begin + t*sg.
struct SconvBlock {
  int64_t src_begin;
  int64_t len;
  int64_t col_begin;
};

SK_HOST_DEVICE inline SconvBlock sconv_block(int64_t k, int64_t b, int64_t cg, int64_t sg, int64_t cs) {
  const int64_t a0 = sconv_a_begin(k, b, cg, sg);
  const int64_t a1 = sconv_a_begin(k + 1, b, cg, sg);
  return SconvBlock{b * cs + a0, a1 - a0, a0 * sg + b - k * cg};
}

// Group k's columns in the packed order: f(q, col, src) for q = 0 .. Cg-1, block by block, where weight column
// col (the unpacked index j) reads x channel src.
template <typename F>
SK_HOST_DEVICE inline void sconv_packed_columns(int64_t k, int64_t cg, int64_t sg, int64_t cs, F&& f) {
  int64_t q = 0;
  for (int64_t b = 0; b < sg; ++b) {
    const SconvBlock blk = sconv_block(k, b, cg, sg, cs);
    for (int64_t t = 0; t < blk.len; ++t, ++q) f(q, blk.col_begin + t * sg, blk.src_begin + t);
  }
}

// x channel read by column j of group k's weight (the unpacked order).
SK_HOST_DEVICE inline int64_t sconv_src_channel(int64_t k, int64_t j, int64_t cg, int64_t sg, int64_t cs) {
  return shuffle_src_channel(k * cg + j, sg, cs);
}

}  // namespace shufflekern
