// CUDA entry points and kernels of shufflekern::shuffle_conv1x1 and its backward ops.
//
// Straightforward shared-memory tiled GEMMs (TILE x TILE outputs a block, one a thread, K in TILE steps,
// accumulation in at::opmath_type: float for half/bf16), threadIdx.x along the dimension that is contiguous
// in memory (pixels in NCHW, channels in channels_last) for the activation loads and stores.  Pixels p = n*H*W + hw are GEMM rows; element
// (n, c, hw) lives at n*s_n + c*s_c + hw*s_hw, which covers NCHW and channels_last.  The shuffle is the
// gather of x's channels through sconv_src_channel (csrc/shuffle_conv1x1.h, exercised by the CPU tests):
//   y[p, k*Mg + m]       = sum_j x[p, src(k, j)] * W[k*Mg + m, j] (+ b)
//   gx[p, src(k, j)]     = sum_m gy[p, k*Mg + m] * W[k*Mg + m, j]      (each x channel written once)
//   gW[k*Mg + m, j]      = sum_p gy[p, k*Mg + m] * x[p, src(k, j)]     (pixels split over blockIdx.y,
//                                                                      float/double atomics)
//
// Written against csrc/cuda/runtime.h: nvcc builds it for CUDA tensors, csrc/emu/shuffle_conv1x1.cpp runs the
// same source under the emulator.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <algorithm>

#include "checks.h"
#include "cuda/runtime.h"
#include "shuffle_conv1x1.h"

