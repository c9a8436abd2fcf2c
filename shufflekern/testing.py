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
    """Point torch.compile's on-disk cache (TORCHINDUCTOR_CACHE_DIR) at a directory named after
    ATEN_CPU_CAPABILITY (`..._isa_default` without it), unless a cache directory was chosen; returns the
    directory in use.  Inductor's C++ code generation follows ATEN_CPU_CAPABILITY but its cache keys do not:
    here (torch 2.14, Zen 4) a plain-torch function compiled under ATEN_CPU_CAPABILITY=avx2 and rerun without it
    (or the reverse) returned wrong values from the shared cache, and once corrupted the heap.  So a process
    that compiles under one capability must not share the cache with one under another, in either direction:
    the tests' conftest and the bench call this before their first torch.compile."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        cap = os.environ.get("ATEN_CPU_CAPABILITY", "") or "default"
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no login name (a container without a passwd entry)
            user = "user"
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"torchinductor_{user}_isa_{cap}")
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]
