"""The backend policy: which kernel family runs an op on an input, in one place.

A *backend* is a kernel family on a kind of device.  For each op and input (device type and dtype) every
backend says whether it can run it and, if not, why (`not_supported_reasons`, in the manner of xformers):

"native"   the compiled C++ kernels: the CPU kernels (always built) for CPU tensors, the C++/CUDA kernels for
           CUDA tensors (if they were built).  "cuda" is accepted as another name of it.
"triton"   the Triton twins (shufflekern::<op>_triton): CUDA tensors, or CPU tensors under TRITON_INTERPRET=1.
"emulated" the C++/CUDA kernels on CPU tensors, run by the project's emulator of the CUDA execution model
           (csrc/emu/; slow, for tests: this is how CI runs the CUDA kernels).  Entering it switches the
           compiled ops' CPU registrations to the emulator (_C.emu_set_enabled), so direct
           torch.ops.shufflekern.* calls and the backward ops run there too.
"auto"     not a backend but the choice of the first that can run the input: native, then (CUDA tensors
           only) triton.  Never emulated.

A forced backend that cannot run an input raises, with its reasons (TypeError when only the dtype is the
problem, else RuntimeError); "auto" raises only when no backend can, with every backend's reasons.

The choice is process-wide (not per thread): `with sk.backend("triton"): ...`, sk.set_backend(name) or the
environment variable SHUFFLEKERN_BACKEND.

What each kernel family takes is declared with the op's registration (shufflekern/ops.py, an OpSpec in
OPS), so adding an op does not touch this file.  The C++ entry points and the Triton twins' entry refuse
other dtypes too, for direct torch.ops.shufflekern.* calls.
"""
import contextlib
import importlib.util
import os
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch

from . import _C

BACKENDS = ("auto", "native", "cuda", "triton", "emulated")
NATIVE_NAMES = ("native", "cuda")

# Read once: TRITON_INTERPRET must be set before Triton kernels are defined, so a later change of the
# environment would not take effect anyway.
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# --------------------------------------------------------------------------------------------------
# What each kernel family takes, per op: declared by the op where it is registered (shufflekern/ops.py),
# as an xformers operator declares its supported dtypes; the rules below only read it.
# --------------------------------------------------------------------------------------------------
ANY = None  # every dtype


class DtypeRule(NamedTuple):
    """dtypes given by a rule rather than a list (e.g. every dtype but complex)."""
    name: str
    accepts: Callable[[torch.dtype], bool]


NOT_COMPLEX = DtypeRule("any dtype but complex", lambda d: not d.is_complex)


class OpSpec(NamedTuple):
    arg: str                  # the argument whose dtype decides (messages name it)
    cpu: Optional[tuple]      # dtypes of the C++ CPU kernel (ANY: all; or a DtypeRule)
    cuda: Optional[tuple]     # dtypes of the C++/CUDA kernel (also what the emulated backend runs)
    triton: Optional[tuple]   # dtypes of the Triton twin


OPS: Dict[str, OpSpec] = {}  # op name -> OpSpec, filled by shufflekern/ops.py


def _dtype_name(d):
    return str(d).replace("torch.", "")


class DtypeReason(str):
    """A reason that is about the dtype only (another dtype would run): TypeError, and an eager fallback may
    take over (select_or_none)."""


def describe(dtypes) -> str:
    if dtypes is ANY:
        return "any dtype"
    if isinstance(dtypes, DtypeRule):
        return dtypes.name
    return ", ".join(_dtype_name(d) for d in dtypes)


def _dtype_reason(backend, kernels, spec, dtypes, dtype):
    if dtypes is ANY or dtype is None:
        return None
    if dtypes.accepts(dtype) if isinstance(dtypes, DtypeRule) else dtype in dtypes:
        return None
    return DtypeReason(f"the {backend} backend ({kernels}) takes {spec.arg} of dtype {describe(dtypes)}, "
                       f"got {_dtype_name(dtype)}")


