// Kernel signature of the Decoupled-KD loss, filled per ISA by csrc/cpu/vec/dkd_loss.cpp.
#pragma once
#include <cstdint>

#include "cpu/dispatch.h"
#include "cpu/kd_loss_kernel.h"  // KdDtype

namespace shufflekern::cpu {

// Logits are R rows of C >= 2 classes; classes are contiguous, rows `*_stride` elements apart.  Gradients are
// dense [R, C] (null when not wanted).  row_loss receives each row's contribution to the reduced loss
// (already scaled), in double for double inputs and in float otherwise.  Targets were range-checked.
struct DkdLossArgs {
  const void* s;
  const void* t;
  int64_t s_stride, t_stride;
  const int64_t* target;  // [R]
  void* grad_s;
  void* grad_t;
  void* row_loss;
  int64_t rows, classes;
  double temperature, alpha, beta;
  int64_t ignore_index, reduction, counted;
  int dtype;  // KdDtype
};

using DkdLossFn = void (*)(const DkdLossArgs& args);
SK_DECLARE_KERNEL_TABLE(dkd_loss_table, DkdLossFn);

}  // namespace shufflekern::cpu
