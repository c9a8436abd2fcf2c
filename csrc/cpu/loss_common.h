// Host-side helpers of the CPU entry points of the distillation losses (kd_loss, dkd_loss).
#pragma once
#include <cstdint>

#include <ATen/ATen.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "cpu/kd_loss_kernel.h"

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
