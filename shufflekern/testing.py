"""Helpers for tests of code that runs on shufflekern (sk.testing)."""
from . import _C

__all__ = ["emulated_launches"]


def emulated_launches() -> dict:
    """`{kernel name: launches so far}` of the CUDA kernels run under sk.backend("emulated") in this process
    (kernel names as in csrc/cuda/*.cu, e.g. "_kd_loss_kernel"; template arguments are not told apart)."""
    return dict(_C.emu_launches())
