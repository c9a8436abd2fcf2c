// Host-side helpers of the CPU entry points of the distillation losses (kd_loss, dkd_loss).
#pragma once
#include <cstdint>

#include <ATen/ATen.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "cpu/kd_loss_kernel.h"
#include "kd_loss_checks.h"  // KdOutputs

namespace shufflekern::cpu {

inline int dtype_code(at::ScalarType dt) {
  switch (dt) {
    case at::kFloat: return kKdFloat;
    case at::kDouble: return kKdDouble;
    case at::kBFloat16: return kKdBFloat16;
    default: return kKdHalf;
  }
}

// Rows whose target is not ignore_index; rejects targets outside [0, C) before any kernel reads them.
inline int64_t count_rows(const at::Tensor& tgt, int64_t classes, int64_t ignore_index, const char* op = "kd_loss") {
  const int64_t* y = tgt.data_ptr<int64_t>();
  int64_t counted = 0;
  for (int64_t r = 0; r < tgt.numel(); ++r) {
    if (y[r] == ignore_index) continue;
    TORCH_CHECK_VALUE(y[r] >= 0 && y[r] < classes, op, ": target[", r, "] = ", y[r],
                      " is out of range: class indices must be in [0, ", classes, ") or ignore_index (",
                      ignore_index, ")");
    ++counted;
  }
  return counted;
}

// The kernel arguments of kd_loss and dkd_loss (DkdLossArgs adds beta) over the [R, C] logits rows s, t (classes
// contiguous), the targets tgt (undefined: none) and the outputs (R > 0: an empty gradient is one not wanted).
inline KdLossArgs loss_args(const at::Tensor& s, const at::Tensor& t, const at::Tensor& tgt, const KdOutputs& out,
                            double temperature, double alpha, int64_t ignore_index, int64_t reduction,
                            int64_t counted) {
  KdLossArgs a{};
  a.s = s.data_ptr();
  a.t = t.data_ptr();
  a.s_stride = s.stride(0);
  a.t_stride = t.stride(0);
  a.target = tgt.defined() ? tgt.data_ptr<int64_t>() : nullptr;
  a.grad_s = out.grad_s.numel() > 0 ? out.grad_s.data_ptr() : nullptr;
  a.grad_t = out.grad_t.numel() > 0 ? out.grad_t.data_ptr() : nullptr;
  a.row_loss = out.row_loss.data_ptr();
  a.rows = s.size(0);
  a.classes = s.size(1);
  a.temperature = temperature;
  a.alpha = alpha;
  a.ignore_index = ignore_index;
  a.reduction = reduction;
  a.counted = counted;
  a.dtype = dtype_code(s.scalar_type());
  return a;
}

// A fresh [R, C] gradient of tens of MiB is a fresh mmap: writing it costs one page fault (and one 4 KiB
// zeroing) per page, as much as the loss itself.  Asking for transparent huge pages on the untouched
// buffer turns that into one fault per 2 MiB (what c10's THP_MEM_ALLOC_ENABLE does for every tensor).
inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (t.nbytes() < 4 * kHuge) return;
  const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t lo = (begin + kHuge - 1) & ~(kHuge - 1), hi = (begin + t.nbytes()) & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);  // advice only: errors ignored
#endif
}

}  // namespace shufflekern::cpu
