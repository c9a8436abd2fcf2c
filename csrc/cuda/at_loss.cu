// CUDA entry points and kernels of shufflekern::at_loss and at_loss_backward (maths: csrc/at_loss.h).  Written
// against csrc/cuda/runtime.h: nvcc builds it for CUDA tensors, csrc/emu/at_loss.cpp runs the same source under
// the emulator.
//
// A map's element (p, c), p = n*HW + q over the N*HW pixels, lives at n*sN + c*sC + q*sQ (NCHW: sQ = 1;
// channels_last: sC = 1).  Blocks are kWarp x kRows threads with the warp along the contiguous dimension:
//   NCHW:           a block takes 32 consecutive pixels (threadIdx.x) and the 8 rows split the channels
//                   (c = ty, ty + 8, ...); the 8 partial sums of a pixel are added through shared memory;
//   channels_last:  a block takes 8 pixels (threadIdx.y), a warp reads a pixel's channels (c = tx, tx + 32, ...)
//                   and reduces them with shuffles.
// Passes:
//   forward:   _at_sq_mean (each map: read once, write q [N, HW])  ->  _at_sample_loss (a block a sample: the
//              norms, then sum (a_s - a_t)^2 over the sample, in double)  ->  _at_loss_total (one block: the
//              samples' terms in a fixed order, / (N HW), the 0-dim loss)
//   backward:  _at_grad_q (a block a sample: d loss / d q of both maps from q and grad, read on the device)
//              ->  _at_grad_map (each map asked for: read once, write its gradient once)
// Every sum is taken in a fixed order (shuffle butterflies, shared memory in thread order): no atomics, the
// same bits every run.  Nothing is synchronised with the host.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <array>

#include "at_loss.h"
#include "cuda/runtime.h"

