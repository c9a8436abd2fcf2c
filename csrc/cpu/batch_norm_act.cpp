// CPU entry points of shufflekern::batch_norm_act and its backward (kernels in csrc/cpu/vec/batch_norm_act.cpp).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/batch_norm_act_kernel.h"
#include "batch_norm_act.h"
#include "checks.h"
#include "emu/route.h"

namespace shufflekern::cpu {

SK_DEFINE_KERNEL_TABLE(batch_norm_act_forward_table, BnActFn);
SK_DEFINE_KERNEL_TABLE(batch_norm_act_backward_table, BnActFn);

namespace {

using namespace ::shufflekern::bn_checks;

bool cpu_dtype(const at::Tensor& x) { return x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble; }
constexpr const char* kCpuDtypes = "the CPU kernel takes float32 or float64 x";

BnActArgs base_args(const at::Tensor& x, bool channels_last, bool training, double eps, bool relu) {
  check_eps(eps);
  BnActArgs a{};
  a.dtype = x.scalar_type() == at::kDouble ? kBnDouble : kBnFloat;
  a.channels_last = channels_last;
  a.relu = relu;
  a.training = training;
  a.n = x.size(0);
  a.c = x.size(1);
  a.hw = x.size(2) * x.size(3);
  a.eps = eps;
  return a;
}

const void* ptr(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cpu(
    const at::Tensor& x_in, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool training, double eps, bool relu) {
  check_x(x_in, training, cpu_dtype(x_in), kCpuDtypes);
  const auto fmt = format_of(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  const at::Tensor w = channel_param(weight, "weight", x), b = channel_param(bias, "bias", x);
  const at::Tensor r = like_x(residual, "residual", x, fmt);
  // Training: the batch statistics, returned.  Evaluation: the running statistics are read, and 0-element
  // tensors returned (as ATen's native_batch_norm does; the backward is given the running statistics).
  at::Tensor mean = at::empty({training ? x.size(1) : 0}, x.options());
  at::Tensor var = at::empty({training ? x.size(1) : 0}, x.options());
  at::Tensor rm, rv;
  if (!training) {
    check_running(running_mean, running_var);
    rm = channel_param(running_mean, "running_mean", x);
    rv = channel_param(running_var, "running_var", x);
  }
  at::Tensor y = at::empty_like(x, fmt);
  if (x.numel() > 0) {
    BnActArgs a = base_args(x, fmt == at::MemoryFormat::ChannelsLast, training, eps, relu);
    a.x = x.data_ptr();
    a.residual = ptr(r);
    a.weight = ptr(w);
    a.bias = ptr(b);
    a.mean = training ? mean.data_ptr() : const_cast<void*>(rm.const_data_ptr());
    a.var = training ? var.data_ptr() : const_cast<void*>(rv.const_data_ptr());
    a.y = y.data_ptr();
    batch_norm_act_forward_table.get()(a);
  }
  return {y, mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x_in, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual, const at::Tensor& mean_in,
    const at::Tensor& var_in, bool training, double eps, bool relu, std::array<bool, 4> mask) {
  check_x(x_in, training, cpu_dtype(x_in), kCpuDtypes);
  const auto fmt = format_of(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  const at::Tensor g = like_x(grad_y, "grad_y", x, fmt);
  const at::Tensor w = channel_param(weight, "weight", x), b = channel_param(bias, "bias", x);
  const at::Tensor r = like_x(residual, "residual", x, fmt);
  const at::Tensor mean = channel_param(mean_in, "mean", x), var = channel_param(var_in, "var", x);
  BnGrads grads(x, r, fmt, mask);
  const at::Tensor &gx = grads.gx, &gr = grads.gr, &gw = grads.gw, &gb = grads.gb;
  if (grads.any(x)) {
    BnActArgs a = base_args(x, fmt == at::MemoryFormat::ChannelsLast, training, eps, relu);
    a.x = x.data_ptr();
    a.residual = ptr(r);
    a.weight = ptr(w);
    a.bias = ptr(b);
    a.mean = const_cast<void*>(ptr(mean));
    a.var = const_cast<void*>(ptr(var));
    a.grad_y = g.data_ptr();
    a.grad_x = gx.defined() ? gx.data_ptr() : nullptr;
    a.grad_residual = gr.defined() ? gr.data_ptr() : nullptr;
    a.grad_weight = gw.defined() ? gw.data_ptr() : nullptr;
    a.grad_bias = gb.defined() ? gb.data_ptr() : nullptr;
    batch_norm_act_backward_table.get()(a);
  }
  return grads.result(x, mask);
}

}  // namespace

// Routed although there is no CUDA kernel yet: under sk.backend("emulated") a call fails loudly (no emulated
// kernel for the op) instead of silently running this CPU kernel; once a .cu registers one, it runs.
TORCH_LIBRARY_IMPL(shufflekern, CPU, m) {
  m.impl("batch_norm_act", SK_ROUTED("batch_norm_act", forward_cpu));
  m.impl("batch_norm_act_backward", SK_ROUTED("batch_norm_act_backward", backward_cpu));
}

}  // namespace shufflekern::cpu
