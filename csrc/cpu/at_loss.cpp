// CPU entry points of shufflekern::at_loss and at_loss_backward (maths: csrc/at_loss.h; the map kernels,
// per ISA: csrc/cpu/vec/at_loss.cpp).  The per-sample part (norms, loss, d loss / d q) works on the [N, H*W]
// q's only, in double, one sample at a time in a fixed order.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <vector>

#include "at_loss.h"
#include "cpu/at_loss_kernel.h"
#include "emu/route.h"

namespace shufflekern::cpu {

SK_DEFINE_KERNEL_TABLE(at_loss_sq_mean_table, AtMapFn);
SK_DEFINE_KERNEL_TABLE(at_loss_grad_map_table, AtMapFn);

namespace {

using namespace ::shufflekern::at_checks;

bool cpu_dtype(const at::Tensor& f) { return f.scalar_type() == at::kFloat || f.scalar_type() == at::kDouble; }
constexpr const char* kCpuDtypes = "f_student must be float32 or float64 (the CPU kernel's dtypes)";

AtMapArgs map_args(const at::Tensor& f, at::MemoryFormat fmt) {
  AtMapArgs a{};
  a.dtype = f.scalar_type() == at::kDouble ? kAtDouble : kAtFloat;
  a.channels_last = fmt == at::MemoryFormat::ChannelsLast;
  a.n = f.size(0);
  a.c = f.size(1);
  a.hw = f.size(2) * f.size(3);
  a.f = f.data_ptr();
  return a;
}

// Per sample n: the normalisers of q_s and q_t (and their reciprocals: the pixel loops multiply), in double.
struct Sample {
  AtNorm<double> ns, nt;
  double rs, rt;  // 1 / ns.m, 1 / nt.m
};

// The per-sample sums run over the pixels in four interleaved partial sums (p mod 4), added at the end: a
// fixed order (the same bits at any thread count) without one long chain of dependent adds.
template <typename T>
Sample sample_norms(const T* qs, const T* qt, int64_t P) {
  double ss[4] = {0, 0, 0, 0}, st[4] = {0, 0, 0, 0};
  int64_t p = 0;
  for (; p + 4 <= P; p += 4) {
    for (int j = 0; j < 4; ++j) {
      const double s = qs[p + j], t = qt[p + j];
      ss[j] += s * s;
      st[j] += t * t;
    }
  }
  for (int j = 0; p < P; ++p, ++j) {
    ss[j] += double(qs[p]) * double(qs[p]);
    st[j] += double(qt[p]) * double(qt[p]);
  }
  const Sample sm{at_norm((ss[0] + ss[1]) + (ss[2] + ss[3])), at_norm((st[0] + st[1]) + (st[2] + st[3])), 0, 0};
  return Sample{sm.ns, sm.nt, 1.0 / sm.ns.m, 1.0 / sm.nt.m};
}

template <typename T>
double forward_loss(const T* qs, const T* qt, int64_t N, int64_t P) {
  std::vector<double> per(N);
  at::parallel_for(0, N, std::max<int64_t>(1, 16384 / P), [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      const T *s = qs + n * P, *t = qt + n * P;
      const Sample sm = sample_norms(s, t, P);
      double acc[4] = {0, 0, 0, 0};
      for (int64_t p = 0; p < P; ++p) {
        const double d = double(s[p]) * sm.rs - double(t[p]) * sm.rt;
        acc[p & 3] += d * d;
      }
      per[n] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    }
  });
  double total = 0;
  for (int64_t n = 0; n < N; ++n) total += per[n];  // fixed order: the same bits at any thread count
  return total / double(N * P);
}

// d loss / d q (csrc/at_loss.h's at_grad_q with the division by m as a product with 1 / m).
template <typename T>
void grad_q(const T* qs, const T* qt, int64_t N, int64_t P, double grad, T* gs, T* gt) {
  const double k = 2.0 * grad / double(N * P);
  at::parallel_for(0, N, std::max<int64_t>(1, 16384 / P), [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      const T *s = qs + n * P, *t = qt + n * P;
      const Sample sm = sample_norms(s, t, P);
      double ds4[4] = {0, 0, 0, 0}, dt4[4] = {0, 0, 0, 0};
      for (int64_t p = 0; p < P; ++p) {
        const double as = double(s[p]) * sm.rs, at_ = double(t[p]) * sm.rt, d = as - at_;
        ds4[p & 3] += as * d;
        dt4[p & 3] += at_ * d;
      }
      // where ||q|| < eps the norm is the constant eps: no a * d term
      const double ds = sm.ns.full ? (ds4[0] + ds4[1]) + (ds4[2] + ds4[3]) : 0.0;
      const double dt = sm.nt.full ? (dt4[0] + dt4[1]) + (dt4[2] + dt4[3]) : 0.0;
      const double ks = k * sm.rs, kt = -k * sm.rt;
      T *os = gs ? gs + n * P : nullptr, *ot = gt ? gt + n * P : nullptr;
      for (int64_t p = 0; p < P; ++p) {
        const double as = double(s[p]) * sm.rs, at_ = double(t[p]) * sm.rt, d = as - at_;
        if (os) os[p] = T(ks * (d - as * ds));
        if (ot) ot[p] = T(kt * (d - at_ * dt));
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cpu(const at::Tensor& fs_in, const at::Tensor& ft_in) {
  check_maps(kOp, fs_in, ft_in, cpu_dtype(fs_in), kCpuDtypes);
  const auto fmt_s = format_of(fs_in), fmt_t = format_of(ft_in);
  const at::Tensor fs = fs_in.contiguous(fmt_s), ft = ft_in.contiguous(fmt_t);
  const int64_t N = fs.size(0), P = fs.size(2) * fs.size(3);
  const auto qopt = fs.options().dtype(acc_type(fs));
  at::Tensor qs = at::empty({N, P}, qopt), qt = at::empty({N, P}, qopt);
  for (auto [f, fmt, q] : {std::tuple{&fs, fmt_s, &qs}, std::tuple{&ft, fmt_t, &qt}}) {
    AtMapArgs a = map_args(*f, fmt);
    a.q = q->data_ptr();
    at_loss_sq_mean_table.get()(a);
  }
  double loss = 0;
  AT_DISPATCH_FLOATING_TYPES(qs.scalar_type(), "at_loss_cpu", [&] {
    loss = forward_loss(qs.const_data_ptr<scalar_t>(), qt.const_data_ptr<scalar_t>(), N, P);
  });
  return {at::scalar_tensor(loss, fs.options()), qs, qt};
}

std::tuple<at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_in, const at::Tensor& fs_in,
                                                const at::Tensor& ft_in, const at::Tensor& qs_in,
                                                const at::Tensor& qt_in, std::array<bool, 2> mask) {
  static const char* op = "at_loss_backward";
  check_maps(op, fs_in, ft_in, cpu_dtype(fs_in), kCpuDtypes);
  const at::Tensor qs = check_q(op, "q_student", qs_in, fs_in), qt = check_q(op, "q_teacher", qt_in, fs_in);
  const at::Tensor grad = check_grad(op, grad_in, fs_in);
  const auto fmt_s = format_of(fs_in), fmt_t = format_of(ft_in);
  const at::Tensor fs = fs_in.contiguous(fmt_s), ft = ft_in.contiguous(fmt_t);
  at::Tensor gfs = grad_like(fs, fmt_s, mask[0]), gft = grad_like(ft, fmt_t, mask[1]);
  if (!mask[0] && !mask[1]) return {gfs, gft};
  const int64_t N = fs.size(0), P = fs.size(2) * fs.size(3);
  at::Tensor gqs = mask[0] ? at::empty_like(qs) : at::Tensor(), gqt = mask[1] ? at::empty_like(qt) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(qs.scalar_type(), "at_loss_backward_cpu", [&] {
    grad_q(qs.const_data_ptr<scalar_t>(), qt.const_data_ptr<scalar_t>(), N, P, grad.item<double>(),
           mask[0] ? gqs.data_ptr<scalar_t>() : nullptr, mask[1] ? gqt.data_ptr<scalar_t>() : nullptr);
  });
  for (auto [f, fmt, gq, out] : {std::tuple{&fs, fmt_s, &gqs, &gfs}, std::tuple{&ft, fmt_t, &gqt, &gft}}) {
    if (!gq->defined()) continue;
    AtMapArgs a = map_args(*f, fmt);
    a.g = gq->const_data_ptr();
    a.grad = out->data_ptr();
    at_loss_grad_map_table.get()(a);
  }
  return {gfs, gft};
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflekern, CPU, m) {
  m.impl("at_loss", SK_ROUTED("at_loss", forward_cpu));
  m.impl("at_loss_backward", SK_ROUTED("at_loss_backward", backward_cpu));
}

}  // namespace shufflekern::cpu
