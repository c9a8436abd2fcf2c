// Kernel signature of the Decoupled-KD loss, filled per ISA by csrc/cpu/vec/dkd_loss.cpp.
#pragma once
#include <cstdint>

#include "cpu/dispatch.h"
#include "cpu/kd_loss_kernel.h"  // KdLossArgs, KdDtype

namespace shufflekern::cpu {

// kd_loss's arguments (csrc/cpu/kd_loss_kernel.h; C >= 2 classes, targets required and range-checked) and
// beta, the weight of the non-target classes' KL.
struct DkdLossArgs : KdLossArgs {
  double beta;
};

using DkdLossFn = void (*)(const DkdLossArgs& args);
SK_DECLARE_KERNEL_TABLE(dkd_loss_table, DkdLossFn);

}  // namespace shufflekern::cpu
