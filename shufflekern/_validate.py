"""Argument checks shared by the functional wrappers, the fake kernels and the Triton launchers.

Each message names the argument and what was expected.  The C++ entry points check the same
conditions again (csrc/cpu/checks.h), so direct torch.ops.shufflekern.* calls are safe too.
"""
import torch
from torch._prims_common import suggest_memory_format

__all__ = ["suggest_memory_format", "check_tensor", "check_int", "check_channel_shuffle"]


def check_tensor(op, name, t, dims=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if dims is not None and t.dim() not in (dims if isinstance(dims, tuple) else (dims,)):
        raise ValueError(f"{op}: {name} must be {dims}-D, got {t.dim()}-D with shape {tuple(t.shape)}")


def check_int(op, name, v, minimum=None):
    # SymInt: under torch.compile with dynamic shapes a derived size (e.g. C // groups) is symbolic.
    if isinstance(v, bool) or not isinstance(v, (int, torch.SymInt)):
        raise TypeError(f"{op}: {name} must be an int, got {type(v).__name__}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {v}")


def check_channel_shuffle(x, groups, op="channel_shuffle"):
    check_tensor(op, "x", x, 4)
    check_int(op, "groups", groups, 1)
    if x.shape[1] % groups != 0:
        raise ValueError(f"{op}: channels of x ({x.shape[1]}) must be divisible by groups ({groups})")
