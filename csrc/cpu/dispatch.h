// CPU-capability dispatch for the kernels in csrc/cpu/vec/.
//
// Each file in csrc/cpu/vec/ is compiled once per ISA (DEFAULT, AVX2, AVX512 on x86-64) by the wrapper
// sources that setup.py generates; those wrappers set CPU_CAPABILITY so that at::vec::Vectorized<T> picks
// the matching implementation, exactly as ATen's own kernels do.  Every compiled variant stores its
// function pointer in a KernelTable slot; the op picks the best slot the running CPU supports, honouring
// ATen's ATEN_CPU_CAPABILITY override (so `ATEN_CPU_CAPABILITY=default` tests the portable path).
#pragma once
#include <array>
#include <string>

#include <c10/util/Exception.h>

namespace shufflekern::cpu {

enum Isa : int { kDefault = 0, kAVX2 = 1, kAVX512 = 2, kNumIsa = 3 };

// The ISA ATen dispatches to on this machine (reads at::get_cpu_capability() once).
int runtime_isa();
const char* isa_name(int isa);
// Names of the variants compiled into this build, e.g. "DEFAULT AVX2 AVX512".
std::string compiled_isas();
void note_compiled_isa(int isa);

template <typename Fn>
struct KernelTable {
  const char* name;
  std::array<Fn, kNumIsa> fns{};

  Fn get() const {
    for (int isa = runtime_isa(); isa >= 0; --isa) {
      if (fns[isa] != nullptr) return fns[isa];
    }
    TORCH_CHECK(false, "shufflekern: no CPU kernel compiled for ", name);
  }
};

}  // namespace shufflekern::cpu

// In an op file: the table that the ISA variants fill.
#define SK_DEFINE_KERNEL_TABLE(table, fn_type) \
  ::shufflekern::cpu::KernelTable<fn_type> table{#table, {}}
#define SK_DECLARE_KERNEL_TABLE(table, fn_type) \
  extern ::shufflekern::cpu::KernelTable<fn_type> table

// In a csrc/cpu/vec/ file: fill this ISA's slot at load time.  The table is constant-initialised
// (an array of null pointers), so this dynamic initialiser may run before or after the op file's.
#define SK_REGISTER_KERNEL(table, fn)                                        \
  static const int table##_registered_ = [] {                                \
    table.fns[SK_ISA_INDEX] = fn;                                            \
    ::shufflekern::cpu::note_compiled_isa(SK_ISA_INDEX);                     \
    return 0;                                                                \
  }()
