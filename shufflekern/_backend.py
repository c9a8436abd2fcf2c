"""Backend selection: which kernel family runs an op.

"auto"   CPU tensors run the C++ CPU kernels; CUDA tensors run the C++/CUDA kernels if they were compiled,
         else the Triton kernels.
"cuda"   the C++ kernels (CPU or CUDA by the tensor's device); fails if the CUDA kernels were not built.
"triton" the Triton kernels: CUDA tensors, or CPU tensors under TRITON_INTERPRET=1 (the interpreter).

The choice is process-wide (not per thread): `with sk.backend("triton"): ...`, sk.set_backend(name) or
the environment variable SHUFFLEKERN_BACKEND.  A forced backend that cannot run an input raises; "auto"
never picks a backend that cannot.
"""
import contextlib
import importlib.util
import os

import torch

from . import _C

BACKENDS = ("auto", "cuda", "triton")

# Read once: TRITON_INTERPRET must be set before Triton kernels are defined, so a later change of the
# environment would not take effect anyway.
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _check_name(name):
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


_state = {"backend": _check_name(os.environ.get("SHUFFLEKERN_BACKEND", "auto").lower() or "auto")}


def get_backend() -> str:
    return _state["backend"]


def set_backend(name: str) -> None:
    _state["backend"] = _check_name(name)


@contextlib.contextmanager
def backend(name: str):
    """Run the ops in this block on backend `name` ("auto", "cuda" or "triton")."""
    previous = _state["backend"]
    _state["backend"] = _check_name(name)
    try:
        yield
    finally:
        _state["backend"] = previous


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
