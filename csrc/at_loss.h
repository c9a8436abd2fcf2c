// at_loss (attention transfer, RepDistiller's distiller_zoo/AT.py with p = 2): the maths shared by the CPU
// kernels (csrc/cpu/vec/at_loss.cpp) and the CUDA ones (csrc/cuda/at_loss.cu, also run by the emulator), and
// the C++ argument checks of both entry points.  The Triton kernels (shufflekern/triton/at_loss.py) mirror it.
//
// For a map f of [N, C, H, W] (P = H*W pixels a sample):
//   q[n, p] = (1/C) sum_c f[n, c, p]^2                          (f.pow(2).mean(1))
//   m[n]    = max(||q[n, :]||_2, eps),  eps = 1e-12,  a = q / m  (F.normalize)
//   loss    = (1 / (N P)) sum_{n, p} (a_s - a_t)^2               ((a_s - a_t).pow(2).mean())
// Backward, with k = 2 grad_loss / (N P), e = a_s - a_t, d_s = sum_p a_s e, d_t = sum_p a_t e (per sample):
//   g_s = d loss / d q_s =  k (e - [||q_s|| >= eps] a_s d_s) / m_s
//   g_t = d loss / d q_t = -k (e - [||q_t|| >= eps] a_t d_t) / m_t
// (below eps the norm is the constant eps: torch's clamp_min passes the gradient where norm >= eps), and
//   d loss / d f[n, c, p] = (2 / C) f[n, c, p] g[n, p].
// The kernels read each map once forward (q) and once backward (writing its gradient once); q (N x P, in the
// accumulation type) is what the forward returns for the backward.  The per-sample sums (norms, e's sums, the
// d's) are taken in two passes over q (norms, then e): no cancellation of sum a_s^2 + sum a_t^2 - 2 sum a_s a_t.
#pragma once
#include <cmath>
#include <cstdint>

#include <ATen/ATen.h>

#include "checks.h"
#include "common.h"

namespace shufflekern {

constexpr double kAtEps = 1e-12;  // F.normalize's default

// Internal linkage: csrc/cpu/vec/ compiles this header once per ISA (see csrc/kd_loss.h).
namespace {

// The normaliser of a sample from its sum of q^2: m = max(||q||, eps); `full` is whether the gradient goes
// through the norm (||q|| >= eps) or sees the constant eps.
template <typename acc_t>
struct AtNorm {
  acc_t m;
  bool full;
};

template <typename acc_t>
SK_HOST_DEVICE inline AtNorm<acc_t> at_norm(acc_t sumsq) {
  const acc_t n = std::sqrt(sumsq), eps = acc_t(kAtEps);
  return AtNorm<acc_t>{n >= eps ? n : eps, n >= eps};
}

// d loss / d q of one pixel: sign = +1 for the student (a = a_s, d = d_s), -1 for the teacher (a_t, d_t).
template <typename acc_t>
SK_HOST_DEVICE inline acc_t at_grad_q(acc_t k, acc_t e, acc_t a, acc_t d, AtNorm<acc_t> nm, acc_t sign) {
  return sign * k * (e - (nm.full ? a * d : acc_t(0))) / nm.m;
}

}  // namespace
}  // namespace shufflekern

namespace shufflekern::at_checks {

constexpr const char* kOp = "at_loss";

// f_student and f_teacher: 4-D, non-empty, floating, same dtype and device, N, H, W equal (C may differ).
// `dtype_ok` says whether the calling kernel takes the dtype (`kernels` names what it takes).
inline void check_maps(const char* op, const at::Tensor& fs, const at::Tensor& ft, bool dtype_ok,
                       const char* kernels) {
  TORCH_CHECK_VALUE(fs.dim() == 4, op, ": f_student must be 4-D [N, C, H, W], got ", fs.dim(), "-D");
  TORCH_CHECK_VALUE(ft.dim() == 4, op, ": f_teacher must be 4-D [N, C, H, W], got ", ft.dim(), "-D");
  check_same(op, "f_teacher", ft, "f_student", fs);
  TORCH_CHECK_TYPE(dtype_ok, op, ": ", kernels, ", got ", fs.scalar_type());
  TORCH_CHECK_VALUE(ft.size(0) == fs.size(0), op, ": f_teacher must have f_student's batch size N = ", fs.size(0),
                    ", got shape ", ft.sizes());
  TORCH_CHECK_VALUE(ft.size(2) == fs.size(2) && ft.size(3) == fs.size(3), op,
                    ": f_teacher must have f_student's H x W = ", fs.size(2), " x ", fs.size(3), ", got shape ",
                    ft.sizes());
  TORCH_CHECK_VALUE(fs.size(0) > 0 && fs.size(2) * fs.size(3) > 0, op,
                    ": f_student must have at least one sample and one pixel, got shape ", fs.sizes());
  TORCH_CHECK_VALUE(fs.size(1) > 0, op, ": f_student must have at least one channel, got shape ", fs.sizes());
  TORCH_CHECK_VALUE(ft.size(1) > 0, op, ": f_teacher must have at least one channel, got shape ", ft.sizes());
}

// The accumulation type (q's dtype): float64 for float64 maps, else float32.
inline at::ScalarType acc_type(const at::Tensor& f) {
  return f.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The backward's q_student / q_teacher: [N, H*W] of the accumulation type, contiguous.
inline at::Tensor check_q(const char* op, const char* name, const at::Tensor& q, const at::Tensor& f) {
  TORCH_CHECK_VALUE(q.dim() == 2 && q.size(0) == f.size(0) && q.size(1) == f.size(2) * f.size(3), op, ": ", name,
                    " must be [N, H*W] = [", f.size(0), ", ", f.size(2) * f.size(3), "], got shape ", q.sizes());
  TORCH_CHECK_TYPE(q.scalar_type() == acc_type(f), op, ": ", name, " must be ", acc_type(f), ", got ",
                   q.scalar_type());
  TORCH_CHECK_VALUE(q.device() == f.device(), op, ": ", name, " must be on the maps' device (", f.device(),
                    "), got ", q.device());
  return q.contiguous();
}

inline at::Tensor check_grad(const char* op, const at::Tensor& grad, const at::Tensor& f) {
  TORCH_CHECK_VALUE(grad.numel() == 1, op, ": grad must hold one value (the loss's gradient), got shape ",
                    grad.sizes());
  TORCH_CHECK_VALUE(grad.device() == f.device(), op, ": grad must be on the maps' device (", f.device(), "), got ",
                    grad.device());
  return grad.reshape({1}).to(acc_type(f)).contiguous();
}

// A gradient of f in f's memory format, or a 0-element tensor when not asked.
inline at::Tensor grad_like(const at::Tensor& f, at::MemoryFormat fmt, bool asked) {
  return asked ? at::empty_like(f, fmt) : at::empty({0}, f.options());
}

}  // namespace shufflekern::at_checks
