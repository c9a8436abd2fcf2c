// Heap scratch for the per-ISA kernels in csrc/cpu/vec/ (index tables, per-thread partial sums).
//
// Those files are compiled once per ISA, so any inline function they instantiate from a header (a std
// container's, say) exists in an AVX-512 and an AVX2 copy and the linker keeps one of them for both: the
// AVX2 path could then run AVX-512 code.  Scratch's constructor and destructor are therefore defined out of
// line, in csrc/cpu/dispatch.cpp (compiled once, without ISA flags); `as` is only a pointer cast.
#pragma once
#include <cstddef>

namespace shufflekern::cpu {

class Scratch {
 public:
  // `bytes` (at least 1) from the heap, zero-filled if `zero`; TORCH_CHECK fails naming `op` if out of memory.
  Scratch(std::size_t bytes, const char* op, bool zero = false);
  ~Scratch();
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  template <typename U>
  U* as() const {
    return static_cast<U*>(p_);
  }

 private:
  void* p_;
};

}  // namespace shufflekern::cpu
