// The emulated backend's op table and its switch.
//
// Under the emulator, each csrc/cuda/<op>.cu registers its host entry points here (SK_DEVICE_IMPL, see
// csrc/cuda/runtime.h) instead of for the CUDA dispatch key.  The CPU entry points are registered through
// SK_ROUTED (csrc/emu/route.h): while the emulated backend is on (sk.backend("emulated"), process-wide like
// every backend choice), a CPU-tensor call of the op runs the .cu host code and kernels under the emulator;
// the autograd formulas and the backward ops are the same dispatcher calls as always, so forward and
// backward both go through the CUDA kernels.
//
// Torch-only: no CUDA or emulator macros leak into the CPU files that include this.
#pragma once
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <string>
#include <typeinfo>
#include <vector>

namespace shufflekern::emurt {

inline std::atomic<bool>& enabled_flag() {
  static std::atomic<bool> on{false};
  return on;
}
inline bool enabled() { return enabled_flag().load(std::memory_order_relaxed); }
inline void set_enabled(bool on) { enabled_flag().store(on); }

struct OpEntry {
  void* fn;
  const std::type_info* type;
};

inline std::map<std::string, OpEntry>& op_table() {
  static std::map<std::string, OpEntry> table;
  return table;
}

// What SK_DEVICE_IMPL(m) hands its body: m.impl("op", &host_fn), as in TORCH_LIBRARY_IMPL.
struct OpTable {
  template <typename F>
  OpTable& impl(const char* name, F* fn) {
    op_table()[name] = OpEntry{reinterpret_cast<void*>(fn), &typeid(F*)};
    return *this;
  }
};

template <typename F>
F* lookup(const char* name) {
  const auto it = op_table().find(name);
  TORCH_CHECK(it != op_table().end(), "shufflekern: backend 'emulated' has no kernel for ", name,
              ": the op has no CUDA kernel yet, so there is nothing to emulate");
  TORCH_CHECK(*it->second.type == typeid(F*), "shufflekern: emulated kernel of ", name,
              " was registered with another signature");
  return reinterpret_cast<F*>(it->second.fn);
}

// {kernel name: launches so far} of every emulated kernel (sk.testing.emulated_launches()).  Defined once, in
// an emulator TU (it needs emu.h); declared here so that csrc/shufflekern.cpp reaches it without emu.h.
std::map<std::string, int64_t> launch_counts();

// The emulator's memory-traffic model (csrc/emu/emu.h): record every launch from now on (sample_blocks > 0:
// run only that many blocks of a launch, evenly spread, and scale up), and hand over what was recorded:
// one {"kernel", "blocks", "blocks_run", "load_bytes", "store_bytes", "load_sectors", "store_sectors"} a launch.
void set_traffic(bool on, int64_t sample_blocks);
std::vector<std::map<std::string, std::string>> traffic_log();

// Names of the ops with emulated (CUDA) kernels.
inline std::string op_names() {
  std::string out;
  for (const auto& kv : op_table()) out += (out.empty() ? "" : " ") + kv.first;
  return out;
}

}  // namespace shufflekern::emurt
