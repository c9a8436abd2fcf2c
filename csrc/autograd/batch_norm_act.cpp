// Autograd of shufflekern::batch_norm_act and its Triton twin: y = act(BN(x) [+ residual]).  The derivatives (through the batch
// statistics in training, with constant statistics in evaluation) are computed by batch_norm_act_backward;
// mean and var are outputs without a gradient.  Not twice differentiable.
#include <torch/library.h>

#include "autograd/common.h"

namespace shufflekern::autograd {
namespace {

using OptT = std::optional<at::Tensor>;
using Fwd = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const OptT&, const OptT&, const OptT&,
                                                            const OptT&, const OptT&, bool, double, bool);
using Bwd = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const OptT&, const OptT&, const OptT&, const at::Tensor&, const at::Tensor&,
    bool, double, bool, std::array<bool, 4>);

OptT opt(const at::Tensor& t) { return t.defined() ? OptT(t) : std::nullopt; }

template <typename Fam>
struct BatchNormAct : torch::autograd::Function<BatchNormAct<Fam>> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const OptT& weight, const OptT& bias,
                               const OptT& residual, const OptT& running_mean, const OptT& running_var,
                               bool training, double eps, bool relu) {
    static const auto op = family_op<Fwd, Fam>("batch_norm_act");
    at::Tensor y, mean, var;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(y, mean, var) = op.call(x, weight, bias, residual, running_mean, running_var, training, eps, relu);
    }
    // Evaluation normalises with the running statistics: the backward needs them (not the 0-element outputs).
    ctx->save_for_backward({x, weight.value_or(at::Tensor()), bias.value_or(at::Tensor()),
                            residual.value_or(at::Tensor()), training ? mean : running_mean.value_or(at::Tensor()),
                            training ? var : running_var.value_or(at::Tensor())});
    // needs_input_grad counts only the tensor arguments that were given: their positions in that list.
    int64_t edge = 1;
    for (const auto& [name, t] : {std::pair{"w", &weight}, {"b", &bias}, {"r", &residual}}) {
      ctx->saved_data[name] = t->has_value() && (*t)->defined() ? edge++ : int64_t(-1);
    }
    ctx->saved_data["training"] = training;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["relu"] = relu;
    ctx->mark_non_differentiable({mean, var});
    // mean and var get no gradient: without this the engine builds two [C] zero tensors a call for them (two
    // ops a BatchNorm in every training step); an undefined grad of y is handled in backward.
    ctx->set_materialize_grads(false);
    return {y, mean, var};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = family_op<Bwd, Fam>("batch_norm_act_backward");
    const auto s = ctx->get_saved_variables();
    auto needs = [&](const char* name) {
      const int64_t edge = ctx->saved_data[name].toInt();
      return edge >= 0 && ctx->needs_input_grad(edge);
    };
    const std::array<bool, 4> mask = {ctx->needs_input_grad(0), needs("r"), needs("w"), needs("b")};
    if (!grads[0].defined() || !(mask[0] || mask[1] || mask[2] || mask[3])) {
      return variable_list(9);
    }
    auto [gx, gr, gw, gb] = op.call(grads[0], s[0], opt(s[1]), opt(s[2]), opt(s[3]), s[4], s[5],
                                    ctx->saved_data["training"].toBool(), ctx->saved_data["eps"].toDouble(),
                                    ctx->saved_data["relu"].toBool(), mask);
    const auto pick = [](bool asked, const at::Tensor& t) { return asked ? t : at::Tensor(); };
    return {pick(mask[0], gx), pick(mask[2], gw), pick(mask[3], gb), pick(mask[1], gr), at::Tensor(), at::Tensor(),
            at::Tensor(),      at::Tensor(),      at::Tensor()};
  }
};

template <typename Fam>
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_act_autograd(
    const at::Tensor& x, const OptT& weight, const OptT& bias, const OptT& residual, const OptT& running_mean,
    const OptT& running_var, bool training, double eps, bool relu) {
  auto out = BatchNormAct<Fam>::apply(x, weight, bias, residual, running_mean, running_var, training, eps, relu);
  return {out[0], out[1], out[2]};
}

// shufflekern::bn_relu_max_pool (CPU only, no Triton twin): y = max_pool2d(relu(BN(x)), 3, 2, 1); argmax, mean
// and var are outputs without a gradient.  Not twice differentiable.
using PoolFwd = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const OptT&, const OptT&,
                                                                          const OptT&, const OptT&, bool, double);
using PoolBwd = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                               const OptT&, const OptT&, const at::Tensor&,
                                                               const at::Tensor&, bool, double, std::array<bool, 3>);

struct BnReluMaxPool : torch::autograd::Function<BnReluMaxPool> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const OptT& weight, const OptT& bias,
                               const OptT& running_mean, const OptT& running_var, bool training, double eps) {
    static const auto op = op_handle<PoolFwd>("shufflekern::bn_relu_max_pool");
    at::Tensor y, argmax, mean, var;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(y, argmax, mean, var) = op.call(x, weight, bias, running_mean, running_var, training, eps);
    }
    ctx->save_for_backward({x, argmax, weight.value_or(at::Tensor()), bias.value_or(at::Tensor()),
                            training ? mean : running_mean.value_or(at::Tensor()),
                            training ? var : running_var.value_or(at::Tensor())});
    int64_t edge = 1;  // as in BatchNormAct: positions among the given tensor arguments
    for (const auto& [name, t] : {std::pair{"w", &weight}, {"b", &bias}}) {
      ctx->saved_data[name] = t->has_value() && (*t)->defined() ? edge++ : int64_t(-1);
    }
    ctx->saved_data["training"] = training;
    ctx->saved_data["eps"] = eps;
    ctx->mark_non_differentiable({argmax, mean, var});
    ctx->set_materialize_grads(false);
    return {y, argmax, mean, var};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = op_handle<PoolBwd>("shufflekern::bn_relu_max_pool_backward");
    const auto s = ctx->get_saved_variables();
    auto needs = [&](const char* name) {
      const int64_t edge = ctx->saved_data[name].toInt();
      return edge >= 0 && ctx->needs_input_grad(edge);
    };
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), needs("w"), needs("b")};
    if (!grads[0].defined() || !(mask[0] || mask[1] || mask[2])) return variable_list(7);
    auto [gx, gw, gb] = op.call(grads[0], s[0], s[1], opt(s[2]), opt(s[3]), s[4], s[5],
                                ctx->saved_data["training"].toBool(), ctx->saved_data["eps"].toDouble(), mask);
    const auto pick = [](bool asked, const at::Tensor& t) { return asked ? t : at::Tensor(); };
    return {pick(mask[0], gx), pick(mask[1], gw), pick(mask[2], gb), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_relu_max_pool_autograd(
    const at::Tensor& x, const OptT& weight, const OptT& bias, const OptT& running_mean, const OptT& running_var,
    bool training, double eps) {
  auto out = BnReluMaxPool::apply(x, weight, bias, running_mean, running_var, training, eps);
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflekern, Autograd, m) {
  SK_AUTOGRAD_FAMILY(m, "batch_norm_act", batch_norm_act_autograd);
  m.impl("bn_relu_max_pool", &bn_relu_max_pool_autograd);
}

}  // namespace shufflekern::autograd
