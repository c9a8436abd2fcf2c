// CUDA entry points and kernels of shufflekern::batch_norm_act and its backward (maths in
// csrc/batch_norm_act.h).  Written against csrc/cuda/runtime.h: nvcc builds it for CUDA tensors,
// csrc/emu/batch_norm_act.cpp runs the same source under the emulator.
//
// Element (p, c), p = n*HW + q, lives at n*sN + c*sC + q*sQ (NCHW: sQ = 1; channels_last: sC = 1).
// Passes over activation-sized tensors (the minimum for a two-pass BatchNorm):
//   forward, training:  _bn_reduce (read x) -> per-channel partial sums;  _bn_finalize (C threads) -> mean, var,
//                       scale, shift;  _bn_apply (read x [, r], write y)
//   backward:           _bn_reduce (read g, x [, r], [write gr = dL/dz]) -> partial sums of gz, gz (x - mean);
//                       _bn_finalize -> grad_weight, grad_bias, the grad_x coefficients;  _bn_grad_apply
//                       (read g or gr, x, write gx)
// Partial sums are [2, tiles, C] in the accumulation type, added by the finalize kernels in double in a fixed
// order: no atomics, the same bits every run.  Nothing is synchronised with the host.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <algorithm>

#include "batch_norm_act.h"
#include "checks.h"
#include "cuda/runtime.h"

