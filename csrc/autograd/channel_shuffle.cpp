// Autograd of shufflekern::channel_shuffle: the inverse of a shuffle with g groups on C channels is the
// shuffle with C/g groups, so the backward is the same op (and is itself differentiable).
#include <torch/library.h>

#include "autograd/common.h"

namespace shufflekern::autograd {
namespace {

at::Tensor call(const at::Tensor& x, int64_t groups) {
  static const auto op = op_handle<at::Tensor(const at::Tensor&, int64_t)>("shufflekern::channel_shuffle");
  return op.call(x, groups);
}

struct ChannelShuffle : torch::autograd::Function<ChannelShuffle> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t groups) {
    at::Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      y = call(x, groups);  // validates groups before the division below
    }
    ctx->saved_data["inverse_groups"] = int_size(x, 1) / groups;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {call(grads[0], ctx->saved_data["inverse_groups"].toInt()), at::Tensor()};
  }
};

at::Tensor channel_shuffle_autograd(const at::Tensor& x, int64_t groups) {
  return ChannelShuffle::apply(x, groups);
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflekern, Autograd, m) { m.impl("channel_shuffle", &channel_shuffle_autograd); }

}  // namespace shufflekern::autograd
