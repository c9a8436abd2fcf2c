// Kernel signature of the distillation loss, filled per ISA by csrc/cpu/vec/kd_loss.cpp.
#pragma once
#include <cstdint>

#include "cpu/dispatch.h"

namespace shufflekern::cpu {

enum KdDtype : int { kKdFloat = 0, kKdDouble = 1, kKdBFloat16 = 2, kKdHalf = 3 };

// Logits are R rows of C classes; classes are contiguous, rows `*_stride` elements apart.  Gradients are
// dense [R, C] (null when not wanted).  row_loss receives each row's contribution to the reduced loss
// (already scaled), in double for double inputs and in float otherwise.  Also the base of DkdLossArgs; both
// are filled by loss_args (csrc/cpu/loss_common.h).
struct KdLossArgs {
  const void* s;
  const void* t;
  int64_t s_stride, t_stride;
  const int64_t* target;  // [R], null for kd_kl_div; values checked by the caller
  void* grad_s;
  void* grad_t;
  void* row_loss;
  int64_t rows, classes;
  double temperature, alpha;
  int64_t ignore_index, reduction, counted;
  int dtype;  // KdDtype
};

using KdLossFn = void (*)(const KdLossArgs& args);
SK_DECLARE_KERNEL_TABLE(kd_loss_table, KdLossFn);

}  // namespace shufflekern::cpu
