// SK_ROUTED("op", cpu_fn): the CPU kernel registration of an op that has a CUDA kernel.  It calls cpu_fn,
// or, while the emulated backend is on, the op's .cu host code under the emulator (csrc/emu/registry.h).
//   TORCH_LIBRARY_IMPL(shufflekern, CPU, m) { m.impl("channel_shuffle", SK_ROUTED("channel_shuffle", channel_shuffle_cpu)); }
#pragma once
#include "emu/registry.h"

namespace shufflekern::emurt {

template <auto Fn>
struct Routed;

template <typename R, typename... A, R (*Fn)(A...)>
struct Routed<Fn> {
  static inline const char* name = nullptr;
  static R call(A... args) {
    if (enabled()) return lookup<R(A...)>(name)(args...);
    return Fn(args...);
  }
};

template <auto Fn>
auto routed(const char* name) {
  Routed<Fn>::name = name;
  return &Routed<Fn>::call;
}

}  // namespace shufflekern::emurt

#define SK_ROUTED(name, fn) ::shufflekern::emurt::routed<&fn>(name)
