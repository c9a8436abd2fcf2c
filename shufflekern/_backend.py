"""Backend selection: which kernel family runs an op.

"auto"     CPU tensors run the C++ CPU kernels; CUDA tensors run the C++/CUDA kernels if they were
           compiled, else the Triton kernels.
"native"   the compiled C++ kernels (CPU or CUDA by the tensor's device); fails if the CUDA kernels were not
           built.  "cuda" is accepted as another name of it.
"triton"   the Triton kernels: CUDA tensors, or CPU tensors under TRITON_INTERPRET=1 (the interpreter).
"emulated" the C++/CUDA kernels on CPU tensors, run by the project's emulator of the CUDA execution model
           (csrc/emu/; slow, for tests: this is how CI runs the CUDA kernels).  An op without a CUDA kernel
           raises, as does a non-CPU tensor.  Entering it switches the compiled ops' CPU registrations to the
           emulator (_C.emu_set_enabled), so direct torch.ops.shufflekern.* calls and the backward ops run
           there too.

The choice is process-wide (not per thread): `with sk.backend("triton"): ...`, sk.set_backend(name) or
the environment variable SHUFFLEKERN_BACKEND.  A forced backend that cannot run an input raises; "auto"
never picks a backend that cannot.
"""
import contextlib
import importlib.util
import os

import torch

from . import _C

BACKENDS = ("auto", "native", "cuda", "triton", "emulated")
NATIVE_NAMES = ("native", "cuda")

# Read once: TRITON_INTERPRET must be set before Triton kernels are defined, so a later change of the
# environment would not take effect anyway.
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


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


_cpu_native = {}


def select(op: str, device: torch.device):
    """The op overload (native or Triton twin) that runs `op` on `device` now.  The common case, "auto" on
    CPU tensors (always the compiled C++ kernels), is memoised: a ShuffleNet forward asks dozens of times,
    for ~0.1 ms ops."""
    name, dev = _state["backend"], device.type
    if name == "auto" and dev == "cpu":
        fn = _cpu_native.get(op)
        if fn is None:
            fn = _cpu_native[op] = _select(op, name, dev).default
        return fn
    return _select(op, name, dev).default


def _select(op, name, dev):
    if name == "emulated":
        why = emulated_unusable_reason(op, dev)
        if why is not None:
            raise RuntimeError(f"shufflekern.{op}: backend 'emulated' cannot run it: {why}")
        return getattr(torch.ops.shufflekern, op)  # its CPU registration routes to the emulator
    if name == "triton":
        why = triton_unusable_reason(dev)
        if why is not None:
            raise RuntimeError(f"shufflekern.{op}: backend 'triton' was forced but cannot run: {why}")
        return getattr(torch.ops.shufflekern, op + "_triton")
    why = native_unusable_reason(dev)
    if why is None:
        return getattr(torch.ops.shufflekern, op)
    if name == "auto" and dev == "cuda" and triton_unusable_reason(dev) is None:
        return getattr(torch.ops.shufflekern, op + "_triton")
    raise RuntimeError(f"shufflekern.{op}: no usable backend for {dev} tensors: {why}")
