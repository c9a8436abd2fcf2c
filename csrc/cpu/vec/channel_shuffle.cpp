// Channel-shuffle copy kernels, compiled once per CPU ISA (see csrc/cpu/dispatch.h).  The copy is a pure
// permutation, so it moves elements as unsigned integers of the element's width: bit-exact for every
// dtype, including NaN payloads and -0.0.
#include <algorithm>
#include <cstring>
#include <type_traits>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include "channel_shuffle.h"
#include "cpu/channel_shuffle_kernel.h"
#include "cpu/dispatch.h"

namespace shufflekern::cpu {
namespace CPU_CAPABILITY {
namespace {

// A row copy, whole vectors then the tail.  AVX-512 (Zen 4 here): one 64-byte vector a step, ATen's own
// channel_shuffle loop; glibc's memcpy (`rep movsb` on FSRM CPUs), which had looked faster in a 1-thread run,
// read 0.81-0.93x ATen's time for the NCHW forward at 2 threads with the two interleaved over 200 rounds, and
// this loop 0.93-1.04x (fwd+bwd 1.02-1.03x).  Elsewhere two vectors a step (tuned on the AVX2 EPYC).
inline void copy_row(char* dst, const char* src, int64_t bytes) {
  using V = at::vec::Vectorized<uint8_t>;
#if defined(CPU_CAPABILITY_AVX512)
  constexpr int64_t kStep = V::size();
#else
  constexpr int64_t kStep = 2 * V::size();
#endif
  int64_t i = 0;
  for (; i + kStep <= bytes; i += kStep) {
    const V a = V::loadu(src + i);
    if constexpr (kStep == 2 * V::size()) {
      const V b = V::loadu(src + i + V::size());
      a.store(dst + i);
      b.store(dst + i + V::size());
    } else {
      a.store(dst + i);
    }
  }
  if (i < bytes) std::memcpy(dst + i, src + i, bytes - i);
}

// NCHW: each output channel is one contiguous run of `inner` elements copied from its source channel.
void shuffle_rows(const char* in, char* out, int64_t esize, int64_t n, int64_t c, int64_t inner,
                  int64_t groups) {
  const int64_t cpg = c / groups;
  const int64_t row_bytes = inner * esize;
  // Small rows are batched so that a task moves at least ~32 KiB.
  const int64_t grain = std::max<int64_t>(1, (32 << 10) / std::max<int64_t>(row_bytes, 1));
  at::parallel_for(0, n * c, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t img = r / c;
      const int64_t ch = r - img * c;
      const int64_t src = img * c + shuffle_src_channel(ch, groups, cpg);
      copy_row(out + r * row_bytes, in + src * row_bytes, row_bytes);
    }
  });
}

// pairs[2i + j] = (a, b)[j][i] for i < count (TO_PAIRS: reads a and b, writes pairs), or the inverse.  4- and
// 8-byte elements go through ATen's vector (de)interleave permutes on float / double registers, which move bits
// unchanged; the remainder as one masked vector on AVX-512, element by element elsewhere (AVX2's and the portable
// build's partial loads go through memcpy), as are other widths.  Used by the two-way channel shuffle of a
// channels_last pixel (ShuffleNetV2's, and its backward) and by the interleave ops below.
template <typename T, bool TO_PAIRS>
inline void zip_span(std::conditional_t<TO_PAIRS, T*, const T*> pairs,
                     std::conditional_t<TO_PAIRS, const T*, T*> a, std::conditional_t<TO_PAIRS, const T*, T*> b,
                     int64_t count) {
  int64_t i = 0;
  if constexpr (sizeof(T) == 4 || sizeof(T) == 8) {
    using E = std::conditional_t<sizeof(T) == 4, float, double>;
    using V = at::vec::Vectorized<E>;
    constexpr int64_t L = V::size();
    if constexpr (TO_PAIRS) {
      E* p = reinterpret_cast<E*>(pairs);
      const E* pa = reinterpret_cast<const E*>(a);
      const E* pb = reinterpret_cast<const E*>(b);
      for (; i + L <= count; i += L) {
        const auto lohi = at::vec::interleave2(V::loadu(pa + i), V::loadu(pb + i));
        lohi.first.store(p + 2 * i);
        lohi.second.store(p + 2 * i + L);
      }
#if defined(CPU_CAPABILITY_AVX512)
      if (i < count) {  // q = 29, 58, 116 a pixel in ShuffleNetV2 1.0x
        const int64_t rem = count - i, lo_n = std::min<int64_t>(2 * rem, L), hi_n = 2 * rem - lo_n;
        const auto lohi = at::vec::interleave2(V::loadu(pa + i, rem), V::loadu(pb + i, rem));
        lohi.first.store(p + 2 * i, lo_n);
        if (hi_n > 0) lohi.second.store(p + 2 * i + L, hi_n);
        i = count;
      }
#endif
    } else {
      const E* p = reinterpret_cast<const E*>(pairs);
      E* pa = reinterpret_cast<E*>(a);
      E* pb = reinterpret_cast<E*>(b);
      for (; i + L <= count; i += L) {
        const auto ab = at::vec::deinterleave2(V::loadu(p + 2 * i), V::loadu(p + 2 * i + L));
        ab.first.store(pa + i);
        ab.second.store(pb + i);
      }
#if defined(CPU_CAPABILITY_AVX512)
      if (i < count) {
        const int64_t rem = count - i, lo_n = std::min<int64_t>(2 * rem, L), hi_n = 2 * rem - lo_n;
        const V hi = hi_n > 0 ? V::loadu(p + 2 * i + L, hi_n) : V(E(0));
        const auto ab = at::vec::deinterleave2(V::loadu(p + 2 * i, lo_n), hi);
        ab.first.store(pa + i, rem);
        ab.second.store(pb + i, rem);
        i = count;
      }
#endif
    }
  }
  for (; i < count; ++i) {
    if constexpr (TO_PAIRS) {
      pairs[2 * i] = a[i];
      pairs[2 * i + 1] = b[i];
    } else {
      a[i] = pairs[2 * i];
      b[i] = pairs[2 * i + 1];
    }
  }
}

// channels_last: every pixel holds its C channels contiguously; within a pixel the shuffle is the
// transpose of a [groups, C/groups] matrix: the two-way (de)interleave of ShuffleNetV2 and its backward with
// zip_span's vector permutes, other shapes with the longer loop innermost.
template <typename T>
void shuffle_pixels(const T* in, T* out, int64_t pixels, int64_t c, int64_t groups) {
  const int64_t cpg = c / groups;
  const int64_t grain = std::max<int64_t>(1, (32 << 10) / std::max<int64_t>(c * (int64_t)sizeof(T), 1));
  at::parallel_for(0, pixels, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const T* src = in + p * c;
      T* dst = out + p * c;
      if (groups == 2) {  // ShuffleNetV2's shuffle: interleave two halves
        zip_span<T, true>(dst, src, src + cpg, cpg);
      } else if (cpg == 2) {  // its inverse (the backward): de-interleave
        zip_span<T, false>(src, dst, dst + groups, groups);
      } else if (groups >= cpg) {  // long inner loop over groups: contiguous writes
        for (int64_t i = 0; i < cpg; ++i)
          for (int64_t k = 0; k < groups; ++k) dst[i * groups + k] = src[k * cpg + i];
      } else {  // long inner loop over a group's channels: contiguous reads
        for (int64_t k = 0; k < groups; ++k)
          for (int64_t i = 0; i < cpg; ++i) dst[i * groups + k] = src[k * cpg + i];
      }
    }
  });
}

