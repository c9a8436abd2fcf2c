// Whole-unit inference kernels (eval mode, BatchNorm folded): the ShuffleNet V2 unit (shufflekern::unit_v2)
// and the ShuffleNet V1 unit (shufflekern::unit_v1), each one op.  Entry points: csrc/cpu/unit_ops.cpp;
// per-ISA kernels: csrc/cpu/vec/unit_kernels.cpp.  The weights come prepacked (shufflekern/models/_units.py).
//
// Packed layouts (T = the activation dtype; G = 64 / sizeof(T) elements, the padding granularity):
//  * a 1x1 conv [N, K] with `groups` groups (Ng = N / groups outputs, Kg = K / groups inputs a group) is
//    groups * Kg * rup(Ng, G) values: for each group, its rup(Ng, G) output columns cut into panels of 2G
//    columns (the last may be G wide), each panel stored [Kg][width] (row k = the panel's weights of input k),
//    zero padded past Ng;
//  * a 3x3 depthwise conv [C, 1, 3, 3] is [9][rup(C, G)] (tap-major, zero padded);
//  * biases are plain [N] / [C].
#pragma once
#include <cstdint>

#include "cpu/dispatch.h"

namespace shufflekern::cpu {

inline int64_t unit_round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

struct UnitArgs {
  int kind;            // 2: V2 unit, 1: V1 unit
  bool is_double;      // T = double (else float)
  bool channels_last;  // x and out are dense in NHWC (else NCHW)
  int64_t n, h, w, ho, wo, stride;
  int64_t c_in, c_out;
  // V2: branch2 = 1x1 (k1 -> mid) + ReLU, dw 3x3 (mid), 1x1 (mid -> bf) + ReLU with k1 = c_in (stride 2) or
  //     c_in / 2 (stride 1: the upper half of x); stride 2 adds branch1 = dw 3x3 (c_in), 1x1 (c_in -> bf) + ReLU;
  //     out[:, 2i] = (x[:, i] or branch1[i]), out[:, 2i + 1] = branch2[i].
  // V1: 1x1 grouped g1 (c_in -> mid) + ReLU, channel shuffle (g3), dw 3x3 (mid), 1x1 grouped g3 (mid -> br);
  //     stride 1: out = relu(x + y); stride 2: out = cat(avg_pool3x3/2(x), relu(y)).  The kernel runs the
  //     depthwise conv on the unshuffled channels (wd / bd permuted at packing) and folds the shuffle into
  //     the last GEMM's reads (kidx).
  int64_t mid, bf, g1, g3;
  const void* x;
  void* out;
  const void *w1, *b1, *wd, *bd, *w2, *b2;  // V1: w2 / b2 = conv3
  const void *wd1, *bd1, *wp1, *bp1;        // V2 stride 2: branch1
  const int32_t* kidx;                      // V1: [mid] unshuffled channel of shuffled channel k
  int64_t threads;
};

using UnitFn = void (*)(const UnitArgs&);
SK_DECLARE_KERNEL_TABLE(unit_table, UnitFn);

}  // namespace shufflekern::cpu
