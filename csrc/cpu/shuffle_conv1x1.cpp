// CPU entry points of shufflekern::shuffle_conv1x1 and its backward ops.
//
// The GEMMs run in csrc/cpu/vec/shuffle_conv1x1.cpp on x / grad_out in place: the shuffle lives in their
// index tables (built here, with the packed weights), so no shuffled copy of x is ever made.
#include <algorithm>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu/shuffle_conv1x1_kernel.h"
#include "shuffle_conv1x1.h"
#include "emu/route.h"

namespace shufflekern::cpu {

SK_DEFINE_KERNEL_TABLE(shuffle_conv1x1_forward_table, SconvFn);
SK_DEFINE_KERNEL_TABLE(shuffle_conv1x1_grad_input_table, SconvFn);
SK_DEFINE_KERNEL_TABLE(shuffle_conv1x1_grad_weight_table, SconvFn);

namespace {

constexpr int64_t kPad = 16;
inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Index tables of the packed order (csrc/shuffle_conv1x1.h): for each group, the x channel and the
// weight column of every packed position j', and the maximal contiguous runs of x channels.
struct Tables {
  int64_t groups, cg, max_runs;
  std::vector<int64_t> src, col, runs, nruns;
};

Tables make_tables(int64_t c_in, int64_t groups, int64_t sg) {
  Tables t;
  t.groups = groups;
  t.cg = c_in / groups;
  t.max_runs = std::min(sg, t.cg);
  const int64_t cs = c_in / sg;
  t.src.resize(groups * t.cg);
  t.col.resize(groups * t.cg);
  t.runs.assign(groups * t.max_runs * 3, 0);
  t.nruns.assign(groups, 0);
  for (int64_t k = 0; k < groups; ++k) {
    int64_t off = 0;
    int64_t* runs = t.runs.data() + k * t.max_runs * 3;
    int64_t& nr = t.nruns[k];
    for (int64_t b = 0; b < sg; ++b) {
      const SconvBlock blk = sconv_block(k, b, t.cg, sg, cs);
      if (blk.len == 0) continue;
      for (int64_t i = 0; i < blk.len; ++i) {
        t.src[k * t.cg + off + i] = blk.src_begin + i;
        t.col[k * t.cg + off + i] = blk.col_begin + i * sg;
      }
      if (nr > 0 && runs[3 * (nr - 1)] + runs[3 * (nr - 1) + 1] == blk.src_begin) {
        runs[3 * (nr - 1) + 1] += blk.len;  // adjacent in x: merge (e.g. groups == 1)
      } else {
        runs[3 * nr] = blk.src_begin;
        runs[3 * nr + 1] = blk.len;
        runs[3 * nr + 2] = off;
        ++nr;
      }
      off += blk.len;
    }
    TORCH_INTERNAL_ASSERT(off == t.cg, "shuffle_conv1x1: runs of group ", k, " cover ", off, " != ", t.cg);
  }
  return t;
}

int dtype_code(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return kSconvFloat;
    case at::kDouble: return kSconvDouble;
    case at::kBFloat16: return kSconvBFloat16;
    default:
      TORCH_CHECK_TYPE(false, "shuffle_conv1x1: x must be float32, float64 or bfloat16 on CPU, got ", st);
  }
}

// Packed weights, zero padded: wp [G][mg][cgp] (rows of output channels) or wpt [G][cg][mgp] (rows of input
// positions j'), whichever the kernel reads (`transposed`), and bias [G][mgp] (accumulation type).
struct Packed {
  at::Tensor wp, wpt, bias;
  int64_t cgp, mgp;
};

Packed pack(const at::Tensor& weight, const std::optional<at::Tensor>& bias, const Tables& t, int64_t mg,
            bool transposed) {
  Packed p;
  p.cgp = round_up(t.cg, kPad);
  p.mgp = round_up(mg, kPad);
  const int64_t groups = t.groups, cg = t.cg;
  const at::Tensor w = weight.contiguous();
  at::Tensor& out = transposed ? p.wpt : p.wp;
  out = transposed ? at::zeros({groups, cg, p.mgp}, w.options()) : at::zeros({groups, mg, p.cgp}, w.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, w.scalar_type(), "shuffle_conv1x1_pack", [&] {
    const scalar_t* ws = w.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    for (int64_t k = 0; k < groups; ++k) {
      for (int64_t m = 0; m < mg; ++m) {
        const scalar_t* row = ws + (k * mg + m) * cg;
        for (int64_t j = 0; j < cg; ++j) {
          const scalar_t v = row[t.col[k * cg + j]];
          if (transposed) {
            o[(k * cg + j) * p.mgp + m] = v;
          } else {
            o[(k * mg + m) * p.cgp + j] = v;
          }
        }
      }
    }
  });
  if (bias.has_value() && bias->defined()) {
    const auto acc = weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    p.bias = at::zeros({groups, p.mgp}, weight.options().dtype(acc));
    p.bias.narrow(1, 0, mg).copy_(bias->view({groups, mg}));
  }
  return p;
}

SconvArgs make_args(const at::Tensor& in, const Tables& t, const Packed& p, int64_t c_in, int64_t c_out,
                    bool channels_last) {
  SconvArgs a{};
  a.dtype = dtype_code(in.scalar_type());
  a.channels_last = channels_last;
  a.n = in.size(0);
  a.hw = in.size(2) * in.size(3);
  a.c_in = c_in;
  a.c_out = c_out;
  a.groups = t.groups;
  a.cg = t.cg;
  a.mg = c_out / t.groups;
  a.cgp = p.cgp;
  a.mgp = p.mgp;
  a.in = in.const_data_ptr();
  a.wp = p.wp.defined() ? p.wp.const_data_ptr() : nullptr;
  a.wpt = p.wpt.defined() ? p.wpt.const_data_ptr() : nullptr;
  a.src = t.src.data();
  a.runs = t.runs.data();
  a.nruns = t.nruns.data();
  a.max_runs = t.max_runs;
  a.bias = p.bias.defined() ? p.bias.const_data_ptr() : nullptr;
  return a;
}

at::Tensor shuffle_conv1x1_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               int64_t groups, int64_t shuffle_groups) {
  check_shuffle_conv1x1_args(x, weight, bias, groups, shuffle_groups);
  dtype_code(x.scalar_type());
  const auto fmt = format_of(x);
  const at::Tensor in = x.contiguous(fmt);
  const int64_t c_in = x.size(1), c_out = weight.size(0);
  at::Tensor out = at::empty({x.size(0), c_out, x.size(2), x.size(3)}, x.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  const Tables t = make_tables(c_in, groups, shuffle_groups);
  const Packed p = pack(weight, bias, t, c_out / groups, /*transposed=*/fmt == at::MemoryFormat::ChannelsLast);
  SconvArgs a = make_args(in, t, p, c_in, c_out, fmt == at::MemoryFormat::ChannelsLast);
  a.out = out.mutable_data_ptr();
  if (c_in == 0) {
    out.zero_();
    if (bias.has_value() && bias->defined()) out.add_(bias->view({1, c_out, 1, 1}));
    return out;
  }
  shuffle_conv1x1_forward_table.get()(a);
  return out;
}

at::Tensor shuffle_conv1x1_grad_input_cpu(const at::Tensor& grad_out, const at::Tensor& weight, int64_t groups,
                                          int64_t shuffle_groups) {
  check_shuffle_conv1x1_grad_input_args(grad_out, weight, groups, shuffle_groups);
  dtype_code(grad_out.scalar_type());
  const auto fmt = format_of(grad_out);
  const at::Tensor gy = grad_out.contiguous(fmt);
  const int64_t c_in = weight.size(1) * groups, c_out = weight.size(0);
  at::Tensor gx = at::empty({gy.size(0), c_in, gy.size(2), gy.size(3)}, gy.options().memory_format(fmt));
  if (gx.numel() == 0) return gx;
  if (c_out == 0) return gx.zero_();
  const Tables t = make_tables(c_in, groups, shuffle_groups);
  const Packed p = pack(weight, std::nullopt, t, c_out / groups, /*transposed=*/fmt != at::MemoryFormat::ChannelsLast);
  SconvArgs a = make_args(gy, t, p, c_in, c_out, fmt == at::MemoryFormat::ChannelsLast);
  a.out = gx.mutable_data_ptr();
  shuffle_conv1x1_grad_input_table.get()(a);
  return gx;
}

at::Tensor shuffle_conv1x1_grad_weight_cpu(const at::Tensor& grad_out, const at::Tensor& x, int64_t groups,
                                           int64_t shuffle_groups) {
  check_shuffle_conv1x1_grad_weight_args(grad_out, x, groups, shuffle_groups);
  dtype_code(x.scalar_type());
  if (x.scalar_type() == at::kBFloat16) {
    // bf16: accumulate in fp32 through the float kernel (the weight gradient is a reduction over every
    // pixel, too long to accumulate in bf16).
    return shuffle_conv1x1_grad_weight_cpu(grad_out.to(at::kFloat), x.to(at::kFloat), groups, shuffle_groups)
        .to(at::kBFloat16);
  }
  const auto fmt = format_of(x);
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor gy = grad_out.contiguous(fmt);
  const int64_t c_in = x.size(1), c_out = grad_out.size(1);
  const int64_t cg = c_in / groups, mg = c_out / groups;
  if (x.size(0) * x.size(2) * x.size(3) == 0 || c_out * cg == 0) return at::zeros({c_out, cg, 1, 1}, x.options());
  at::Tensor gw = at::empty({c_out, cg, 1, 1}, x.options());
  const Tables t = make_tables(c_in, groups, shuffle_groups);
  const int64_t nthreads = at::get_num_threads();
  at::Tensor partial = at::zeros({nthreads, groups, cl ? cg : mg, cl ? mg : cg}, x.options());
  Packed p;  // the kernel reads no weights
  p.cgp = round_up(cg, kPad);
  p.mgp = round_up(mg, kPad);
  SconvArgs a = make_args(gy, t, p, c_in, c_out, cl);
  a.x = xc.const_data_ptr();
  a.out = partial.mutable_data_ptr();
  shuffle_conv1x1_grad_weight_table.get()(a);
  // Sum the threads' buffers (in thread order) and put the packed columns j' back in the weight's column order:
  // one pass, every element of gw written once.
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "shuffle_conv1x1_grad_weight_sum", [&] {
    const scalar_t* part = partial.const_data_ptr<scalar_t>();
    scalar_t* out = gw.mutable_data_ptr<scalar_t>();
    const int64_t per_thread = groups * mg * cg;
    for (int64_t k = 0; k < groups; ++k) {
      for (int64_t m = 0; m < mg; ++m) {
        scalar_t* row = out + (k * mg + m) * cg;
        for (int64_t j = 0; j < cg; ++j) {
          const int64_t at_j = cl ? (k * cg + j) * mg + m : (k * mg + m) * cg + j;
          scalar_t acc = part[at_j];
          for (int64_t th = 1; th < nthreads; ++th) acc += part[th * per_thread + at_j];
          row[t.col[k * cg + j]] = acc;
        }
      }
    }
  });
  return gw;
}

