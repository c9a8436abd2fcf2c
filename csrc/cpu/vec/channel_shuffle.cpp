// Channel-shuffle copy kernels, compiled once per CPU ISA (see csrc/cpu/dispatch.h).  The copy is a pure
// permutation, so it moves elements as unsigned integers of the element's width: bit-exact for every
// dtype, including NaN payloads and -0.0.
#include <cstring>

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

// channels_last: every pixel holds its C channels contiguously; within a pixel the shuffle is the
// transpose of a [groups, C/groups] matrix, done with the longer loop innermost (the compiler turns the
// two-way (de)interleave of ShuffleNetV2 and its backward into vector permutes).
template <typename T>
void shuffle_pixels(const T* in, T* out, int64_t pixels, int64_t c, int64_t groups) {
  const int64_t cpg = c / groups;
  const int64_t grain = std::max<int64_t>(1, (32 << 10) / std::max<int64_t>(c * (int64_t)sizeof(T), 1));
  at::parallel_for(0, pixels, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const T* src = in + p * c;
      T* dst = out + p * c;
      if (groups == 2) {  // ShuffleNetV2's shuffle: interleave two halves
        for (int64_t i = 0; i < cpg; ++i) {
          dst[2 * i] = src[i];
          dst[2 * i + 1] = src[cpg + i];
        }
      } else if (cpg == 2) {  // its inverse (the backward): de-interleave
        for (int64_t k = 0; k < groups; ++k) {
          dst[k] = src[2 * k];
          dst[groups + k] = src[2 * k + 1];
        }
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

}  // namespace
}  // namespace CPU_CAPABILITY

SK_REGISTER_KERNEL(channel_shuffle_table, &CPU_CAPABILITY::channel_shuffle_kernel);

}  // namespace shufflekern::cpu
