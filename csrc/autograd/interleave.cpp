// Autograd of shufflekern::interleave and shufflekern::deinterleave: each is the other's inverse, so each is
// the other's backward (and both are linear: the backward is itself differentiable).
#include <torch/library.h>

#include <vector>

#include "autograd/common.h"

namespace shufflekern::autograd {
namespace {

using InterleaveSig = std::vector<at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t);
using DeinterleaveSig = std::tuple<at::Tensor, at::Tensor>(at::TensorList);

std::vector<at::Tensor> call_interleave(const at::Tensor& a, const at::Tensor& b, int64_t parts) {
  static const auto op = op_handle<InterleaveSig>("shufflekern::interleave");
  return op.call(a, b, parts);
}

std::tuple<at::Tensor, at::Tensor> call_deinterleave(at::TensorList ys) {
  static const auto op = op_handle<DeinterleaveSig>("shufflekern::deinterleave");
  return op.call(ys);
}

// An output that did not reach the loss has no gradient: autograd materialises it as zeros (the default
// materialize_grads), which the inverse op then moves like any other values.
struct Interleave : torch::autograd::Function<Interleave> {
  static variable_list forward(AutogradContext*, const at::Tensor& a, const at::Tensor& b, int64_t parts) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_interleave(a, b, parts);
  }

  static variable_list backward(AutogradContext*, variable_list grads) {
    auto [ga, gb] = call_deinterleave(grads);
    return {ga, gb, at::Tensor()};
  }
};

struct Deinterleave : torch::autograd::Function<Deinterleave> {
  static variable_list forward(AutogradContext* ctx, at::TensorList ys) {
    ctx->saved_data["parts"] = static_cast<int64_t>(ys.size());
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [a, b] = call_deinterleave(ys);
    return {a, b};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return call_interleave(grads[0], grads[1], ctx->saved_data["parts"].toInt());
  }
};

std::vector<at::Tensor> interleave_autograd(const at::Tensor& a, const at::Tensor& b, int64_t parts) {
  return Interleave::apply(a, b, parts);
}

std::tuple<at::Tensor, at::Tensor> deinterleave_autograd(at::TensorList ys) {
  // (a TensorList, not a vector: Function::apply tracks the tensors of a TensorList argument only)
  variable_list out = Deinterleave::apply(ys);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflekern, Autograd, m) {
  m.impl("interleave", &interleave_autograd);
  m.impl("deinterleave", &deinterleave_autograd);
}

}  // namespace shufflekern::autograd