// Two passes over grad_out on CPU (each GEMM streams it once; a fused pass buys nothing there).
std::tuple<at::Tensor, at::Tensor, at::Tensor> shuffle_conv1x1_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, int64_t groups, int64_t shuffle_groups,
    std::array<bool, 3> output_mask) {
  return shuffle_conv1x1_backward_from_parts(grad_out, x, weight, groups, shuffle_groups, output_mask,
                                             shuffle_conv1x1_grad_input_cpu, shuffle_conv1x1_grad_weight_cpu);
}

}  // namespace

// Routed: under sk.backend("emulated") the CUDA kernels run instead, in the emulator (csrc/emu/route.h).
TORCH_LIBRARY_IMPL(shufflekern, CPU, m) {
  m.impl("shuffle_conv1x1", SK_ROUTED("shuffle_conv1x1", shuffle_conv1x1_cpu));
  m.impl("shuffle_conv1x1_grad_input", SK_ROUTED("shuffle_conv1x1_grad_input", shuffle_conv1x1_grad_input_cpu));
  m.impl("shuffle_conv1x1_grad_weight", SK_ROUTED("shuffle_conv1x1_grad_weight", shuffle_conv1x1_grad_weight_cpu));
  m.impl("shuffle_conv1x1_backward", SK_ROUTED("shuffle_conv1x1_backward", shuffle_conv1x1_backward_cpu));
}

}  // namespace shufflekern::cpu
