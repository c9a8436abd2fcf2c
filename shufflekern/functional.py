"""Functional API: validates arguments, picks the backend, calls the registered op."""
from torch import Tensor

from . import ops  # noqa: F401  (registers fake kernels and autograd)
from ._backend import select
from ._validate import check_channel_shuffle

__all__ = ["channel_shuffle"]


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """`torch.channel_shuffle(x, groups)` for a 4-D x in either memory format, differentiable.

    The output keeps x's memory format (x.suggest_memory_format()).  The backward is the inverse
    shuffle (groups' = C / groups).
    """
    check_channel_shuffle(x, groups)
    return select("channel_shuffle", x.device)(x, groups)