# --------------------------------------------------------------------------------------------------
# Whether a backend can run at all on a device type (monkeypatched by tests)
# --------------------------------------------------------------------------------------------------

def triton_unusable_reason(device_type: str):
    """None if the Triton kernels can run tensors of this device type, else why not."""
    if not TRITON_INSTALLED:
        return "triton is not installed"
    if device_type == "cuda":
        return None
    if device_type == "cpu":
        return None if TRITON_INTERPRET else "Triton runs CPU tensors only under TRITON_INTERPRET=1"
    return f"Triton kernels do not run {device_type} tensors"


def native_unusable_reason(device_type: str):
    """None if the compiled C++ kernels can run tensors of this device type, else why not."""
    if device_type == "cpu":
        return None
    if device_type == "cuda":
        return None if _C.with_cuda else "shufflekern was built without CUDA kernels (SHUFFLEKERN_CUDA=0 or no nvcc)"
    return f"no shufflekern kernels for {device_type} tensors"


def emulated_ops():
    """Names of the ops that have C++/CUDA kernels, i.e. that the emulated backend can run."""
    return tuple(_C.emu_ops())


def emulated_unusable_reason(op: str, device_type: str):
    """None if the emulated backend can run `op` on tensors of this device type, else why not."""
    if device_type != "cpu":
        return (f"the emulated backend runs the CUDA kernels on CPU tensors only (the emulator executes them on "
                f"the host), got {device_type} tensors")
    if op not in emulated_ops():
        return f"{op} has no C++/CUDA kernel yet, so there is nothing to emulate"
    return None


# --------------------------------------------------------------------------------------------------
# The backends
# --------------------------------------------------------------------------------------------------

def _spec(op):
    return OPS.get(op) or OpSpec("x", ANY, ANY, ANY)  # an op without an entry: only device reasons


def not_supported_reasons(backend: str, op: str, device_type: str, dtype: Optional[torch.dtype] = None) -> List[str]:
    """Why `backend` cannot run `op` on tensors of this device type and dtype ([] if it can).  The device
    reason, if any, comes first; a dtype reason is the only one that names a dtype.  dtype None: any."""
    spec = _spec(op)
    if backend in NATIVE_NAMES:
        why = native_unusable_reason(device_type)
        if why is not None:
            return [why]
        kernels = "C++ CPU kernel" if device_type == "cpu" else "C++/CUDA kernel"
        why = _dtype_reason("native", kernels, spec, spec.cpu if device_type == "cpu" else spec.cuda, dtype)
    elif backend == "triton":
        why = triton_unusable_reason(device_type)
        if why is not None:
            return [why]
        why = _dtype_reason("triton", "Triton kernel", spec, spec.triton, dtype)
    elif backend == "emulated":
        why = emulated_unusable_reason(op, device_type)
        if why is not None:
            return [why]
        why = _dtype_reason("emulated", "C++/CUDA kernel under the emulator", spec, spec.cuda, dtype)
    else:
        raise ValueError(f"backend must be one of {BACKENDS[1:]}, got {backend!r}")
    return [] if why is None else [why]


def candidates(name: str, device_type: str) -> Tuple[str, ...]:
    """The backends that backend choice `name` tries, in order."""
    if name == "auto":
        return ("native", "triton") if device_type == "cuda" else ("native",)
    return ("native",) if name in NATIVE_NAMES else (name,)


def _overload(backend, op):
    return getattr(torch.ops.shufflekern, op + ("_triton" if backend == "triton" else "")).default


# --------------------------------------------------------------------------------------------------
# The choice
# --------------------------------------------------------------------------------------------------

def _check_name(name):
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


_state = {"backend": "auto"}


def _apply(name):
    """Make `name` the backend; the C++ side's emulator switch follows it."""
    _state["backend"] = name
    _C.emu_set_enabled(name == "emulated")


def get_backend() -> str:
    return _state["backend"]


def set_backend(name: str) -> None:
    _apply(_check_name(name))


