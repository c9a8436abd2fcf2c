// CPU entry points of shufflekern::unit_v2 and shufflekern::unit_v1 (whole-unit inference kernels; layouts
// and semantics in csrc/unit.h).  Checks here, the kernel in csrc/cpu/vec/unit_kernels.cpp.  Inference only:
// no autograd formula (the fused models call these ops only when no gradient is needed).
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "unit.h"

namespace shufflekern::cpu {

SK_DEFINE_KERNEL_TABLE(unit_table, UnitFn);

namespace {

int64_t granule(const at::Tensor& x) { return 64 / x.element_size(); }

void check_param(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x, int64_t numel) {
  TORCH_CHECK(t.defined(), op, ": ", name, " must be a tensor");
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be on the CPU like x, got ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have x's dtype (", x.scalar_type(),
                   "), got ", t.scalar_type());
  TORCH_CHECK(t.numel() == numel, op, ": ", name, " must hold ", numel, " values (the packed layout of ",
              "csrc/unit.h), got ", t.numel(), " (shape ", t.sizes(), ")");
}

at::MemoryFormat check_x(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  TORCH_CHECK(x.device().is_cpu(), op, ": x must be a CPU tensor, got ", x.device());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
                   ": x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.size(2) > 0 && x.size(3) > 0, op, ": x must have H, W > 0, got ", x.sizes());
  return x.suggest_memory_format() == at::MemoryFormat::ChannelsLast ? at::MemoryFormat::ChannelsLast
                                                                       : at::MemoryFormat::Contiguous;
}

UnitArgs base_args(const at::Tensor& x, at::MemoryFormat fmt, int64_t stride) {
  UnitArgs a{};
  a.is_double = x.scalar_type() == at::kDouble;
  a.channels_last = fmt == at::MemoryFormat::ChannelsLast;
  a.n = x.size(0);
  a.c_in = x.size(1);
  a.h = x.size(2);
  a.w = x.size(3);
  a.stride = stride;
  a.ho = (a.h - 1) / stride + 1;
  a.wo = (a.w - 1) / stride + 1;
  a.threads = at::get_num_threads();
  return a;
}

// The contiguous parameters of both unit kinds (1x1 conv, depthwise, 1x1 conv: weights and biases), kept alive
// for the call, and the input, output and parameter pointers set in `a`.
struct UnitParams {
  at::Tensor w1, b1, wd, bd, w2, b2;
  UnitParams(UnitArgs& a, const at::Tensor& x, const at::Tensor& out, const at::Tensor& w1_, const at::Tensor& b1_,
             const at::Tensor& wd_, const at::Tensor& bd_, const at::Tensor& w2_, const at::Tensor& b2_)
      : w1(w1_.contiguous()), b1(b1_.contiguous()), wd(wd_.contiguous()), bd(bd_.contiguous()),
        w2(w2_.contiguous()), b2(b2_.contiguous()) {
    a.x = x.data_ptr();
    a.out = out.data_ptr();
    a.w1 = w1.data_ptr();
    a.b1 = b1.data_ptr();
    a.wd = wd.data_ptr();
    a.bd = bd.data_ptr();
    a.w2 = w2.data_ptr();
    a.b2 = b2.data_ptr();
  }
};

at::Tensor unit_v2_cpu(const at::Tensor& x_, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& wd,
                       const at::Tensor& bd, const at::Tensor& w2, const at::Tensor& b2,
                       const std::optional<at::Tensor>& wd1, const std::optional<at::Tensor>& bd1,
                       const std::optional<at::Tensor>& wp1, const std::optional<at::Tensor>& bp1, int64_t stride) {
  const char* op = "unit_v2";
  const auto fmt = check_x(op, x_);
  TORCH_CHECK(stride == 1 || stride == 2, op, ": stride must be 1 or 2, got ", stride);
  TORCH_CHECK(b1.dim() == 1 && b2.dim() == 1 && bd.dim() == 1, op, ": b1, bd, b2 must be 1-D");
  const int64_t G = granule(x_), mid = b1.size(0), bf = b2.size(0), cin = x_.size(1);
  TORCH_CHECK(mid > 0 && bf > 0, op, ": b1 and b2 must be non-empty");
  if (stride == 1) {
    TORCH_CHECK(cin == 2 * bf, op, ": a stride-1 unit needs x's channels (", cin, ") == 2 * b2's (", bf, ")");
  }
  const int64_t k1 = stride == 1 ? bf : cin;
  check_param(op, "w1", w1, x_, k1 * unit_round_up(mid, G));
  check_param(op, "b1", b1, x_, mid);
  check_param(op, "wd", wd, x_, 9 * unit_round_up(mid, G));
  check_param(op, "bd", bd, x_, mid);
  check_param(op, "w2", w2, x_, mid * unit_round_up(bf, G));
  check_param(op, "b2", b2, x_, bf);
  const bool b1set = wd1.has_value() && bd1.has_value() && wp1.has_value() && bp1.has_value();
  const bool b1none = !wd1.has_value() && !bd1.has_value() && !wp1.has_value() && !bp1.has_value();
  TORCH_CHECK(stride == 2 ? b1set : b1none, op, ": wd1, bd1, wp1, bp1 (branch1) must all be given for stride 2 ",
              "and all be None for stride 1");
  if (stride == 2) {
    check_param(op, "wd1", *wd1, x_, 9 * unit_round_up(cin, G));
    check_param(op, "bd1", *bd1, x_, cin);
    check_param(op, "wp1", *wp1, x_, cin * unit_round_up(bf, G));
    check_param(op, "bp1", *bp1, x_, bf);
  }
  const at::Tensor x = x_.contiguous(fmt);
  UnitArgs a = base_args(x, fmt, stride);
  a.kind = 2;
  a.c_out = 2 * bf;
  a.mid = mid;
  a.bf = bf;
  a.g1 = a.g3 = 1;
  at::Tensor out = at::empty({a.n, a.c_out, a.ho, a.wo}, x.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  const UnitParams params(a, x, out, w1, b1, wd, bd, w2, b2);
  at::Tensor cwd1, cbd1, cwp1, cbp1;
  if (stride == 2) {
    cwd1 = wd1->contiguous();
    cbd1 = bd1->contiguous();
    cwp1 = wp1->contiguous();
    cbp1 = bp1->contiguous();
    a.wd1 = cwd1.data_ptr();
    a.bd1 = cbd1.data_ptr();
    a.wp1 = cwp1.data_ptr();
    a.bp1 = cbp1.data_ptr();
  }
  unit_table.get()(a);
  return out;
}

at::Tensor unit_v1_cpu(const at::Tensor& x_, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& wd,
                       const at::Tensor& bd, const at::Tensor& w3, const at::Tensor& b3, int64_t groups1,
                       int64_t groups3, int64_t stride) {
  const char* op = "unit_v1";
  const auto fmt = check_x(op, x_);
  TORCH_CHECK(stride == 1 || stride == 2, op, ": stride must be 1 or 2, got ", stride);
  TORCH_CHECK(groups1 >= 1 && groups3 >= 1, op, ": groups1 and groups3 must be >= 1, got ", groups1, ", ", groups3);
  TORCH_CHECK(b1.dim() == 1 && b3.dim() == 1 && bd.dim() == 1, op, ": b1, bd, b3 must be 1-D");
  const int64_t G = granule(x_), mid = b1.size(0), br = b3.size(0), cin = x_.size(1);
  TORCH_CHECK(mid > 0 && br > 0, op, ": b1 and b3 must be non-empty");
  TORCH_CHECK(cin % groups1 == 0 && mid % groups1 == 0, op, ": x's channels (", cin, ") and b1's (", mid,
              ") must be divisible by groups1 (", groups1, ")");
  TORCH_CHECK(mid % groups3 == 0 && br % groups3 == 0, op, ": b1's channels (", mid, ") and b3's (", br,
              ") must be divisible by groups3 (", groups3, ")");
  if (stride == 1) {
    TORCH_CHECK(br == cin, op, ": a stride-1 unit needs b3's channels (", br, ") == x's (", cin, ")");
  }
  check_param(op, "w1", w1, x_, cin * unit_round_up(mid / groups1, G));
  check_param(op, "b1", b1, x_, mid);
  check_param(op, "wd", wd, x_, 9 * unit_round_up(mid, G));
  check_param(op, "bd", bd, x_, mid);
  check_param(op, "w3", w3, x_, mid * unit_round_up(br / groups3, G));
  check_param(op, "b3", b3, x_, br);
  const at::Tensor x = x_.contiguous(fmt);
  UnitArgs a = base_args(x, fmt, stride);
  a.kind = 1;
  a.c_out = stride == 1 ? cin : cin + br;
  a.mid = mid;
  a.g1 = groups1;
  a.g3 = groups3;
  at::Tensor out = at::empty({a.n, a.c_out, a.ho, a.wo}, x.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  // Shuffled channel k of the depthwise output is unshuffled channel kidx[k] (channel_shuffle(groups3)).
  std::vector<int32_t> kidx(mid);
  const int64_t q = mid / groups3;
  for (int64_t k = 0; k < mid; ++k) kidx[k] = static_cast<int32_t>((k % groups3) * q + k / groups3);
  const UnitParams params(a, x, out, w1, b1, wd, bd, w3, b3);
  a.kidx = kidx.data();
  unit_table.get()(a);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflekern, CPU, m) {
  m.impl("unit_v2", &unit_v2_cpu);
  m.impl("unit_v1", &unit_v1_cpu);
}

}  // namespace shufflekern::cpu
