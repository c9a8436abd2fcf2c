// CUDA entry point and kernels of shufflekern::channel_shuffle.  The index math is the CPU's
// (csrc/channel_shuffle.h), so the CPU tests exercise it.  Written against csrc/cuda/runtime.h: nvcc builds
// it for CUDA tensors, csrc/emu/channel_shuffle.cpp runs the same source under the emulator.
#include <ATen/ATen.h>

#include <algorithm>

#include "channel_shuffle.h"
#include "checks.h"
#include "cuda/runtime.h"

namespace shufflekern::SK_DEV_NS {
namespace {

// Grid-stride copy of elements moved as unsigned integers of their width (bit-exact for every dtype);
// `inner` is the run that moves as a unit: H*W in NCHW, 1 in channels_last.
template <typename T>
__global__ void _channel_shuffle_kernel(SK_GLOBAL(const T) in, SK_GLOBAL(T) out, int64_t total,
                                        int64_t c, int64_t inner, int64_t groups) {
  const int64_t cpg = c / groups;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t pos = i % inner;
    const int64_t row = i / inner;  // image (or pixel) * c + channel
    const int64_t ch = row % c;
    const int64_t base = row - ch;
    out[i] = in[(base + shuffle_src_channel(ch, groups, cpg)) * inner + pos];
  }
}

// channels_last: a block copies `rows` whole pixel rows (rows * c elements, one contiguous span) into shared
// memory with consecutive threads on consecutive elements, then writes the same span permuted, again with
// consecutive threads on consecutive elements: both sides coalesced, where a direct gather would make a
// warp's 32 reads hit `groups` separate runs of the row.
template <typename T>
__global__ void _channel_shuffle_rows_kernel(SK_GLOBAL(const T) in, SK_GLOBAL(T) out, int64_t pixels, int64_t c,
                                             int64_t rows, int64_t groups) {
  SK_DYNAMIC_SHARED(T, tile);
  const int64_t cpg = c / groups;
  const int64_t p0 = int64_t(blockIdx.x) * rows;
  const int64_t n = (pixels - p0 < rows ? pixels - p0 : rows) * c;
  const int64_t base = p0 * c;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) tile[i] = in[base + i];
  __syncthreads();
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const int64_t ch = i % c;
    out[base + i] = tile[i - ch + shuffle_src_channel(ch, groups, cpg)];
  }
}

constexpr int64_t kRowTileBytes = 16 * 1024;

template <typename T>
void launch(const at::Tensor& in, at::Tensor& out, int64_t c, int64_t inner, int64_t groups) {
  if (inner == 1 && c * int64_t(sizeof(T)) <= kRowTileBytes) {
    const int64_t pixels = in.numel() / c;
    // Whole rows a block, a multiple of what makes the span a multiple of 128 bytes (warp-aligned spans).
    const int64_t row_bytes = c * int64_t(sizeof(T));
    int64_t align = 128;
    for (int64_t b = row_bytes; b % 2 == 0 && align > 1; b /= 2) align /= 2;
    int64_t rows = std::max<int64_t>(1, kRowTileBytes / row_bytes);
    if (rows >= align) rows -= rows % align;
    SK_LAUNCH((_channel_shuffle_rows_kernel<T>), dim3(static_cast<unsigned>((pixels + rows - 1) / rows)), dim3(256),
              size_t(rows * c) * sizeof(T), SK_RT::dptr<T>(in), SK_RT::dptr<T>(out), pixels, c, rows, groups);
    return;
  }
  const int64_t total = in.numel();
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 65535 * 8);
  SK_LAUNCH((_channel_shuffle_kernel<T>), dim3(static_cast<unsigned>(blocks)), dim3(threads), 0,
            SK_RT::dptr<T>(in), SK_RT::dptr<T>(out), total, c, inner, groups);
}

at::Tensor channel_shuffle_cuda(const at::Tensor& x, int64_t groups) {
  check_channel_shuffle_args(x, groups);
  SK_RT::Guard guard(x.device());
  const auto fmt = format_of(x);
  const at::Tensor in = x.contiguous(fmt);
  at::Tensor out = at::empty_like(in, in.options().memory_format(fmt));
  if (in.numel() == 0) return out;
  const int64_t c = in.size(1);
  int64_t inner = in.size(2) * in.size(3);
  if (fmt == at::MemoryFormat::ChannelsLast) inner = 1;  // rows are pixel*c + channel, one element each
  switch (in.element_size()) {
    case 1: launch<uint8_t>(in, out, c, inner, groups); break;
    case 2: launch<uint16_t>(in, out, c, inner, groups); break;
    case 4: launch<uint32_t>(in, out, c, inner, groups); break;
    case 8: launch<uint64_t>(in, out, c, inner, groups); break;
    default: launch<double2>(in, out, c, inner, groups); break;
  }
  return out;
}

}  // namespace

SK_DEVICE_IMPL(m) { m.impl("channel_shuffle", &channel_shuffle_cuda); }

}  // namespace shufflekern::SK_DEV_NS