namespace shufflekern::SK_DEV_NS {
namespace {

using namespace ::shufflekern::at_checks;

constexpr int kWarp = 32, kRows = 8;  // the map kernels' blocks
constexpr int kThreads = 256;         // the per-sample kernels' blocks (kThreads / kWarp warps)
constexpr int kWarps = kThreads / kWarp;

struct AtGeo {
  int64_t P, C, HW, sN, sC, sQ;
  bool cl;
  SK_HOST_DEVICE int64_t off(int64_t p, int64_t c) const {
    const int64_t n = p / HW;
    return n * sN + c * sC + (p - n * HW) * sQ;
  }
};

// The pixel and the first channel / channel step of this thread in a map kernel (see the header comment).
struct AtTile {
  int64_t p, c0, step;
  __device__ explicit AtTile(const AtGeo& geo) {
    const int tx = threadIdx.x, ty = threadIdx.y;
    p = int64_t(blockIdx.x) * (geo.cl ? kRows : kWarp) + (geo.cl ? ty : tx);
    c0 = geo.cl ? tx : ty;
    step = geo.cl ? kWarp : kRows;
  }
};

// q[p] = (1 / C) sum_c f[p, c]^2.
template <typename T, typename Acc>
__global__ void _at_sq_mean_kernel(SK_GLOBAL(const T) f, SK_GLOBAL(Acc) q, AtGeo geo) {
  SK_SHARED(Acc, sh, [kRows][kWarp]);
  const AtTile t(geo);
  const bool live = t.p < geo.P;
  Acc s = Acc(0);
  if (live) {
    for (int64_t c = t.c0; c < geo.C; c += t.step) {
      const Acc x = Acc(f[geo.off(t.p, c)]);
      s += x * x;
    }
  }
  const Acc inv_c = Acc(1) / Acc(geo.C);
  if (geo.cl) {  // a warp is one pixel: butterfly over its lanes (every lane takes part)
    for (int o = kWarp / 2; o > 0; o /= 2) s += __shfl_xor_sync(0xFFFFFFFFu, s, o);
    if (threadIdx.x == 0 && live) q[t.p] = s * inv_c;
    return;
  }
  sh[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && live) {
    Acc a = Acc(0);
    for (int r = 0; r < kRows; ++r) a += sh[r][threadIdx.x];
    q[t.p] = a * inv_c;
  }
}

// Sums of two values over the block's kThreads threads, in a fixed order; every thread gets the totals.
template <typename Acc>
__device__ void block_sum2(Acc& a, Acc& b, Acc (&sh)[kWarps][2]) {
  for (int o = kWarp / 2; o > 0; o /= 2) {
    a += __shfl_xor_sync(0xFFFFFFFFu, a, o);
    b += __shfl_xor_sync(0xFFFFFFFFu, b, o);
  }
  const int warp = threadIdx.x / kWarp;
  if (threadIdx.x % kWarp == 0) {
    sh[warp][0] = a;
    sh[warp][1] = b;
  }
  __syncthreads();
  a = Acc(0);
  b = Acc(0);
  for (int w = 0; w < kWarps; ++w) {
    a += sh[w][0];
    b += sh[w][1];
  }
  __syncthreads();  // sh is reused by the next call
}

// Normalisers of sample n of both maps (pass 1 over its q's).
template <typename Acc>
__device__ void sample_norms(SK_GLOBAL(const Acc) qs, SK_GLOBAL(const Acc) qt, int64_t P, Acc (&sh)[kWarps][2],
                             AtNorm<Acc>& ns, AtNorm<Acc>& nt) {
  Acc ss = Acc(0), st = Acc(0);
  for (int64_t p = threadIdx.x; p < P; p += kThreads) {
    const Acc a = qs[p], b = qt[p];
    ss += a * a;
    st += b * b;
  }
  block_sum2(ss, st, sh);
  ns = at_norm(ss);
  nt = at_norm(st);
}

// per[n] = sum_p (a_s - a_t)^2 of sample n = blockIdx.x, in double.
template <typename Acc>
__global__ void _at_sample_loss_kernel(SK_GLOBAL(const Acc) qs_all, SK_GLOBAL(const Acc) qt_all,
                                       SK_GLOBAL(double) per, int64_t P) {
  SK_SHARED(Acc, sh, [kWarps][2]);
  SK_SHARED(double, shd, [kWarps][2]);
  const int64_t n = blockIdx.x;
  auto qs = qs_all + n * P;
  auto qt = qt_all + n * P;
  AtNorm<Acc> ns, nt;
  sample_norms<Acc>(qs, qt, P, sh, ns, nt);
  double e2 = 0.0, unused = 0.0;
  for (int64_t p = threadIdx.x; p < P; p += kThreads) {
    const Acc e = qs[p] / ns.m - qt[p] / nt.m;
    e2 += double(e * e);
  }
  block_sum2(e2, unused, shd);
  if (threadIdx.x == 0) per[n] = e2;
}

// loss = sum_n per[n] / (N P): one block, fixed order.
template <typename T>
__global__ void _at_loss_total_kernel(SK_GLOBAL(const double) per, int64_t N, double inv_np, SK_GLOBAL(T) loss) {
  SK_SHARED(double, shd, [kWarps][2]);
  double s = 0.0, unused = 0.0;
  for (int64_t n = threadIdx.x; n < N; n += kThreads) s += double(per[n]);
  block_sum2(s, unused, shd);
  if (threadIdx.x == 0) loss[0] = T(s * inv_np);
}

// d loss / d q of both maps for sample n = blockIdx.x (gqs or gqt null: not asked), k = 2 grad / (N P).
template <typename Acc>
__global__ void _at_grad_q_kernel(SK_GLOBAL(const Acc) qs_all, SK_GLOBAL(const Acc) qt_all, SK_GLOBAL(const Acc) grad,
                                  SK_GLOBAL(Acc) gqs, SK_GLOBAL(Acc) gqt, int64_t P, Acc inv_np) {
  SK_SHARED(Acc, sh, [kWarps][2]);
  const int64_t n = blockIdx.x;
  auto qs = qs_all + n * P;
  auto qt = qt_all + n * P;
  AtNorm<Acc> ns, nt;
  sample_norms<Acc>(qs, qt, P, sh, ns, nt);
  Acc ds = Acc(0), dt = Acc(0);
  for (int64_t p = threadIdx.x; p < P; p += kThreads) {
    const Acc as = qs[p] / ns.m, at_ = qt[p] / nt.m, e = as - at_;
    ds += as * e;
    dt += at_ * e;
  }
  block_sum2(ds, dt, sh);
  const Acc k = Acc(2) * grad[0] * inv_np;
  for (int64_t p = threadIdx.x; p < P; p += kThreads) {
    const Acc as = qs[p] / ns.m, at_ = qt[p] / nt.m, e = as - at_;
    if (gqs) gqs[n * P + p] = at_grad_q(k, e, as, ds, ns, Acc(1));
    if (gqt) gqt[n * P + p] = at_grad_q(k, e, at_, dt, nt, Acc(-1));
  }
}

// grad[p, c] = (2 / C) f[p, c] gq[p].
template <typename T, typename Acc>
__global__ void _at_grad_map_kernel(SK_GLOBAL(const T) f, SK_GLOBAL(const Acc) gq, SK_GLOBAL(T) out, AtGeo geo) {
  const AtTile t(geo);
  if (t.p >= geo.P) return;
  const Acc k = Acc(2) / Acc(geo.C) * gq[t.p];
  for (int64_t c = t.c0; c < geo.C; c += t.step) {
    const int64_t o = geo.off(t.p, c);
    out[o] = T(Acc(f[o]) * k);
  }
}

// ---- host ---------------------------------------------------------------------------------------------------
bool cuda_dtype(const at::Tensor& f) {
  const auto t = f.scalar_type();
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}
constexpr const char* kCudaDtypes = "f_student must be float32, float64, float16 or bfloat16 (the CUDA kernel's dtypes)";

AtGeo geo_of(const at::Tensor& f, at::MemoryFormat fmt) {
  return AtGeo{f.size(0) * f.size(2) * f.size(3), f.size(1), f.size(2) * f.size(3), f.stride(0), f.stride(1),
               f.stride(3), fmt == at::MemoryFormat::ChannelsLast};
}

dim3 map_grid(const AtGeo& geo) {
  const int64_t per = geo.cl ? kRows : kWarp;
  return dim3(unsigned((geo.P + per - 1) / per));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cuda(const at::Tensor& fs_in, const at::Tensor& ft_in) {
  check_maps(kOp, fs_in, ft_in, cuda_dtype(fs_in), kCudaDtypes);
  SK_RT::Guard guard(fs_in.device());
  const auto fmt_s = format_of(fs_in), fmt_t = format_of(ft_in);
  const at::Tensor fs = fs_in.contiguous(fmt_s), ft = ft_in.contiguous(fmt_t);
  const int64_t N = fs.size(0), P = fs.size(2) * fs.size(3);
  const auto qopt = fs.options().dtype(acc_type(fs));
  at::Tensor qs = at::empty({N, P}, qopt), qt = at::empty({N, P}, qopt);
  at::Tensor per = at::empty({N}, fs.options().dtype(at::kDouble));
  at::Tensor loss = at::empty({}, fs.options());
  const AtGeo gs = geo_of(fs, fmt_s), gt = geo_of(ft, fmt_t);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, fs.scalar_type(), "at_loss_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    SK_LAUNCH((_at_sq_mean_kernel<scalar_t, acc_t>), map_grid(gs), dim3(kWarp, kRows), 0,
              SK_RT::dptr<scalar_t>(fs), SK_RT::dptr<acc_t>(qs), gs);
    SK_LAUNCH((_at_sq_mean_kernel<scalar_t, acc_t>), map_grid(gt), dim3(kWarp, kRows), 0,
              SK_RT::dptr<scalar_t>(ft), SK_RT::dptr<acc_t>(qt), gt);
    SK_LAUNCH((_at_sample_loss_kernel<acc_t>), dim3(unsigned(N)), dim3(kThreads), 0, SK_RT::dptr<acc_t>(qs),
              SK_RT::dptr<acc_t>(qt), SK_RT::dptr<double>(per), P);
    SK_LAUNCH((_at_loss_total_kernel<scalar_t>), dim3(1), dim3(kThreads), 0, SK_RT::dptr<double>(per), N,
              1.0 / double(N * P), SK_RT::dptr<scalar_t>(loss));
  });
  return {loss, qs, qt};
}

