// CPU entry point of shufflekern::channel_shuffle.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/channel_shuffle_kernel.h"
#include "checks.h"
#include "emu/route.h"

namespace shufflekern::cpu {

SK_DEFINE_KERNEL_TABLE(channel_shuffle_table, ChannelShuffleFn);

namespace {

at::Tensor channel_shuffle_cpu(const at::Tensor& x, int64_t groups) {
  check_channel_shuffle_args(x, groups);
  const auto fmt = format_of(x);
  const at::Tensor in = x.contiguous(fmt);
  at::Tensor out = at::empty_like(in, in.options().memory_format(fmt));
  if (in.numel() == 0) return out;
  channel_shuffle_table.get()(in.data_ptr(), out.data_ptr(), in.element_size(), in.size(0), in.size(1),
                              in.size(2) * in.size(3), groups, fmt == at::MemoryFormat::ChannelsLast);
  return out;
}

}  // namespace

// Routed: under sk.backend("emulated") the CUDA kernels run instead, in the emulator (csrc/emu/route.h).
TORCH_LIBRARY_IMPL(shufflekern, CPU, m) {
  m.impl("channel_shuffle", SK_ROUTED("channel_shuffle", channel_shuffle_cpu));
}

}  // namespace shufflekern::cpu
