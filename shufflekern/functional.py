"""Functional API: validates arguments, picks the backend, calls the registered op."""
from typing import Optional

from torch import Tensor

from . import ops  # noqa: F401  (registers fake kernels and autograd)
from ._backend import select
from ._validate import check_channel_shuffle, check_int, check_shuffle_conv1x1

__all__ = ["channel_shuffle", "shuffle_conv1x1"]


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """`torch.channel_shuffle(x, groups)` for a 4-D x in either memory format, differentiable.

    The output keeps x's memory format (x.suggest_memory_format()).  The backward is the inverse
    shuffle (groups' = C / groups).
    """
    check_channel_shuffle(x, groups)
    return select("channel_shuffle", x.device)(x, groups)


def shuffle_conv1x1(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, groups: int = 1,
                    shuffle_groups: Optional[int] = None) -> Tensor:
    """`F.conv2d(torch.channel_shuffle(x, sg), weight, bias, groups=groups)` in one kernel, differentiable.

    `sg = groups if shuffle_groups is None else shuffle_groups`; weight is `[C_out, C_in/groups, 1, 1]`
    (stride 1, no padding).  The shuffle is folded into the convolution's indexing: no shuffled copy of x
    is made.  The output keeps x's memory format (x.suggest_memory_format()).  CPU: float32, float64,
    bfloat16; CUDA: float32, float16, bfloat16 (accumulation in float32 for the 16-bit types).
    """
    check_int("shuffle_conv1x1", "groups", groups, 1)
    sg = groups if shuffle_groups is None else shuffle_groups
    check_shuffle_conv1x1(x, weight, bias, groups, sg)
    return select("shuffle_conv1x1", x.device)(x, weight, bias, groups, sg)
