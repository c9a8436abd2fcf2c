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

template <typename T>
void launch(const at::Tensor& in, at::Tensor& out, int64_t c, int64_t inner, int64_t groups) {
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
