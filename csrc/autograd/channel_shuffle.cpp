// Autograd of shufflekern::channel_shuffle and its Triton twin: the inverse of a shuffle with g groups on C
// channels is the shuffle with C/g groups, so the backward is the same op (and is itself differentiable).
#include <torch/library.h>

#include "autograd/common.h"

namespace shufflekern::autograd {
namespace {

template <typename Fam>
at::Tensor call(const at::Tensor& x, int64_t groups) {
  static const auto op = family_op<at::Tensor(const at::Tensor&, int64_t), Fam>("channel_shuffle");
  return op.call(x, groups);
}

template <typename Fam>
struct ChannelShuffle : torch::autograd::Function<ChannelShuffle<Fam>> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t groups) {
    at::Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      y = call<Fam>(x, groups);  // validates groups before the division below
    }
    ctx->saved_data["inverse_groups"] = int_size(x, 1) / groups;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {call<Fam>(grads[0], ctx->saved_data["inverse_groups"].toInt()), at::Tensor()};
  }
};

template <typename Fam>
at::Tensor channel_shuffle_autograd(const at::Tensor& x, int64_t groups) {
  return ChannelShuffle<Fam>::apply(x, groups);
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflekern, Autograd, m) { SK_AUTOGRAD_FAMILY(m, "channel_shuffle", channel_shuffle_autograd); }

}  // namespace shufflekern::autograd
