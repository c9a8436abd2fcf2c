// ATen glue of the emulator (csrc/emu/emu.h) for the .cu files compiled as host C++ (csrc/cuda/runtime.h
// includes this when the compiler is not nvcc): the SK_RT namespace of the emulated build.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "emu/emu.h"
#include "emu/registry.h"

// c10's host CUDA_KERNEL_ASSERT aborts the process; in emulated kernels it is a launch error.
#undef CUDA_KERNEL_ASSERT
#define CUDA_KERNEL_ASSERT(cond) SK_KERNEL_ASSERT(cond)

namespace shufflekern::emurt {

// Device guard: the emulated device is the CPU.
struct Guard {
  explicit Guard(const c10::Device&) {}
};

// The emulator models an H100 SXM's 132 multiprocessors (launch configurations that depend on it take the
// same shape as on that GPU).
inline int sm_count() { return 132; }

// The tensor's data pointer; declares its storage as a buffer of the next launch on this thread.
template <typename T>
inline T* dptr(const at::Tensor& t) {
  if (!t.defined() || t.numel() == 0) return t.defined() ? static_cast<T*>(t.data_ptr()) : nullptr;
  TORCH_CHECK(t.device().is_cpu(), "shufflekern: the emulated backend runs CPU tensors, got a ", t.device(), " tensor");
  const c10::Storage& st = t.storage();
  ::sk_emu::declare_buffer(st.data(), st.nbytes());
  return static_cast<T*>(t.data_ptr());
}

template <typename... P, typename... A>
inline void launch(const char* name, const char* file, int line, void (*kernel)(P...), dim3 grid, dim3 block,
                   size_t smem, A&&... args) {
  try {
    ::sk_emu::launch(name, file, line, kernel, grid, block, smem, std::forward<A>(args)...);
  } catch (const ::sk_emu::Error& e) {
    TORCH_CHECK(false, "shufflekern emulated CUDA: ", e.what());
  }
}

}  // namespace shufflekern::emurt

// Under the emulator, a .cu's registration block fills the emulated op table (csrc/emu/registry.h).
#define SK_EMU_CONCAT_(a, b) a##b
#define SK_EMU_CONCAT(a, b) SK_EMU_CONCAT_(a, b)
#define SK_DEVICE_IMPL(m) SK_DEVICE_IMPL_(m, SK_EMU_CONCAT(sk_emu_register_, __LINE__))
#define SK_DEVICE_IMPL_(m, fn)                                                     \
  static void fn(::shufflekern::emurt::OpTable);                                    \
  static const int SK_EMU_CONCAT(fn, _done) = (fn(::shufflekern::emurt::OpTable{}), 0); \
  static void fn(::shufflekern::emurt::OpTable m)
