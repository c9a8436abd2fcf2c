// Kernel signatures of shuffle_conv1x1, filled per ISA by csrc/cpu/vec/shuffle_conv1x1.cpp.
#pragma once
#include <cstdint>

#include "cpu/dispatch.h"

namespace shufflekern::cpu {

enum SconvDtype : int { kSconvFloat = 0, kSconvDouble = 1, kSconvBFloat16 = 2 };

// Everything a kernel needs, as raw pointers (see csrc/shuffle_conv1x1.h for the packed order j').
// Tensors are dense in NCHW or NHWC (channels_last) order.
struct SconvArgs {
  int dtype;                  // SconvDtype; storage type T of in, out, wp, wpt
  bool channels_last;
  int64_t n, hw;              // images, pixels per image
  int64_t c_in, c_out, groups, cg, mg;  // cg = c_in/groups, mg = c_out/groups
  int64_t cgp, mgp;           // cg, mg rounded up to 16 (row pitch of wp / wpt)
  const void* in;             // forward: x [n, c_in, hw]; grad_input, grad_weight: grad_out [n, c_out, hw]
  const void* x;              // grad_weight: x
  void* out;                  // forward: y;  grad_input: grad_x;  grad_weight: per-thread partial sums,
                              // [threads][groups][mg][cg] (NCHW) or [threads][groups][cg][mg] (NHWC)
  const void* wp;             // [groups][mg][cgp]: wp[k][m][j'] = W[k*mg + m, column of j'], zero padded
  const void* wpt;            // [groups][cg][mgp]: its transpose, zero padded
  const int64_t* src;         // [groups][cg]: x channel of packed column j' (ascending inside a group)
  const int64_t* runs;        // [groups][max_runs][3]: maximal contiguous runs (src_begin, len, j' begin)
  const int64_t* nruns;       // [groups]: runs of each group
  int64_t max_runs;
  const void* bias;           // [groups][mgp] in the accumulation type (float for bf16), or null
};

using SconvFn = void (*)(const SconvArgs&);
SK_DECLARE_KERNEL_TABLE(shuffle_conv1x1_forward_table, SconvFn);
SK_DECLARE_KERNEL_TABLE(shuffle_conv1x1_grad_input_table, SconvFn);
SK_DECLARE_KERNEL_TABLE(shuffle_conv1x1_grad_weight_table, SconvFn);  // float and double only

}  // namespace shufflekern::cpu
