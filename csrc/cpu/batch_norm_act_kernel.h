// Kernel signatures of batch_norm_act, filled per ISA by csrc/cpu/vec/batch_norm_act.cpp.
//
//   z = (x - mean) * invstd * weight + bias [+ residual],   y = relu(z) (or z),   invstd = 1/sqrt(var + eps)
//
// Training (batch statistics): mean and the biased var come from x over N, H, W.  Evaluation: they are
// given (the running statistics).  The ReLU mask of the backward is recomputed from x (and residual) with
// the same per-element operations as the forward, so it is bit-identical to the forward's y > 0.
#pragma once
#include <cstdint>

#include "cpu/dispatch.h"

namespace shufflekern::cpu {

enum BnDtype : int { kBnFloat = 0, kBnDouble = 1 };

// x, residual, y, grad_y, grad_x, grad_residual: dense [n, c, hw] (NCHW) or [n, hw, c] (channels_last).
// weight, bias, mean, var: [c] in the dtype of x (weight/bias may be null: 1 and 0).
struct BnActArgs {
  int dtype;  // BnDtype
  bool channels_last, relu, training;
  int64_t n, c, hw;
  double eps;
  const void* x;
  const void* residual;  // or null
  const void* weight;
  const void* bias;
  void* mean;  // forward, training: written; otherwise read
  void* var;   // biased variance, as mean
  void* y;
  // backward only
  const void* grad_y;
  void* grad_x;         // or null
  void* grad_residual;  // or null (required when residual and grad_x are given: grad_x reads it)
  void* grad_weight;    // [c] or null
  void* grad_bias;      // [c] or null
};

using BnActFn = void (*)(const BnActArgs&);
SK_DECLARE_KERNEL_TABLE(batch_norm_act_forward_table, BnActFn);
SK_DECLARE_KERNEL_TABLE(batch_norm_act_backward_table, BnActFn);

// bn_relu_max_pool: y = max_pool2d(relu(batch_norm(x)), 3, 2, 1) with a 1-byte argmax, the ShuffleNet stem's
// BatchNorm + ReLU + max pool in two passes over x (statistics, then normalise + pool), the full-resolution
// activation never written.  bn: the BatchNorm's arguments as for batch_norm_act (hw = h * w of x, relu and
// residual unused), bn.y / bn.grad_y the pooled [n, c, ho, wo] output / its gradient in x's memory format.
// argmax [n, c, ho, wo] (uint8, y's layout): the window position 3 * ky + kx of the element each output took,
// counted from the unclipped window's corner (2 oy - 1, 2 ox - 1); ATen's choice (the first maximum in
// row-major order, the last NaN).  The backward gathers each input's gradient from the <= 4 outputs whose
// windows hold it (ATen's summation order) and applies the ReLU mask and BatchNorm backward to it on the fly.
struct BnPoolArgs {
  BnActArgs bn;
  int64_t h, w, ho, wo;
  void* argmax;  // forward: written; backward: read
};

using BnPoolFn = void (*)(const BnPoolArgs&);
SK_DECLARE_KERNEL_TABLE(bn_relu_max_pool_forward_table, BnPoolFn);
SK_DECLARE_KERNEL_TABLE(bn_relu_max_pool_backward_table, BnPoolFn);

}  // namespace shufflekern::cpu
