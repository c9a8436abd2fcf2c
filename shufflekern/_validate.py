"""Argument checks shared by the functional wrappers, the fake kernels and the Triton launchers.

Each message names the argument and what was expected.  The C++ entry points check the same
conditions again (csrc/cpu/checks.h), so direct torch.ops.shufflekern.* calls are safe too.
"""
import torch
from torch._prims_common import suggest_memory_format

__all__ = ["suggest_memory_format", "check_tensor", "check_int", "check_channel_shuffle", "check_shuffle_conv1x1",
           "check_shuffle_conv1x1_grad_input", "check_shuffle_conv1x1_grad_weight"]


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


def check_shuffle_conv1x1(x, weight, bias, groups, shuffle_groups, op="shuffle_conv1x1"):
    """conv2d(channel_shuffle(x, shuffle_groups), weight, bias, groups=groups) with a 1x1 weight."""
    check_tensor(op, "x", x, 4)
    check_tensor(op, "weight", weight)
    check_int(op, "groups", groups, 1)
    check_int(op, "shuffle_groups", shuffle_groups, 1)
    c = x.shape[1]
    if c % groups != 0:
        raise ValueError(f"{op}: channels of x ({c}) must be divisible by groups ({groups})")
    if c % shuffle_groups != 0:
        raise ValueError(f"{op}: channels of x ({c}) must be divisible by shuffle_groups ({shuffle_groups})")
    if not x.is_floating_point():
        raise TypeError(f"{op}: x must be a floating-point tensor, got {x.dtype}")
    if weight.dtype != x.dtype:
        raise TypeError(f"{op}: weight must have the dtype of x ({x.dtype}), got {weight.dtype}")
    if weight.device != x.device:
        raise ValueError(f"{op}: weight must be on the device of x ({x.device}), got {weight.device}")
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (1, 1):
        raise ValueError(f"{op}: weight must be [C_out, C_in/groups, 1, 1] (a 1x1 kernel), got shape "
                         f"{tuple(weight.shape)}")
    if weight.shape[1] * groups != c:
        raise ValueError(f"{op}: weight must be [C_out, C_in/groups, 1, 1] = [C_out, {c // groups}, 1, 1], got "
                         f"shape {tuple(weight.shape)}")
    if weight.shape[0] % groups != 0:
        raise ValueError(f"{op}: out channels (weight.shape[0] = {weight.shape[0]}) must be divisible by groups "
                         f"({groups})")
    if bias is not None:
        check_tensor(op, "bias", bias)
        if bias.dtype != x.dtype:
            raise TypeError(f"{op}: bias must have the dtype of x ({x.dtype}), got {bias.dtype}")
        if bias.device != x.device:
            raise ValueError(f"{op}: bias must be on the device of x ({x.device}), got {bias.device}")
        if bias.dim() != 1 or bias.shape[0] != weight.shape[0]:
            raise ValueError(f"{op}: bias must be 1-D of length C_out ({weight.shape[0]}), got shape "
                             f"{tuple(bias.shape)}")


def check_shuffle_conv1x1_grad_input(grad_out, weight, groups, shuffle_groups, op="shuffle_conv1x1_grad_input"):
    check_tensor(op, "grad_out", grad_out, 4)
    check_tensor(op, "weight", weight, 4)
    check_int(op, "groups", groups, 1)
    x_like = grad_out.new_empty((0, weight.shape[1] * groups, 1, 1))
    check_shuffle_conv1x1(x_like, weight, None, groups, shuffle_groups, op=op)
    if grad_out.shape[1] != weight.shape[0]:
        raise ValueError(f"{op}: grad_out must have C_out = weight.shape[0] = {weight.shape[0]} channels, got "
                         f"{grad_out.shape[1]}")


def check_shuffle_conv1x1_grad_weight(grad_out, x, groups, shuffle_groups, op="shuffle_conv1x1_grad_weight"):
    check_tensor(op, "grad_out", grad_out, 4)
    check_tensor(op, "x", x, 4)
    check_int(op, "groups", groups, 1)
    w_like = x.new_empty((grad_out.shape[1], x.shape[1] // groups, 1, 1))
    check_shuffle_conv1x1(x, w_like, None, groups, shuffle_groups, op=op)
    if grad_out.dtype != x.dtype or grad_out.device != x.device:
        raise TypeError(f"{op}: grad_out must have the dtype and device of x ({x.dtype}, {x.device}), got "
                        f"{grad_out.dtype}, {grad_out.device}")
    n, _, h, w = x.shape
    if (grad_out.shape[0], grad_out.shape[2], grad_out.shape[3]) != (n, h, w):
        raise ValueError(f"{op}: grad_out must be [N, C_out, H, W] with N, H, W of x {tuple(x.shape)}, got "
                         f"{tuple(grad_out.shape)}")
