// CPU entry point of shufflekern::max_pool3x3s2: F.max_pool2d(x, 3, 2, 1) without indices, for the fused
// models' stem at inference (kernel in csrc/cpu/vec/max_pool.cpp).  CPU float32/float64 only, no autograd: the
// fused models call it only when no gradient is needed and keep F.max_pool2d otherwise (sk.info() says so).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu/max_pool_kernel.h"

namespace shufflekern::cpu {

SK_DEFINE_KERNEL_TABLE(max_pool3x3s2_table, MaxPoolFn);

namespace {

at::Tensor max_pool3x3s2_cpu(const at::Tensor& x_in) {
  const char* op = "max_pool3x3s2";
  TORCH_CHECK_VALUE(x_in.dim() == 4, op, ": x must be 4-D [N, C, H, W], got ", x_in.dim(), "-D");
  TORCH_CHECK(x_in.device().is_cpu(), op, ": x must be a CPU tensor, got ", x_in.device());
  TORCH_CHECK_TYPE(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble, op,
                   ": x must be float32 or float64, got ", x_in.scalar_type());
  TORCH_CHECK_VALUE(x_in.size(2) > 0 && x_in.size(3) > 0, op, ": x must have H, W > 0, got shape ", x_in.sizes());
  const auto fmt = format_of(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t ho = (h - 1) / 2 + 1, wo = (w - 1) / 2 + 1;
  at::Tensor y = at::empty({n, c, ho, wo}, x.options().memory_format(fmt));
  if (y.numel() == 0) return y;
  max_pool3x3s2_table.get()(x.const_data_ptr(), y.mutable_data_ptr(), x.scalar_type() == at::kDouble,
                            fmt == at::MemoryFormat::ChannelsLast, n, c, h, w, ho, wo);
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflekern, CPU, m) {
  m.impl("max_pool3x3s2", &max_pool3x3s2_cpu);
}

}  // namespace shufflekern::cpu