std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_in, const at::Tensor& fs_in,
                                                 const at::Tensor& ft_in, const at::Tensor& qs_in,
                                                 const at::Tensor& qt_in, std::array<bool, 2> mask) {
  static const char* op = "at_loss_backward";
  check_maps(op, fs_in, ft_in, cuda_dtype(fs_in), kCudaDtypes);
  SK_RT::Guard guard(fs_in.device());
  const at::Tensor qs = check_q(op, "q_student", qs_in, fs_in), qt = check_q(op, "q_teacher", qt_in, fs_in);
  const at::Tensor grad = check_grad(op, grad_in, fs_in);
  const auto fmt_s = format_of(fs_in), fmt_t = format_of(ft_in);
  const at::Tensor fs = fs_in.contiguous(fmt_s), ft = ft_in.contiguous(fmt_t);
  at::Tensor gfs = grad_like(fs, fmt_s, mask[0]), gft = grad_like(ft, fmt_t, mask[1]);
  if (!mask[0] && !mask[1]) return {gfs, gft};
  const int64_t N = fs.size(0), P = fs.size(2) * fs.size(3);
  at::Tensor gqs = mask[0] ? at::empty_like(qs) : at::Tensor(), gqt = mask[1] ? at::empty_like(qt) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, fs.scalar_type(), "at_loss_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    SK_LAUNCH((_at_grad_q_kernel<acc_t>), dim3(unsigned(N)), dim3(kThreads), 0, SK_RT::dptr<acc_t>(qs),
              SK_RT::dptr<acc_t>(qt), SK_RT::dptr<acc_t>(grad), mask[0] ? SK_RT::dptr<acc_t>(gqs) : nullptr,
              mask[1] ? SK_RT::dptr<acc_t>(gqt) : nullptr, P, acc_t(1.0 / double(N * P)));
    if (mask[0]) {
      const AtGeo g = geo_of(fs, fmt_s);
      SK_LAUNCH((_at_grad_map_kernel<scalar_t, acc_t>), map_grid(g), dim3(kWarp, kRows), 0,
                SK_RT::dptr<scalar_t>(fs), SK_RT::dptr<acc_t>(gqs), SK_RT::dptr<scalar_t>(gfs), g);
    }
    if (mask[1]) {
      const AtGeo g = geo_of(ft, fmt_t);
      SK_LAUNCH((_at_grad_map_kernel<scalar_t, acc_t>), map_grid(g), dim3(kWarp, kRows), 0,
                SK_RT::dptr<scalar_t>(ft), SK_RT::dptr<acc_t>(gqt), SK_RT::dptr<scalar_t>(gft), g);
    }
  });
  return {gfs, gft};
}

}  // namespace

SK_DEVICE_IMPL(m) {
  m.impl("at_loss", &forward_cuda);
  m.impl("at_loss_backward", &backward_cuda);
}

}  // namespace shufflekern::SK_DEV_NS
