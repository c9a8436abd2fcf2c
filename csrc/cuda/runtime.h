// The device runtime that every csrc/cuda/<op>.cu is written against, so that one source serves two builds:
//
//   nvcc (SHUFFLEKERN_CUDA=auto/1)  csrc/cuda/<op>.cu -> real kernels, registered for the CUDA dispatch key;
//   host C++ (always)               csrc/emu/<op>.cpp includes the same .cu -> the same kernels run on CPU
//                                   tensors under the CUDA-execution-model emulator (csrc/emu/emu.h),
//                                   reached through sk.backend("emulated").
//
// What a .cu may use beyond plain CUDA C++ (everything else is CUDA's own: threadIdx, __syncthreads,
// __shfl_*_sync, atomicAdd, ...):
//   SK_SHARED(T, name, dims)        static shared memory: __shared__ T name dims;   (dims e.g. [256] or [16][17])
//   SK_DYNAMIC_SHARED(T, name)      dynamic shared memory as T* name (the launch's smem bytes)
//   SK_KERNEL_ASSERT(cond)          device-side assertion (CUDA_KERNEL_ASSERT under nvcc; under emulation a
//                                   RuntimeError from the launch naming kernel, file:line, block and thread)
//   SK_LAUNCH(kernel, grid, block, smem, args...)   the one way to launch: kernel<<<grid, block, smem,
//                                   current stream>>>(args...) + launch check under nvcc, the emulator
//                                   otherwise.  A template kernel goes in parentheses: SK_LAUNCH((k<T, U>), ...)
//   SK_RT::dptr<T>(tensor)          a tensor's data pointer for a kernel argument.  Under emulation it also
//                                   declares the tensor's storage to the next launch (bounds of the buffers the
//                                   kernel may touch); every pointer argument of a launch must come from it.
//   SK_GLOBAL(T) p                  a kernel parameter pointing to global memory: T* __restrict__ under nvcc,
//                                   a pointer whose accesses the emulator's memory-traffic model records
//                                   otherwise (index it, add to it, take &p[i] for atomics; local copies `auto`)
//   SK_VCAST(V, p)                  reinterpret_cast<V*>(p) of such a pointer (vector loads: SK_VCAST(const float4, p))
//   SK_ADDR(p)                      its address as uintptr_t (alignment tests)
//   SK_RT::Guard g(device)          device guard;  SK_RT::sm_count()  multiprocessors of the current device
//                                   (the emulator models an H100 SXM: 132)
//   SK_DEVICE_IMPL(m) { m.impl("op", &fn); }   registration: TORCH_LIBRARY_IMPL(shufflekern, CUDA, m) under
//                                   nvcc, the emulator's op table otherwise
//   namespace shufflekern::SK_DEV_NS { ... }   the .cu's namespace (cuda / emu: the two builds link into one
//                                   library, so nothing with external linkage may share a name)
#pragma once
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>

#include "common.h"

#if defined(__CUDACC__)
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#define SK_DEV_NS cuda
#define SK_RT ::shufflekern::cudart
#define SK_SHARED(T, name, dims) __shared__ T name dims
#define SK_GLOBAL(T) T* __restrict__
#define SK_VCAST(V, p) reinterpret_cast<V*>(p)
#define SK_ADDR(p) reinterpret_cast<uintptr_t>(p)
#define SK_DYNAMIC_SHARED(T, name)                         \
  extern __shared__ __align__(16) unsigned char sk_dynamic_smem_[]; \
  T* name = reinterpret_cast<T*>(sk_dynamic_smem_)
#define SK_KERNEL_ASSERT(cond) CUDA_KERNEL_ASSERT(cond)
#define SK_DEVICE_IMPL(m) TORCH_LIBRARY_IMPL(shufflekern, CUDA, m)

namespace shufflekern::cudart {

using Guard = c10::cuda::CUDAGuard;

inline int sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

template <typename T>
inline T* dptr(const at::Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

template <typename... P, typename... A>
inline void launch(const char* /*name*/, const char* /*file*/, int /*line*/, void (*kernel)(P...), dim3 grid,
                   dim3 block, size_t smem, A&&... args) {
  // More than 48 KiB of dynamic shared memory is an opt-in, per kernel.
  if (smem > 48 * 1024) C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<grid, block, smem, at::cuda::getCurrentCUDAStream()>>>(std::forward<A>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace shufflekern::cudart

#else  // the emulator

#include "emu/emu_torch.h"

#define SK_DEV_NS emu
#define SK_RT ::shufflekern::emurt
#define SK_GLOBAL(T) ::sk_emu::gptr<T>
#define SK_VCAST(V, p) ::sk_emu::vcast<V>(p)
#define SK_ADDR(p) reinterpret_cast<uintptr_t>((p).get())

#endif

#define SK_LAUNCH(kernel, grid, block, smem, ...) \
  SK_RT::launch(#kernel, __FILE__, __LINE__, kernel, grid, block, smem, __VA_ARGS__)