namespace shufflekern::SK_DEV_NS {
namespace {

constexpr int kTile = 16;
constexpr int64_t kMaxGridY = 65535;

struct Layout {
  int64_t hw, s_n, s_c, s_hw;
  __device__ int64_t pixel(int64_t p) const {
    const int64_t n = p / hw;
    return n * s_n + (p - n * hw) * s_hw;
  }
};

Layout layout_of(const at::Tensor& t) { return Layout{t.size(2) * t.size(3), t.stride(0), t.stride(1), t.stride(3)}; }

struct Dims {
  int64_t pixels, cg, mg, sg, cs;
};

template <typename T, typename Acc>
__global__ void _shuffle_conv1x1_fwd_kernel(SK_GLOBAL(const T) x, SK_GLOBAL(const T) w,
                                            SK_GLOBAL(const T) bias, SK_GLOBAL(T) y, Dims d, Layout lx,
                                            Layout ly) {
  SK_SHARED(Acc, a_tile, [kTile][kTile + 1]);  // [pixel][j]
  SK_SHARED(Acc, b_tile, [kTile][kTile + 1]);  // [j][m]
  const int64_t k = blockIdx.z;
  // Thread roles: threadIdx.x runs along the dimension that is contiguous in memory (pixels in NCHW,
  // channels in channels_last), so that a warp's loads and stores cover whole sectors.
  const bool pfast = lx.s_hw == 1;
  const int pi = pfast ? threadIdx.x : threadIdx.y, ci = pfast ? threadIdx.y : threadIdx.x;
  const int64_t p = blockIdx.x * int64_t(kTile) + pi;
  const int64_t m = blockIdx.y * int64_t(kTile) + ci;
  const int64_t p_off = p < d.pixels ? lx.pixel(p) : 0;
  Acc acc = Acc(0);
  for (int64_t j0 = 0; j0 < d.cg; j0 += kTile) {
    const int64_t ja = j0 + ci;
    a_tile[pi][ci] = (p < d.pixels && ja < d.cg)
                         ? Acc(x[p_off + sconv_src_channel(k, ja, d.cg, d.sg, d.cs) * lx.s_c])
                         : Acc(0);
    const int64_t jb = j0 + pi;
    b_tile[pi][ci] = (jb < d.cg && m < d.mg) ? Acc(w[(k * d.mg + m) * d.cg + jb]) : Acc(0);
    __syncthreads();
#pragma unroll
    for (int t = 0; t < kTile; ++t) acc += a_tile[pi][t] * b_tile[t][ci];
    __syncthreads();
  }
  if (p < d.pixels && m < d.mg) {
    if (bias != nullptr) acc += Acc(bias[k * d.mg + m]);
    y[ly.pixel(p) + (k * d.mg + m) * ly.s_c] = T(acc);
  }
}

template <typename T, typename Acc>
__global__ void _shuffle_conv1x1_grad_input_kernel(SK_GLOBAL(const T) gy, SK_GLOBAL(const T) w,
                                                   SK_GLOBAL(T) gx, Dims d, Layout lg, Layout lx) {
  SK_SHARED(Acc, a_tile, [kTile][kTile + 1]);  // [pixel][m]
  SK_SHARED(Acc, b_tile, [kTile][kTile + 1]);  // [m][j]
  const int64_t k = blockIdx.z;
  const bool pfast = lg.s_hw == 1;  // thread roles as in the forward
  const int pi = pfast ? threadIdx.x : threadIdx.y, ci = pfast ? threadIdx.y : threadIdx.x;
  const int64_t p = blockIdx.x * int64_t(kTile) + pi;
  const int64_t j = blockIdx.y * int64_t(kTile) + ci;
  const int64_t p_off = p < d.pixels ? lg.pixel(p) : 0;
  Acc acc = Acc(0);
  for (int64_t m0 = 0; m0 < d.mg; m0 += kTile) {
    const int64_t ma = m0 + ci;
    a_tile[pi][ci] = (p < d.pixels && ma < d.mg) ? Acc(gy[p_off + (k * d.mg + ma) * lg.s_c]) : Acc(0);
    const int64_t mb = m0 + pi;
    b_tile[pi][ci] = (mb < d.mg && j < d.cg) ? Acc(w[(k * d.mg + mb) * d.cg + j]) : Acc(0);
    __syncthreads();
#pragma unroll
    for (int t = 0; t < kTile; ++t) acc += a_tile[pi][t] * b_tile[t][ci];
    __syncthreads();
  }
  if (p < d.pixels && j < d.cg) {
    gx[lx.pixel(p) + sconv_src_channel(k, j, d.cg, d.sg, d.cs) * lx.s_c] = T(acc);
  }
}

// blockIdx.x: (m tile, j tile); blockIdx.y: a slice of `chunk` pixels; blockIdx.z: group.
template <typename T, typename Acc>
__global__ void _shuffle_conv1x1_grad_weight_kernel(SK_GLOBAL(const T) gy, SK_GLOBAL(const T) x,
                                                    SK_GLOBAL(Acc) gw, Dims d, Layout lg, Layout lx,
                                                    int64_t j_tiles, int64_t chunk) {
  SK_SHARED(Acc, a_tile, [kTile][kTile + 1]);  // [m][pixel]
  SK_SHARED(Acc, b_tile, [kTile][kTile + 1]);  // [pixel][j]
  const int64_t k = blockIdx.z;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t m0 = (blockIdx.x / j_tiles) * kTile;
  const int64_t j0 = (blockIdx.x % j_tiles) * kTile;
  const int64_t p_begin = blockIdx.y * chunk;
  const int64_t p_end = d.pixels < p_begin + chunk ? d.pixels : p_begin + chunk;
  // Loads: threadIdx.x along the contiguous dimension (pixels in NCHW, channels in channels_last).
  const bool pfast = lx.s_hw == 1;
  const int pl = pfast ? tx : ty, cl = pfast ? ty : tx;
  const int64_t jb = j0 + cl;
  const int64_t src = jb < d.cg ? sconv_src_channel(k, jb, d.cg, d.sg, d.cs) : 0;
  Acc acc = Acc(0);
  for (int64_t p0 = p_begin; p0 < p_end; p0 += kTile) {
    // a_tile[m][pixel] and b_tile[pixel][j]: the thread loads pixel p0 + pl, channel m0 + cl / j0 + cl.
    const int64_t pa = p0 + pl, ma = m0 + cl;
    a_tile[cl][pl] = (pa < p_end && ma < d.mg) ? Acc(gy[lg.pixel(pa) + (k * d.mg + ma) * lg.s_c]) : Acc(0);
    b_tile[pl][cl] = (pa < p_end && jb < d.cg) ? Acc(x[lx.pixel(pa) + src * lx.s_c]) : Acc(0);
    __syncthreads();
#pragma unroll
    for (int t = 0; t < kTile; ++t) acc += a_tile[ty][t] * b_tile[t][tx];
    __syncthreads();
  }
  const int64_t m = m0 + ty, j = j0 + tx;
  if (m < d.mg && j < d.cg && p_begin < p_end) atomicAdd(gw + (k * d.mg + m) * d.cg + j, acc);
}

Dims dims_of(int64_t pixels, int64_t c_in, int64_t c_out, int64_t groups, int64_t sg) {
  return Dims{pixels, c_in / groups, c_out / groups, sg, c_in / sg};
}

void check_grid(int64_t groups, int64_t y_blocks) {
  TORCH_CHECK_VALUE(groups <= kMaxGridY, "shuffle_conv1x1: at most ", kMaxGridY, " groups on CUDA, got ", groups);
  TORCH_CHECK_VALUE(y_blocks <= kMaxGridY, "shuffle_conv1x1: too many channels a group for the CUDA grid");
}

at::Tensor shuffle_conv1x1_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                int64_t groups, int64_t shuffle_groups) {
  check_shuffle_conv1x1_args(x, weight, bias, groups, shuffle_groups);
  SK_RT::Guard guard(x.device());
  const auto fmt = format_of(x);
  const at::Tensor in = x.contiguous(fmt);
  const at::Tensor w = weight.contiguous();
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  const int64_t c_in = x.size(1), c_out = weight.size(0);
  at::Tensor out = at::empty({x.size(0), c_out, x.size(2), x.size(3)}, x.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  if (c_in == 0) return b.defined() ? out.copy_(b.view({1, c_out, 1, 1}).expand_as(out)) : out.zero_();
  const Dims d = dims_of(x.size(0) * x.size(2) * x.size(3), c_in, c_out, groups, shuffle_groups);
  const dim3 grid((d.pixels + kTile - 1) / kTile, (d.mg + kTile - 1) / kTile, groups);
  check_grid(groups, grid.y);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "shuffle_conv1x1_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    SK_LAUNCH((_shuffle_conv1x1_fwd_kernel<scalar_t, acc_t>), grid, dim3(kTile, kTile), 0,
              SK_RT::dptr<scalar_t>(in), SK_RT::dptr<scalar_t>(w), b.defined() ? SK_RT::dptr<scalar_t>(b) : nullptr,
              SK_RT::dptr<scalar_t>(out), d, layout_of(in), layout_of(out));
  });
  return out;
}

