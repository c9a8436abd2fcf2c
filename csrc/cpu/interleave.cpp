// CPU entry points of shufflekern::interleave and shufflekern::deinterleave, the fused ShuffleNetV2 unit's
// concat + channel shuffle and its inverse (kernel in csrc/cpu/vec/channel_shuffle.cpp; autograd in
// csrc/autograd/interleave.cpp: each is the other's backward).  CPU only, any dtype (elements are moved as
// bits); the fused unit keeps its torch.stack path for other devices and under torch.compile (sk.info() says so).
//
//   interleave(a, b, parts): a, b [N, h, H, W]; returns `parts` tensors [N, 2h/parts, H, W], part k =
//     channel_shuffle(cat(a[:, kq:(k+1)q], b[:, kq:(k+1)q]), 2), q = h/parts, each dense in a's memory format.
//   deinterleave(ys): the inverse: ys = `parts` tensors [N, 2q, H, W]; returns (a, b) [N, parts*q, H, W] in ys[0]'s
//     memory format.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "checks.h"
#include "cpu/channel_shuffle_kernel.h"

namespace shufflekern::cpu {

SK_DEFINE_KERNEL_TABLE(interleave_table, InterleaveFn);

namespace {

void check_cpu_4d(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.dim() == 4, op, ": ", name, " must be 4-D [N, C, H, W], got ", t.dim(), "-D");
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor (the op has CPU kernels only), got ",
              t.device());
}

std::vector<at::Tensor> interleave_cpu(const at::Tensor& a_in, const at::Tensor& b_in, int64_t parts) {
  const char* op = "interleave";
  check_cpu_4d(op, "a", a_in);
  check_cpu_4d(op, "b", b_in);
  TORCH_CHECK_VALUE(b_in.sizes() == a_in.sizes(), op, ": b must have a's shape ", a_in.sizes(), ", got ",
                    b_in.sizes());
  check_same(op, "b", b_in, "a", a_in);
  TORCH_CHECK_VALUE(parts > 0, op, ": parts must be positive, got ", parts);
  const int64_t h = a_in.size(1);
  TORCH_CHECK_VALUE(h % parts == 0, op, ": channels of a (", h, ") must be divisible by parts (", parts, ")");
  const auto fmt = format_of(a_in);
  at::Tensor a = a_in.contiguous(fmt), b = b_in.contiguous(fmt);
  const int64_t q = h / parts;
  std::vector<at::Tensor> ys;
  std::vector<void*> ptrs;
  for (int64_t k = 0; k < parts; ++k) {
    ys.push_back(at::empty({a.size(0), 2 * q, a.size(2), a.size(3)}, a.options().memory_format(fmt)));
    ptrs.push_back(ys.back().data_ptr());
  }
  if (a.numel() > 0)
    interleave_table.get()(a.data_ptr(), b.data_ptr(), ptrs.data(), parts, a.element_size(), a.size(0), h,
                           a.size(2) * a.size(3), fmt == at::MemoryFormat::ChannelsLast, /*to_parts=*/true);
  return ys;
}

std::tuple<at::Tensor, at::Tensor> deinterleave_cpu(at::TensorList ys_in) {
  const char* op = "deinterleave";
  // (an empty ys never gets here: the dispatcher finds no tensor to dispatch on and raises)
  const at::Tensor& y0 = ys_in[0];
  check_cpu_4d(op, "ys[0]", y0);
  TORCH_CHECK_VALUE(y0.size(1) % 2 == 0, op, ": ys[0] must have an even number of channels, got ", y0.size(1));
  for (size_t k = 1; k < ys_in.size(); ++k) {
    const std::string name = "ys[" + std::to_string(k) + "]";
    check_cpu_4d(op, name.c_str(), ys_in[k]);
    TORCH_CHECK_VALUE(ys_in[k].sizes() == y0.sizes(), op, ": ", name, " must have ys[0]'s shape ", y0.sizes(),
                      ", got ", ys_in[k].sizes());
    check_same(op, name.c_str(), ys_in[k], "ys[0]", y0);
  }
  const auto fmt = format_of(y0);
  const int64_t parts = static_cast<int64_t>(ys_in.size()), q = y0.size(1) / 2, h = parts * q;
  std::vector<at::Tensor> ys;
  std::vector<void*> ptrs;
  for (const at::Tensor& y : ys_in) {
    ys.push_back(y.contiguous(fmt));
    ptrs.push_back(ys.back().data_ptr());
  }
  const auto opts = y0.options().memory_format(fmt);
  at::Tensor a = at::empty({y0.size(0), h, y0.size(2), y0.size(3)}, opts);
  at::Tensor b = at::empty({y0.size(0), h, y0.size(2), y0.size(3)}, opts);
  if (a.numel() > 0)
    interleave_table.get()(a.data_ptr(), b.data_ptr(), ptrs.data(), parts, a.element_size(), a.size(0), h,
                           a.size(2) * a.size(3), fmt == at::MemoryFormat::ChannelsLast, /*to_parts=*/false);
  return {a, b};
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflekern, CPU, m) {
  m.impl("interleave", &interleave_cpu);
  m.impl("deinterleave", &deinterleave_cpu);
}

}  // namespace shufflekern::cpu