void channel_shuffle_kernel(const void* in, void* out, int64_t esize, int64_t n, int64_t c, int64_t inner,
                            int64_t groups, bool channels_last) {
  if (!channels_last || c == 1 || inner == 1) {
    // With one channel or one pixel per image the channels_last layout is the NCHW layout.
    shuffle_rows(static_cast<const char*>(in), static_cast<char*>(out), esize, n, c, inner, groups);
    return;
  }
  const int64_t pixels = n * inner;
  switch (esize) {
    case 1: return shuffle_pixels(static_cast<const uint8_t*>(in), static_cast<uint8_t*>(out), pixels, c, groups);
    case 2: return shuffle_pixels(static_cast<const uint16_t*>(in), static_cast<uint16_t*>(out), pixels, c, groups);
    case 4: return shuffle_pixels(static_cast<const uint32_t*>(in), static_cast<uint32_t*>(out), pixels, c, groups);
    case 8: return shuffle_pixels(static_cast<const uint64_t*>(in), static_cast<uint64_t*>(out), pixels, c, groups);
    default:
      // Wider elements (complex128): every channel of every pixel is a row of one element.
      shuffle_rows(static_cast<const char*>(in), static_cast<char*>(out), esize, pixels, c, 1, groups);
  }
}

// ---- interleave / deinterleave: the fused ShuffleNetV2 unit's concat + shuffle, and its backward ----------
// (layout in csrc/cpu/channel_shuffle_kernel.h)