at::Tensor shuffle_conv1x1_grad_input_cuda(const at::Tensor& grad_out, const at::Tensor& weight, int64_t groups,
                                           int64_t shuffle_groups) {
  check_shuffle_conv1x1_grad_input_args(grad_out, weight, groups, shuffle_groups);
  SK_RT::Guard guard(grad_out.device());
  const auto fmt = format_of(grad_out);
  const at::Tensor gy = grad_out.contiguous(fmt);
  const at::Tensor w = weight.contiguous();
  const int64_t c_in = weight.size(1) * groups, c_out = weight.size(0);
  at::Tensor gx = at::empty({gy.size(0), c_in, gy.size(2), gy.size(3)}, gy.options().memory_format(fmt));
  if (gx.numel() == 0) return gx;
  if (c_out == 0) return gx.zero_();
  const Dims d = dims_of(gy.size(0) * gy.size(2) * gy.size(3), c_in, c_out, groups, shuffle_groups);
  const dim3 grid((d.pixels + kTile - 1) / kTile, (d.cg + kTile - 1) / kTile, groups);
  check_grid(groups, grid.y);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gy.scalar_type(), "shuffle_conv1x1_grad_input_cuda",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    SK_LAUNCH((_shuffle_conv1x1_grad_input_kernel<scalar_t, acc_t>), grid, dim3(kTile, kTile), 0,
              SK_RT::dptr<scalar_t>(gy), SK_RT::dptr<scalar_t>(w), SK_RT::dptr<scalar_t>(gx), d, layout_of(gy),
              layout_of(gx));
  });
  return gx;
}

at::Tensor shuffle_conv1x1_grad_weight_cuda(const at::Tensor& grad_out, const at::Tensor& x, int64_t groups,
                                            int64_t shuffle_groups) {
  check_shuffle_conv1x1_grad_weight_args(grad_out, x, groups, shuffle_groups);
  SK_RT::Guard guard(x.device());
  const auto fmt = format_of(x);
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor gy = grad_out.contiguous(fmt);
  const int64_t c_in = x.size(1), c_out = grad_out.size(1);
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor acc = at::zeros({c_out, c_in / groups, 1, 1}, x.options().dtype(acc_type));
  const Dims d = dims_of(x.size(0) * x.size(2) * x.size(3), c_in, c_out, groups, shuffle_groups);
  if (acc.numel() == 0 || d.pixels == 0) return acc.to(x.scalar_type());
  const int64_t j_tiles = (d.cg + kTile - 1) / kTile;
  const int64_t tiles = ((d.mg + kTile - 1) / kTile) * j_tiles;
  // Enough pixel slices to fill the GPU (~4 blocks an SM), each at least 16 tiles of pixels long.
  const int64_t sms = SK_RT::sm_count();
  const int64_t want = std::max<int64_t>(1, 4 * sms / std::max<int64_t>(1, tiles * groups));
  const int64_t slices = std::min<int64_t>({want, (d.pixels + 16 * kTile - 1) / (16 * kTile), kMaxGridY});
  const int64_t chunk = (d.pixels + slices - 1) / slices;
  TORCH_CHECK_VALUE(tiles <= INT32_MAX, "shuffle_conv1x1: weight too large for the CUDA grid");
  check_grid(groups, 1);
  const dim3 grid(tiles, slices, groups);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "shuffle_conv1x1_grad_weight_cuda",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    SK_LAUNCH((_shuffle_conv1x1_grad_weight_kernel<scalar_t, acc_t>), grid, dim3(kTile, kTile), 0,
              SK_RT::dptr<scalar_t>(gy), SK_RT::dptr<scalar_t>(xc), SK_RT::dptr<acc_t>(acc), d, layout_of(gy),
              layout_of(xc), j_tiles, chunk);
  });
  return acc.to(x.scalar_type());
}

}  // namespace

SK_DEVICE_IMPL(m) {
  m.impl("shuffle_conv1x1", &shuffle_conv1x1_cuda);
  m.impl("shuffle_conv1x1_grad_input", &shuffle_conv1x1_grad_input_cuda);
  m.impl("shuffle_conv1x1_grad_weight", &shuffle_conv1x1_grad_weight_cuda);
}

}  // namespace shufflekern::SK_DEV_NS
