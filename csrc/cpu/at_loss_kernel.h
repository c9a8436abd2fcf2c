// Kernel signatures of at_loss (attention transfer), filled per ISA by csrc/cpu/vec/at_loss.cpp; the maths:
// csrc/at_loss.h.  The per-sample part (norms, loss, d loss / d q: O(N*H*W)) is plain C++ in csrc/cpu/at_loss.cpp.
#pragma once
#include <cstdint>

#include "cpu/dispatch.h"

namespace shufflekern::cpu {

enum AtDtype : int { kAtFloat = 0, kAtDouble = 1 };

// One dense map f: [n, c, hw] (NCHW) or [n, hw, c] (channels_last), and the [n, hw] per-pixel values that go
// with it (q, or d loss / d q), in the accumulation type (= f's type here: float or double).
struct AtMapArgs {
  int dtype;  // AtDtype
  bool channels_last;
  int64_t n, c, hw;
  const void* f;
  void* q;           // forward: written, q = mean_c f^2
  const void* g;     // backward: d loss / d q
  void* grad;        // backward: written, grad = (2 / c) f g
};

using AtMapFn = void (*)(const AtMapArgs&);
SK_DECLARE_KERNEL_TABLE(at_loss_sq_mean_table, AtMapFn);
SK_DECLARE_KERNEL_TABLE(at_loss_grad_map_table, AtMapFn);

}  // namespace shufflekern::cpu