struct Bits128 {  // complex128: a 16-byte element moved whole
  uint64_t lo, hi;
};

// channels_last: every pixel holds h channels of a (and b) and 2q of each part, contiguously.  One part: the
// whole tensor is one span (cut into vector-aligned chunks for the threads); else each pixel's q channels of
// a part.
template <typename T, bool TO_PAIRS>
void zip_pixels(T* a, T* b, T* const* parts, int64_t nparts, int64_t pixels, int64_t h) {
  if (nparts == 1) {
    const int64_t total = pixels * h;
    constexpr int64_t kChunk = 8192;  // elements of a: 32-64 KiB moved a task
    at::parallel_for(0, (total + kChunk - 1) / kChunk, 1, [&](int64_t begin, int64_t end) {
      const int64_t lo = begin * kChunk, hi = std::min(total, end * kChunk);
      zip_span<T, TO_PAIRS>(parts[0] + 2 * lo, a + lo, b + lo, hi - lo);
    });
    return;
  }
  const int64_t q = h / nparts;
  const int64_t grain = std::max<int64_t>(1, (16 << 10) / std::max<int64_t>(h * (int64_t)sizeof(T), 1));
  at::parallel_for(0, pixels, grain, [&](int64_t begin, int64_t end) {
    for (int64_t px = begin; px < end; ++px)
      for (int64_t k = 0; k < nparts; ++k)
        zip_span<T, TO_PAIRS>(parts[k] + px * 2 * q, a + px * h + k * q, b + px * h + k * q, q);
  });
}

// NCHW: each channel of a part is one contiguous run of `inner` elements, copied whole.
void zip_rows(char* a, char* b, char* const* parts, int64_t nparts, int64_t esize, int64_t n, int64_t h,
              int64_t inner, bool to_parts) {
  const int64_t q = h / nparts;
  const int64_t row_bytes = inner * esize;
  const int64_t grain = std::max<int64_t>(1, (32 << 10) / std::max<int64_t>(row_bytes, 1));
  at::parallel_for(0, n * 2 * h, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {  // r: image, part, channel of the part
      const int64_t img = r / (2 * h);
      const int64_t k = (r % (2 * h)) / (2 * q);
      const int64_t m = r % (2 * q);
      char* half = (m % 2 == 0) ? a : b;
      char* row = half + (img * h + k * q + m / 2) * row_bytes;
      char* prow = parts[k] + (img * 2 * q + m) * row_bytes;
      to_parts ? copy_row(prow, row, row_bytes) : copy_row(row, prow, row_bytes);
    }
  });
}

template <typename T>
void zip_typed(void* a, void* b, void* const* parts, int64_t nparts, int64_t pixels, int64_t h, bool to_parts) {
  T* const* p = reinterpret_cast<T* const*>(parts);
  to_parts ? zip_pixels<T, true>(static_cast<T*>(a), static_cast<T*>(b), p, nparts, pixels, h)
           : zip_pixels<T, false>(static_cast<T*>(a), static_cast<T*>(b), p, nparts, pixels, h);
}

void interleave_kernel(void* a, void* b, void* const* parts, int64_t nparts, int64_t esize, int64_t n, int64_t h,
                       int64_t inner, bool channels_last, bool to_parts) {
  if (!channels_last && inner > 1) {
    zip_rows(static_cast<char*>(a), static_cast<char*>(b), reinterpret_cast<char* const*>(parts), nparts, esize, n,
             h, inner, to_parts);
    return;
  }
  const int64_t pixels = n * inner;  // one pixel an image when inner == 1: both layouts are the same
  switch (esize) {
    case 1: return zip_typed<uint8_t>(a, b, parts, nparts, pixels, h, to_parts);
    case 2: return zip_typed<uint16_t>(a, b, parts, nparts, pixels, h, to_parts);
    case 4: return zip_typed<uint32_t>(a, b, parts, nparts, pixels, h, to_parts);
    case 8: return zip_typed<uint64_t>(a, b, parts, nparts, pixels, h, to_parts);
    default: return zip_typed<Bits128>(a, b, parts, nparts, pixels, h, to_parts);
  }
}

}  // namespace
}  // namespace CPU_CAPABILITY

SK_REGISTER_KERNEL(channel_shuffle_table, &CPU_CAPABILITY::channel_shuffle_kernel);
SK_REGISTER_KERNEL(interleave_table, &CPU_CAPABILITY::interleave_kernel);

}  // namespace shufflekern::cpu