namespace shufflekern::SK_DEV_NS {
namespace {

using namespace ::shufflekern::bn_checks;

constexpr int kWarp = 32, kRows = 8;   // a block is kWarp x kRows threads
constexpr int64_t kChunk = 512;        // positions a block of _bn_reduce sums
constexpr int kApplyThreads = 256;
constexpr int kMaxGridY = 65535;

// Rows of the per-channel coefficient tensor (accumulation type, [kCoefRows, C]).
enum CoefRow { kScale = 0, kShift = 1, kGradA = 2, kGradB = 3, kGradD = 4, kMean = 5, kCoefRows = 6 };

struct BnGeo {
  int64_t P, C, HW, sN, sC, sQ;
  bool cl;
  SK_HOST_DEVICE int64_t off(int64_t p, int64_t c) const {
    const int64_t n = p / HW;
    return n * sN + c * sC + (p - n * HW) * sQ;
  }
};

// z = x * scale + shift [+ r] and its ReLU, one expression for the forward and the backward's mask.
template <typename Acc>
__device__ __forceinline__ Acc bn_pre_act(Acc x, Acc scale, Acc shift) {
  return x * scale + shift;
}

// What _bn_reduce sums per channel: the statistics (x - k, (x - k)^2; k = the channel's first value) or
// the backward's (gz, gz (x - mean)).
enum class Sums { kStats, kGrad };

// Grid: (position chunks, channel tiles).  NCHW: a warp reads 32 consecutive positions of one channel
// (threadIdx.y picks the channel) and reduces with shuffles; channels_last: a warp reads 32 consecutive
// channels of one position (threadIdx.y picks the position) and the 8 rows reduce through shared memory.
template <typename T, typename Acc, Sums kSums>
__global__ void _bn_reduce_kernel(SK_GLOBAL(const T) x, SK_GLOBAL(const T) g, SK_GLOBAL(const T) r,
                                  SK_GLOBAL(const Acc) coef, SK_GLOBAL(T) gr, SK_GLOBAL(Acc) partial, BnGeo geo,
                                  bool relu) {
  SK_SHARED(Acc, sh, [2][kRows][kWarp]);
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t tiles = gridDim.x;
  const int64_t p0 = blockIdx.x * kChunk;
  const int64_t p1 = p0 + kChunk < geo.P ? p0 + kChunk : geo.P;
  const int64_t c = geo.cl ? int64_t(blockIdx.y) * kWarp + tx : int64_t(blockIdx.y) * kRows + ty;
  const bool live = c < geo.C;
  Acc s1 = Acc(0), s2 = Acc(0);
  if (live) {
    Acc k = Acc(0), scale = Acc(0), shift = Acc(0);
    if (kSums == Sums::kStats) {
      k = Acc(x[geo.off(0, c)]);
    } else {
      k = coef[kMean * geo.C + c];
      scale = coef[kScale * geo.C + c];
      shift = coef[kShift * geo.C + c];
    }
    const int64_t first = p0 + (geo.cl ? ty : tx), step = geo.cl ? kRows : kWarp;
    for (int64_t p = first; p < p1; p += step) {
      const int64_t o = geo.off(p, c);
      const Acc xv = Acc(x[o]);
      if (kSums == Sums::kStats) {
        const Acc d = xv - k;
        s1 += d;
        s2 += d * d;
      } else {
        Acc gz = Acc(g[o]);
        if (relu) {
          Acc z = bn_pre_act(xv, scale, shift);
          if (r) z += Acc(r[o]);
          if (z <= Acc(0)) gz = Acc(0);
        }
        if (gr) gr[o] = T(gz);
        s1 += gz;
        s2 += gz * (xv - k);
      }
    }
  }
  if (!geo.cl) {
    for (int o = kWarp / 2; o > 0; o /= 2) {
      s1 += __shfl_xor_sync(0xFFFFFFFFu, s1, o);
      s2 += __shfl_xor_sync(0xFFFFFFFFu, s2, o);
    }
    if (tx == 0 && live) {
      partial[blockIdx.x * geo.C + c] = s1;
      partial[(tiles + blockIdx.x) * geo.C + c] = s2;
    }
    return;
  }
  sh[0][ty][tx] = s1;
  sh[1][ty][tx] = s2;
  __syncthreads();
  if (ty == 0 && live) {
    Acc a = Acc(0), b = Acc(0);
    for (int i = 0; i < kRows; ++i) {
      a += sh[0][i][tx];
      b += sh[1][i][tx];
    }
    partial[blockIdx.x * geo.C + c] = a;
    partial[(tiles + blockIdx.x) * geo.C + c] = b;
  }
}

// One thread a channel.  kStats: mean and var from the partials (or, without partials, the given running
// statistics), then scale and shift from the stored (rounded) mean and var.  kGrad: grad_weight, grad_bias
// and the grad_x coefficients.
template <typename T, typename Acc, Sums kSums>
__global__ void _bn_finalize_kernel(SK_GLOBAL(const Acc) partial, int64_t tiles, SK_GLOBAL(const T) x,
                                    SK_GLOBAL(T) mean, SK_GLOBAL(T) var, SK_GLOBAL(const T) weight,
                                    SK_GLOBAL(const T) bias, SK_GLOBAL(Acc) coef, SK_GLOBAL(T) grad_weight,
                                    SK_GLOBAL(T) grad_bias, BnGeo geo, double eps, bool training) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= geo.C) return;
  double s1 = 0.0, s2 = 0.0;
  for (int64_t t = 0; partial && t < tiles; ++t) {
    s1 += double(partial[t * geo.C + c]);
    s2 += double(partial[(tiles + t) * geo.C + c]);
  }
  const double m = double(geo.P);
  if (kSums == Sums::kStats && partial) {  // training forward: store the batch statistics
    const double d = s1 / m;
    const double v = s2 / m - d * d;
    mean[c] = T(double(x[geo.off(0, c)]) + d);
    var[c] = T(v > 0.0 ? v : 0.0);
  }
  const double w = weight ? double(weight[c]) : 1.0;
  const BnCoef k = bn_coefficients(double(mean[c]), double(var[c]), w, bias ? double(bias[c]) : 0.0, eps);
  coef[kScale * geo.C + c] = Acc(k.scale);
  coef[kShift * geo.C + c] = Acc(k.shift);
  coef[kMean * geo.C + c] = Acc(mean[c]);
  if (kSums == Sums::kGrad && partial) {
    if (grad_weight) grad_weight[c] = T(s2 * k.invstd);
    if (grad_bias) grad_bias[c] = T(s1);
    const BnGradCoef gk = bn_grad_coefficients(w, k.invstd, s1, s2, m, training);
    coef[kGradA * geo.C + c] = Acc(gk.a);
    coef[kGradB * geo.C + c] = Acc(gk.b);
    coef[kGradD * geo.C + c] = Acc(gk.d);
  }
}

