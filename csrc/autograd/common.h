// Helpers of the C++ autograd kernels (csrc/autograd/<op>.cpp).
//
// The compiled ops register their derivatives here, on the Autograd dispatch key, rather than from Python
// (torch.library.register_autograd): a Python autograd kernel costs every call a trip through the
// interpreter (~10-20 us), as much as a whole channel shuffle of a ShuffleNet activation.  The Triton twins
// keep their Python formulas in shufflekern/ops.py; both sides state the same derivatives.
#pragma once
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/autograd.h>

namespace shufflekern::autograd {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The typed handle of shufflekern::<name>, called through the dispatcher (so that a backward called
// under create_graph is itself recorded, and the forward, under AutoDispatchBelowADInplaceOrView, reaches
// the CPU / CUDA / Fake kernel).
template <typename Sig>
c10::TypedOperatorHandle<Sig> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

// True when `t` is a plain tensor computed eagerly: no torch.compile / make_fx / FakeTensor tracing is
// looking, so a value-dependent shortcut does not get baked into a traced graph.
inline bool is_eager_value(const at::Tensor& t) {
  return c10::impl::TorchDispatchModeTLS::stack_len() == 0 && !t.unsafeGetTensorImpl()->is_python_dispatch() &&
         !t.key_set().has(c10::DispatchKey::Functionalize) && t.has_storage();
}

// A size that the derivative needs as an int (specialises a symbolic size, as the Python formula did).
inline int64_t int_size(const at::Tensor& t, int64_t dim) {
  return t.sym_size(dim).guard_int(__FILE__, __LINE__);
}

}  // namespace shufflekern::autograd
