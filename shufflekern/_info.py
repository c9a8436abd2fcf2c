"""sk.info(): what was compiled and which backends can run here."""
import importlib.metadata
import platform

import torch

from . import _C, _backend
from ._malloc import malloc_state


def _version(pkg):
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def info() -> dict:
    """Versions, compiled kernels (CPU ISAs, CUDA archs) and the backends usable now."""
    cuda_ok = torch.cuda.is_available()
    usable = {"cpu": f"C++ kernels ({_C.runtime_cpu_isa()})"}
    why = _backend.native_unusable_reason("cuda")
    usable["cuda (C++/CUDA)"] = ("yes" if cuda_ok else "compiled, but no GPU present") if why is None else f"no: {why}"
    why = _backend.triton_unusable_reason("cuda")
    usable["cuda (Triton)"] = ("yes" if cuda_ok else "no GPU present") if why is None else f"no: {why}"
    why = _backend.triton_unusable_reason("cpu")
    usable["cpu (Triton interpreter)"] = "yes (TRITON_INTERPRET=1)" if why is None else f"no: {why}"
    ops = _backend.emulated_ops()
    usable["cpu (emulated C++/CUDA)"] = (f"yes, slow (sk.backend('emulated')): {', '.join(ops)}" if ops
                                          else "no: no op has a C++/CUDA kernel")
    # The fused models' BatchNorm [+ residual] + ReLU: the op where the policy finds a backend, else eager.
    usable["bn_act (fused models)"] = ("shufflekern::batch_norm_act where a backend takes the input (see "
                                       "op_dtypes); otherwise torch's BatchNorm + add + ReLU (eager)")
    # ---- whole-unit inference ops (branch h-units) ----
    usable["unit ops (fused eval models)"] = (
        "shufflekern::unit_v2 / unit_v1 (one op a ShuffleNet unit) for float32/float64 CPU inputs in an eval "
        "model fused with BatchNorm folded, when no gradient is needed; other dtypes, CUDA tensors, train mode "
        "or autograd: the per-op fused path")
    usable["stem pool (fused models)"] = (
        "shufflekern::max_pool3x3s2 (no indices) for float32/float64 CPU input when no gradient is needed; "
        "otherwise nn.MaxPool2d (ATen)")
    usable["stem BatchNorm + ReLU + pool (fused models)"] = (
        "shufflekern::bn_relu_max_pool (one op, a 1-byte argmax, C++ autograd) for float32/float64 CPU input "
        "outside torch.compile, in training and evaluation (BatchNorm not folded), in sk's ShuffleNetV1/V2 "
        "models; with a hook (forward or backward) on the stem's modules, another dtype or device, another "
        "backend choice or under torch.compile: BatchNormReLU2d then the pool above")
    usable["v2 unit interleave (fused models)"] = (
        "shufflekern::interleave / deinterleave (the unit's concat + shuffle and its backward, one vectorised "
        "pass each) for CPU tensors; CUDA tensors and torch.compile: torch.stack (eager ops)")
    # ---- end whole-unit inference ops ----
    return {
        "shufflekern": _version("shufflekern") or "source tree",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _version("triton"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if cuda_ok else None,
        "compiled_cpu_isas": _C.compiled_cpu_isas(),
        "runtime_cpu_isa": _C.runtime_cpu_isa(),
        "compiled_cuda": bool(_C.with_cuda),
        "cuda_archs": _C.cuda_archs() or None,
        "backend": _backend.get_backend(),
        "cpu_malloc": malloc_state()["detail"],
        "emulated_ops": list(_backend.emulated_ops()),
        "usable_backends": usable,
        "op_dtypes": _op_dtypes(),
    }


def _op_dtypes() -> dict:
    """{op: "native cpu: ...; native cuda / emulated: ...; triton: ..."}: what each kernel family takes."""
    names = _backend.describe
    return {op: f"native cpu: {names(s.cpu)}; native cuda, emulated: {names(s.cuda)}; triton: {names(s.triton)}"
            for op, s in ((op, _backend.OPS[op]) for op in _backend.forward_ops())}


def format_info(d: dict) -> str:
    lines = []
    for k, v in d.items():
        if isinstance(v, dict):
            lines.append(f"{k}:")
            lines += [f"  {kk:26s} {vv}" for kk, vv in v.items()]
        else:
            lines.append(f"{k:28s} {v}")
    return "\n".join(lines)
