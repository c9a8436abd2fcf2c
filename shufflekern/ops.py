"""Registration of the shufflekern ops with PyTorch: Triton twins, fake kernels and autograd.

Every op `shufflekern::<op>` has compiled kernels (CPU always, CUDA when built; schemas in
csrc/shufflekern.cpp) and a Triton twin `shufflekern::<op>_triton` defined here.  Both share one fake
kernel and one autograd formula, so the two backends cannot drift apart in shapes or derivatives.
The backward of an op calls the same backend family as its forward.
"""
import torch
from torch import Tensor

from . import _C  # noqa: F401  (loads the library: TORCH_LIBRARY(shufflekern) and the kernels)
from ._validate import check_channel_shuffle, suggest_memory_format

NATIVE, TRITON = "", "_triton"


def _op(name, family):
    return getattr(torch.ops.shufflekern, name + family)


def _register(name, fake, setup_context=None, backward_for=None):
    """Register `fake` (and, if given, the autograd formula built by `backward_for(family)`) for
    shufflekern::<name> and its Triton twin."""
    for family in (NATIVE, TRITON):
        qualname = f"shufflekern::{name}{family}"
        torch.library.register_fake(qualname)(fake)
        if backward_for is not None:
            torch.library.register_autograd(qualname, backward_for(family), setup_context=setup_context)


# --------------------------------------------------------------------------------------------------
# channel_shuffle
# --------------------------------------------------------------------------------------------------

@torch.library.custom_op("shufflekern::channel_shuffle_triton", mutates_args=())
def _channel_shuffle_triton(x: Tensor, groups: int) -> Tensor:
    from .triton.channel_shuffle import channel_shuffle
    return channel_shuffle(x, groups)


def _channel_shuffle_fake(x, groups):
    check_channel_shuffle(x, groups)
    return torch.empty_like(x, memory_format=suggest_memory_format(x))


def _channel_shuffle_setup(ctx, inputs, output):
    x, groups = inputs
    ctx.inverse_groups = x.shape[1] // groups


def _channel_shuffle_backward_for(family):
    # The inverse of a shuffle with g groups on C channels is the shuffle with C/g groups.
    def backward(ctx, grad):
        return _op("channel_shuffle", family)(grad, ctx.inverse_groups), None
    return backward


_register("channel_shuffle", _channel_shuffle_fake, _channel_shuffle_setup, _channel_shuffle_backward_for)