@contextlib.contextmanager
def backend(name: str):
    """Run the ops in this block on backend `name` ("auto", "native" (alias "cuda"), "triton" or "emulated")."""
    previous = _state["backend"]
    _apply(_check_name(name))
    try:
        yield
    finally:
        _apply(previous)


_apply(_check_name(os.environ.get("SHUFFLEKERN_BACKEND", "auto").lower() or "auto"))


def _decide(op, name, dev, dtype):
    """(overload, None) for the first backend of choice `name` that can run the input, else
    (None, (exception type, message, whether only dtypes stood in the way))."""
    tried = {}
    for b in candidates(name, dev):
        why = not_supported_reasons(b, op, dev, dtype)
        if not why:
            return _overload(b, op), None
        tried[b] = why
    only_dtype = all(isinstance(w[0], DtypeReason) for w in tried.values())
    reasons = "; ".join(f"{b}: {', '.join(w)}" for b, w in tried.items())
    if name == "auto":
        what = f"{dev} tensors" + ("" if dtype is None else f" of dtype {_dtype_name(dtype)}")
        msg = f"shufflekern.{op}: no usable backend for {what}: {reasons}"
    else:
        msg = f"shufflekern.{op}: backend '{name}' cannot run it: {reasons}"
    return None, (TypeError if only_dtype else RuntimeError, msg, only_dtype)


def _select(op, name, dev, dtype=None):
    fn, err = _decide(op, name, dev, dtype)
    if err is not None:
        raise err[0](err[1])
    return fn


_auto_cpu = {}


def select(op: str, device: torch.device, dtype: Optional[torch.dtype] = None):
    """The op overload (compiled op or Triton twin) that runs `op` on tensors of this device (and dtype)
    now, or an error naming every reason.  The common case, "auto" on CPU tensors, is memoised: a ShuffleNet
    forward asks dozens of times a step, for ~0.1 ms ops."""
    name, dev = _state["backend"], device.type
    if name == "auto" and dev == "cpu":
        fn = _auto_cpu.get((op, dtype))
        if fn is None:
            fn = _auto_cpu[(op, dtype)] = _select(op, name, dev, dtype)
        return fn
    return _select(op, name, dev, dtype)


def select_or_none(op: str, device: torch.device, dtype: torch.dtype):
    """select() for callers with an eager fallback (the fused models' batch_norm_act): None where the
    chosen backend(s) do not take this dtype; still an error where a forced backend cannot run on this
    device at all."""
    name, dev = _state["backend"], device.type
    if name == "auto" and dev == "cpu":
        key = (op, dtype, "or_none")
        if key in _auto_cpu:
            return _auto_cpu[key]
    fn, err = _decide(op, name, dev, dtype)
    if err is not None and not err[2] and name != "auto":
        raise err[0](err[1])
    if name == "auto" and dev == "cpu":
        _auto_cpu[key] = fn
    return fn


def require(backend: str, op: str, device_type: str, dtype: Optional[torch.dtype]) -> None:
    """Raise unless `backend` can run `op` on this input (the Triton twins' entry calls it, so that a direct
    torch.ops.shufflekern.<op>_triton call is refused as clearly as a forced backend)."""
    why = not_supported_reasons(backend, op, device_type, dtype)
    if why:
        exc = TypeError if isinstance(why[0], DtypeReason) else RuntimeError
        raise exc(f"shufflekern.{op}: backend '{backend}' cannot run it: {'; '.join(why)}")


def forward_ops() -> Tuple[str, ...]:
    """The ops of OPS without their backward ops."""
    return tuple(op for op in OPS if not op.endswith(("_grad_input", "_grad_weight", "_backward")))


def report(device_type: str, dtype: Optional[torch.dtype] = None) -> Dict[str, Dict[str, str]]:
    """{op: {backend: "yes" or the reasons}} for tensors of this device type (and dtype)."""
    return {op: {b: "; ".join(not_supported_reasons(b, op, device_type, dtype)) or "yes"
                 for b in ("native", "triton", "emulated")} for op in forward_ops()}
