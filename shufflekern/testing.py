"""Helpers for tests of code that runs on shufflekern (sk.testing)."""
import getpass
import os
import tempfile

from . import _C

__all__ = ["emulated_launches", "isolate_inductor_cache_per_isa"]


def emulated_launches() -> dict:
    """`{kernel name: launches so far}` of the CUDA kernels run under sk.backend("emulated") in this process
    (kernel names as in csrc/cuda/*.cu, e.g. "_kd_loss_kernel"; template arguments are not told apart)."""
    return dict(_C.emu_launches())


def isolate_inductor_cache_per_isa() -> str:
    """Point torch.compile's on-disk cache (TORCHINDUCTOR_CACHE_DIR) at a directory of its own when
    ATEN_CPU_CAPABILITY is set and no cache directory was chosen; returns the directory in use ('' for the
    default).  Inductor's C++ code generation follows ATEN_CPU_CAPABILITY but its cache keys do not: here
    (torch 2.14, Zen 4), a plain-torch function compiled under the default AVX-512 and rerun under
    ATEN_CPU_CAPABILITY=avx2 returned wrong values from the cached kernels, and the reverse order once
    corrupted the heap.  Call it before the first torch.compile (the tests' conftest and the bench do)."""
    cap = os.environ.get("ATEN_CPU_CAPABILITY", "")
    if cap and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(
            tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}_isa_{cap}")
    return os.environ.get("TORCHINDUCTOR_CACHE_DIR", "")