// The elementwise passes walk the tensor as _bn_reduce does (grid: position chunks x channel tiles; a warp
// along the contiguous dimension), so that each thread keeps one channel and loads its coefficients once.
struct BnTile {
  int64_t c, first, end, step;
  __device__ BnTile(const BnGeo& geo) {
    const int tx = threadIdx.x, ty = threadIdx.y;
    c = geo.cl ? int64_t(blockIdx.y) * kWarp + tx : int64_t(blockIdx.y) * kRows + ty;
    const int64_t p0 = int64_t(blockIdx.x) * kChunk;
    first = p0 + (geo.cl ? ty : tx);
    end = p0 + kChunk < geo.P ? p0 + kChunk : geo.P;
    step = geo.cl ? kRows : kWarp;
  }
};

// y = relu(x * scale + shift [+ r]).
template <typename T, typename Acc>
__global__ void _bn_apply_kernel(SK_GLOBAL(const T) x, SK_GLOBAL(const T) r, SK_GLOBAL(const Acc) coef,
                                 SK_GLOBAL(T) y, BnGeo geo, bool relu) {
  const BnTile t(geo);
  if (t.c >= geo.C) return;
  const Acc scale = coef[kScale * geo.C + t.c], shift = coef[kShift * geo.C + t.c];
  for (int64_t p = t.first; p < t.end; p += t.step) {
    const int64_t o = geo.off(p, t.c);
    Acc z = bn_pre_act(Acc(x[o]), scale, shift);
    if (r) z += Acc(r[o]);
    if (relu && z <= Acc(0)) z = Acc(0);  // NaN stays NaN, as torch.relu
    y[o] = T(z);
  }
}

// grad_x = A gz + B (x - mean) + D.  src is gr (already dL/dz) when there is a residual, else grad_y with the
// ReLU mask recomputed.
template <typename T, typename Acc>
__global__ void _bn_grad_apply_kernel(SK_GLOBAL(const T) src, SK_GLOBAL(const T) x, SK_GLOBAL(const Acc) coef,
                                      SK_GLOBAL(T) gx, BnGeo geo, bool relu) {
  const BnTile t(geo);
  if (t.c >= geo.C) return;
  const int64_t C = geo.C, c = t.c;
  const Acc scale = coef[kScale * C + c], shift = coef[kShift * C + c], mean = coef[kMean * C + c];
  const Acc ca = coef[kGradA * C + c], cb = coef[kGradB * C + c], cd = coef[kGradD * C + c];
  for (int64_t p = t.first; p < t.end; p += t.step) {
    const int64_t o = geo.off(p, c);
    const Acc xv = Acc(x[o]);
    Acc gz = Acc(src[o]);
    if (relu && bn_pre_act(xv, scale, shift) <= Acc(0)) gz = Acc(0);
    gx[o] = T(gz * ca + (xv - mean) * cb + cd);
  }
}

// ---- host ---------------------------------------------------------------------------------------------------
bool cuda_dtype(const at::Tensor& x) {
  const auto t = x.scalar_type();
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}
constexpr const char* kCudaDtypes = "the CUDA kernel takes float32, float64, float16 or bfloat16 x";

BnGeo geo_of(const at::Tensor& x, at::MemoryFormat fmt) {
  return BnGeo{x.size(0) * x.size(2) * x.size(3), x.size(1), x.size(2) * x.size(3), x.stride(0), x.stride(1),
               x.stride(3), fmt == at::MemoryFormat::ChannelsLast};
}

