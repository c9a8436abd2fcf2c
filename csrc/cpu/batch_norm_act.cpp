// CPU entry points of shufflekern::batch_norm_act and its backward (kernels in csrc/cpu/vec/batch_norm_act.cpp).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "cpu/batch_norm_act_kernel.h"
#include "batch_norm_act.h"
#include "checks.h"
#include "emu/route.h"

namespace shufflekern::cpu {

SK_DEFINE_KERNEL_TABLE(batch_norm_act_forward_table, BnActFn);
SK_DEFINE_KERNEL_TABLE(batch_norm_act_backward_table, BnActFn);
SK_DEFINE_KERNEL_TABLE(bn_relu_max_pool_forward_table, BnPoolFn);
SK_DEFINE_KERNEL_TABLE(bn_relu_max_pool_backward_table, BnPoolFn);

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

// ---- bn_relu_max_pool: max_pool2d(relu(batch_norm(x)), 3, 2, 1) and its backward (CPU only) -------------------

constexpr const char* kPoolOp = "bn_relu_max_pool";

// x's checks (and eps's); returns x dense in its memory format.
at::Tensor pool_input(const at::Tensor& x_in, bool training, double eps) {
  check_x(x_in, training, cpu_dtype(x_in), kCpuDtypes, kPoolOp);
  TORCH_CHECK_VALUE(x_in.size(2) > 0 && x_in.size(3) > 0, kPoolOp, ": x must have H, W > 0, got shape ",
                    x_in.sizes());
  check_eps(eps, kPoolOp);
  return x_in.contiguous(format_of(x_in));
}

std::vector<int64_t> pooled_shape(const at::Tensor& x) {
  return {x.size(0), x.size(1), (x.size(2) - 1) / 2 + 1, (x.size(3) - 1) / 2 + 1};
}

BnPoolArgs pool_args(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, bool training, double eps) {
  BnPoolArgs p{};
  p.bn = base_args(x, format_of(x) == at::MemoryFormat::ChannelsLast, training, eps, /*relu=*/true);
  p.bn.x = x.data_ptr();
  p.bn.weight = ptr(w);
  p.bn.bias = ptr(b);
  const std::vector<int64_t> pooled = pooled_shape(x);
  p.h = x.size(2);
  p.w = x.size(3);
  p.ho = pooled[2];
  p.wo = pooled[3];
  return p;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pool_forward_cpu(
    const at::Tensor& x_in, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var, bool training,
    double eps) {
  const at::Tensor x = pool_input(x_in, training, eps);
  const auto fmt = format_of(x);
  const at::Tensor w = channel_param(weight, "weight", x, kPoolOp), b = channel_param(bias, "bias", x, kPoolOp);
  // As batch_norm_act: training returns the batch statistics, evaluation reads the running ones.
  at::Tensor mean = at::empty({training ? x.size(1) : 0}, x.options());
  at::Tensor var = at::empty({training ? x.size(1) : 0}, x.options());
  at::Tensor rm, rv;
  if (!training) {
    check_running(running_mean, running_var, kPoolOp);
    rm = channel_param(running_mean, "running_mean", x, kPoolOp);
    rv = channel_param(running_var, "running_var", x, kPoolOp);
  }
  at::Tensor y = at::empty(pooled_shape(x), x.options().memory_format(fmt));
  at::Tensor argmax = at::empty(pooled_shape(x), x.options().dtype(at::kByte).memory_format(fmt));
  if (x.numel() > 0) {
    BnPoolArgs p = pool_args(x, w, b, training, eps);
    p.bn.mean = training ? mean.data_ptr() : const_cast<void*>(rm.const_data_ptr());
    p.bn.var = training ? var.data_ptr() : const_cast<void*>(rv.const_data_ptr());
    p.bn.y = y.data_ptr();
    p.argmax = argmax.data_ptr();
    bn_relu_max_pool_forward_table.get()(p);
  }
  return {y, argmax, mean, var};
}

// A pooled-shape operand of the backward (grad_y, argmax), dense in x's memory format.
at::Tensor pooled_operand(const at::Tensor& t, const char* name, const at::Tensor& x, at::ScalarType dtype) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, kPoolOp, ": ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), kPoolOp, ": ", name, " must be on the device of x (", x.device(),
                    "), got ", t.device());
  const std::vector<int64_t> shape = pooled_shape(x);
  TORCH_CHECK_VALUE(t.sizes() == at::IntArrayRef(shape), kPoolOp, ": ", name, " must have the pooled shape ",
                    at::IntArrayRef(shape), ", got ", t.sizes());
  return t.contiguous(format_of(x));
}

// argmax must be the forward's (a hand-made one is not validated; an entry outside the input is skipped, never
// followed out of bounds).
std::tuple<at::Tensor, at::Tensor, at::Tensor> pool_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x_in, const at::Tensor& argmax_in,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, const at::Tensor& mean_in,
    const at::Tensor& var_in, bool training, double eps, std::array<bool, 3> mask) {
  const at::Tensor x = pool_input(x_in, training, eps);
  const auto fmt = format_of(x);
  const at::Tensor g = pooled_operand(grad_y, "grad_y", x, x.scalar_type());
  const at::Tensor argmax = pooled_operand(argmax_in, "argmax", x, at::kByte);
  const at::Tensor w = channel_param(weight, "weight", x, kPoolOp), b = channel_param(bias, "bias", x, kPoolOp);
  const at::Tensor mean = channel_param(mean_in, "mean", x, kPoolOp), var = channel_param(var_in, "var", x, kPoolOp);
  TORCH_CHECK_VALUE(mean.defined() && var.defined(), kPoolOp, ": mean and var must be given");
  const auto param_grad = [&](bool asked) {
    if (!asked) return at::empty({0}, x.options());
    return x.numel() ? at::empty({x.size(1)}, x.options()) : at::zeros({x.size(1)}, x.options());
  };
  at::Tensor gx = mask[0] ? at::empty_like(x, fmt) : at::empty({0}, x.options());
  at::Tensor gw = param_grad(mask[1]), gb = param_grad(mask[2]);
  if (x.numel() > 0 && (mask[0] || mask[1] || mask[2])) {
    BnPoolArgs p = pool_args(x, w, b, training, eps);
    p.bn.mean = const_cast<void*>(mean.const_data_ptr());
    p.bn.var = const_cast<void*>(var.const_data_ptr());
    p.bn.grad_y = g.const_data_ptr();
    p.bn.grad_x = mask[0] ? gx.data_ptr() : nullptr;
    p.bn.grad_weight = mask[1] ? gw.data_ptr() : nullptr;
    p.bn.grad_bias = mask[2] ? gb.data_ptr() : nullptr;
    p.argmax = const_cast<void*>(argmax.const_data_ptr());
    bn_relu_max_pool_backward_table.get()(p);
  }
  return {gx, gw, gb};
}

}  // namespace

// Routed although there is no CUDA kernel yet: under sk.backend("emulated") a call fails loudly (no emulated
// kernel for the op) instead of silently running this CPU kernel; once a .cu registers one, it runs.
TORCH_LIBRARY_IMPL(shufflekern, CPU, m) {
  m.impl("batch_norm_act", SK_ROUTED("batch_norm_act", forward_cpu));
  m.impl("batch_norm_act_backward", SK_ROUTED("batch_norm_act_backward", backward_cpu));
  m.impl("bn_relu_max_pool", &pool_forward_cpu);
  m.impl("bn_relu_max_pool_backward", &pool_backward_cpu);
}

}  // namespace shufflekern::cpu
