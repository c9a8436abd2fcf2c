// batch_norm_act's per-channel maths and argument checks, shared by the CPU entry points
// (csrc/cpu/batch_norm_act.cpp) and the CUDA ones (csrc/cuda/batch_norm_act.cu, also run by the emulator).
//
//   z = x * scale + shift [+ residual],  y = relu(z) (or z)
//   scale = w * invstd,  shift = b - mean * w * invstd,  invstd = 1 / sqrt(var + eps)
// Training: mean and the biased var are the batch's, over N, H, W (summed shifted by the channel's first
// value, so a large mean does not cancel the variance away); evaluation: the running statistics.  Backward,
// with gz = dL/dz (the ReLU mask recomputed from x with the forward's own scale and shift, so it is the
// forward's y > 0 bit for bit), M = N*H*W, sg = sum gz, sgx = sum gz (x - mean):
//   grad_bias = sg,  grad_weight = sgx * invstd,  grad_residual = gz,
//   grad_x = A gz + B (x - mean) + D,  A = w invstd,  B = -w invstd^3 sgx / M,  D = -w invstd sg / M
// (evaluation: B = D = 0).  The coefficients are computed in double from the stored mean and var.
#pragma once
#include <cmath>
#include <cstdint>

#include "common.h"

#include <ATen/ATen.h>

#include <array>
#include <tuple>

#include "checks.h"

namespace shufflekern {

// Internal linkage: csrc/cpu/vec/ compiles this header once per ISA (see csrc/kd_loss.h).
namespace {

struct BnCoef {
  double invstd, scale, shift;
};

SK_HOST_DEVICE inline BnCoef bn_coefficients(double mean, double var, double w, double b, double eps) {
  const double inv = 1.0 / sqrt(var + eps);
  return BnCoef{inv, w * inv, b - mean * w * inv};
}

struct BnGradCoef {
  double a, b, d;
};

SK_HOST_DEVICE inline BnGradCoef bn_grad_coefficients(double w, double invstd, double sg, double sgx, double m,
                                                      bool training) {
  const double a = w * invstd;
  if (!training) return BnGradCoef{a, 0.0, 0.0};
  return BnGradCoef{a, -a * invstd * invstd * sgx / m, -a * sg / m};
}

}  // namespace

namespace bn_checks {

constexpr const char* kOp = "batch_norm_act";

// A [C] parameter of x's dtype and device, contiguous, or undefined.
inline at::Tensor channel_param(const std::optional<at::Tensor>& t, const char* name, const at::Tensor& x,
                                const char* op = kOp) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  check_same(op, name, *t, "x", x);
  TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == x.size(1), op, ": ", name, " must be 1-D of length C = ",
                    x.size(1), ", got shape ", t->sizes());
  return t->contiguous();
}

// x's shape; `dtype_ok` says whether the calling kernel takes x's dtype (`kernels` names them for the message).
inline void check_x(const at::Tensor& x, bool training, bool dtype_ok, const char* kernels, const char* op = kOp) {
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": x must be 4-D [N, C, H, W], got ", x.dim(), "-D");
  TORCH_CHECK_TYPE(dtype_ok, op, ": ", kernels, ", got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.size(1) > 0, op, ": x must have at least one channel");
  TORCH_CHECK_VALUE(!training || x.numel() > 0, op,
                    ": training needs at least one value per channel, got x of shape ", x.sizes());
}

// A tensor of x's shape (residual, grad_y) in x's memory format, or undefined.
inline at::Tensor like_x(const std::optional<at::Tensor>& t, const char* name, const at::Tensor& x,
                         at::MemoryFormat fmt) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  check_same(kOp, name, *t, "x", x);
  TORCH_CHECK_VALUE(t->sizes() == x.sizes(), kOp, ": ", name, " must have the shape of x ", x.sizes(), ", got ",
                    t->sizes());
  return t->contiguous(fmt);
}

inline void check_eps(double eps, const char* op = kOp) {
  TORCH_CHECK_VALUE(eps >= 0, op, ": eps must be non-negative, got ", eps);
}

inline void check_running(const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
                          const char* op = kOp) {
  TORCH_CHECK_VALUE(running_mean.has_value() && running_mean->defined() && running_var.has_value() &&
                        running_var->defined(),
                    op, ": evaluation (training=False) needs running_mean and running_var");
}

// The backward's outputs.  grad_residual is dL/dz, which grad_x reads back when there is a residual, so it
// exists whenever either is asked for; with no element, the parameter gradients are zeros.
struct BnGrads {
  at::Tensor gx, gr, gw, gb;
  BnGrads(const at::Tensor& x, const at::Tensor& r, at::MemoryFormat fmt, std::array<bool, 4> mask) {
    if (mask[0]) gx = at::empty_like(x, fmt);
    if (r.defined() && (mask[0] || mask[1])) gr = at::empty_like(x, fmt);
    if (mask[2]) gw = x.numel() ? at::empty({x.size(1)}, x.options()) : at::zeros({x.size(1)}, x.options());
    if (mask[3]) gb = x.numel() ? at::empty({x.size(1)}, x.options()) : at::zeros({x.size(1)}, x.options());
  }
  // Whether a kernel has anything to compute.
  bool any(const at::Tensor& x) const { return x.numel() > 0 && (gx.defined() || gr.defined() || gw.defined() || gb.defined()); }
  // Gradients not asked for are 0-element tensors (a schema cannot return None).
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> result(const at::Tensor& x, std::array<bool, 4> mask) const {
    const auto none = [&] { return at::empty({0}, x.options()); };
    return {mask[0] ? gx : none(), mask[1] ? gr : none(), mask[2] ? gw : none(), mask[3] ? gb : none()};
  }
};

}  // namespace bn_checks

}  // namespace shufflekern