dim3 reduce_grid(const BnGeo& geo) {
  const int64_t ctile = geo.cl ? kWarp : kRows;
  const int64_t cy = (geo.C + ctile - 1) / ctile;
  TORCH_CHECK_VALUE(cy <= kMaxGridY, kOp, ": too many channels for the CUDA grid (", geo.C, ")");
  return dim3(unsigned((geo.P + kChunk - 1) / kChunk), unsigned(cy));
}

dim3 channel_grid(int64_t c) { return dim3(unsigned((c + kApplyThreads - 1) / kApplyThreads)); }

at::ScalarType acc_type(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

template <typename T>
T* opt_ptr(const at::Tensor& t) {
  return t.defined() ? SK_RT::dptr<T>(t) : nullptr;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cuda(
    const at::Tensor& x_in, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool training, double eps, bool relu) {
  check_x(x_in, training, cuda_dtype(x_in), kCudaDtypes);
  check_eps(eps);
  SK_RT::Guard guard(x_in.device());
  const auto fmt = format_of(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  const at::Tensor w = channel_param(weight, "weight", x), b = channel_param(bias, "bias", x);
  const at::Tensor r = like_x(residual, "residual", x, fmt);
  at::Tensor mean, var, stats_mean, stats_var;
  if (training) {
    mean = stats_mean = at::empty({x.size(1)}, x.options());
    var = stats_var = at::empty({x.size(1)}, x.options());
  } else {
    check_running(running_mean, running_var);
    mean = channel_param(running_mean, "running_mean", x);
    var = channel_param(running_var, "running_var", x);
    stats_mean = at::empty({0}, x.options());
    stats_var = at::empty({0}, x.options());
  }
  at::Tensor y = at::empty_like(x, fmt);
  if (x.numel() == 0) return {y, stats_mean, stats_var};
  const BnGeo geo = geo_of(x, fmt);
  const dim3 rgrid = reduce_grid(geo);
  at::Tensor coef = at::empty({kCoefRows, geo.C}, x.options().dtype(acc_type(x)));
  at::Tensor partial = training ? at::empty({2, int64_t(rgrid.x), geo.C}, coef.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_act_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (training) {
      SK_LAUNCH((_bn_reduce_kernel<scalar_t, acc_t, Sums::kStats>), rgrid, dim3(kWarp, kRows), 0,
                SK_RT::dptr<scalar_t>(x), (const scalar_t*)nullptr, (const scalar_t*)nullptr, (const acc_t*)nullptr,
                (scalar_t*)nullptr, SK_RT::dptr<acc_t>(partial), geo, false);
    }
    SK_LAUNCH((_bn_finalize_kernel<scalar_t, acc_t, Sums::kStats>), channel_grid(geo.C), dim3(kApplyThreads), 0,
              opt_ptr<acc_t>(partial), int64_t(rgrid.x), SK_RT::dptr<scalar_t>(x), SK_RT::dptr<scalar_t>(mean),
              SK_RT::dptr<scalar_t>(var), opt_ptr<scalar_t>(w), opt_ptr<scalar_t>(b), SK_RT::dptr<acc_t>(coef),
              (scalar_t*)nullptr, (scalar_t*)nullptr, geo, eps, training);
    SK_LAUNCH((_bn_apply_kernel<scalar_t, acc_t>), rgrid, dim3(kWarp, kRows), 0, SK_RT::dptr<scalar_t>(x),
              opt_ptr<scalar_t>(r), SK_RT::dptr<acc_t>(coef), SK_RT::dptr<scalar_t>(y), geo, relu);
  });
  return {y, stats_mean, stats_var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x_in, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual, const at::Tensor& mean_in,
    const at::Tensor& var_in, bool training, double eps, bool relu, std::array<bool, 4> mask) {
  check_x(x_in, training, cuda_dtype(x_in), kCudaDtypes);
  check_eps(eps);
  SK_RT::Guard guard(x_in.device());
  const auto fmt = format_of(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  const at::Tensor g = like_x(grad_y, "grad_y", x, fmt);
  TORCH_CHECK_VALUE(g.defined(), kOp, ": grad_y is required");
  const at::Tensor w = channel_param(weight, "weight", x), b = channel_param(bias, "bias", x);
  const at::Tensor r = like_x(residual, "residual", x, fmt);
  const at::Tensor mean = channel_param(mean_in, "mean", x), var = channel_param(var_in, "var", x);
  TORCH_CHECK_VALUE(mean.defined() && var.defined(), kOp, ": the backward needs mean and var of length C");
  BnGrads grads(x, r, fmt, mask);
  const at::Tensor &gx = grads.gx, &gr = grads.gr, &gw = grads.gw, &gb = grads.gb;
  if (grads.any(x)) {
    const BnGeo geo = geo_of(x, fmt);
    const dim3 rgrid = reduce_grid(geo);
    at::Tensor coef = at::empty({kCoefRows, geo.C}, x.options().dtype(acc_type(x)));
    at::Tensor partial = at::empty({2, int64_t(rgrid.x), geo.C}, coef.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_act_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      // scale, shift, mean for the mask and the sums
      SK_LAUNCH((_bn_finalize_kernel<scalar_t, acc_t, Sums::kGrad>), channel_grid(geo.C), dim3(kApplyThreads), 0,
                (const acc_t*)nullptr, int64_t(0), SK_RT::dptr<scalar_t>(x), SK_RT::dptr<scalar_t>(mean),
                SK_RT::dptr<scalar_t>(var), opt_ptr<scalar_t>(w), opt_ptr<scalar_t>(b), SK_RT::dptr<acc_t>(coef),
                (scalar_t*)nullptr, (scalar_t*)nullptr, geo, eps, training);
      SK_LAUNCH((_bn_reduce_kernel<scalar_t, acc_t, Sums::kGrad>), rgrid, dim3(kWarp, kRows), 0,
                SK_RT::dptr<scalar_t>(x), SK_RT::dptr<scalar_t>(g), opt_ptr<scalar_t>(r), SK_RT::dptr<acc_t>(coef),
                opt_ptr<scalar_t>(gr), SK_RT::dptr<acc_t>(partial), geo, relu);
      SK_LAUNCH((_bn_finalize_kernel<scalar_t, acc_t, Sums::kGrad>), channel_grid(geo.C), dim3(kApplyThreads), 0,
                SK_RT::dptr<acc_t>(partial), int64_t(rgrid.x), SK_RT::dptr<scalar_t>(x), SK_RT::dptr<scalar_t>(mean),
                SK_RT::dptr<scalar_t>(var), opt_ptr<scalar_t>(w), opt_ptr<scalar_t>(b), SK_RT::dptr<acc_t>(coef),
                opt_ptr<scalar_t>(gw), opt_ptr<scalar_t>(gb), geo, eps, training);
      if (mask[0]) {
        const bool from_gr = gr.defined();
        SK_LAUNCH((_bn_grad_apply_kernel<scalar_t, acc_t>), rgrid, dim3(kWarp, kRows), 0,
                  SK_RT::dptr<scalar_t>(from_gr ? gr : g), SK_RT::dptr<scalar_t>(x), SK_RT::dptr<acc_t>(coef),
                  SK_RT::dptr<scalar_t>(gx), geo, relu && !from_gr);
      }
    });
  }
  return grads.result(x, mask);
}

}  // namespace

SK_DEVICE_IMPL(m) {
  m.impl("batch_norm_act", &forward_cuda);
  m.impl("batch_norm_act_backward", &backward_cuda);
}

}  // namespace shufflekern::SK_DEV_NS
