"""Pieces shared by the ShuffleNet models: the eager shuffle, BatchNorm folding, channel permutations."""
import torch
from torch import nn


def eager_channel_shuffle(x, groups):
    """`torch.channel_shuffle(x, groups)` written with view/transpose/reshape (plain ops that every
    exporter knows).  Done on the NHWC view for a channels_last x so that the result stays channels_last
    with one copy (torchvision's version turns a channels_last x into an NCHW one)."""
    n, c, h, w = x.shape
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        y = x.permute(0, 2, 3, 1).reshape(n, h, w, groups, c // groups).transpose(3, 4)
        return y.reshape(n, h, w, c).permute(0, 3, 1, 2)
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def shuffle_index(channels, groups, device=None):
    """Index `i` with `channel_shuffle(x, groups) == x[:, i]`: i[k] = (k % groups) * (C / groups) + k // groups."""
    k = torch.arange(channels, device=device)
    return (k % groups) * (channels // groups) + k // groups


def inverse_index(index):
    inv = torch.empty_like(index)
    inv[index] = torch.arange(index.numel(), device=index.device)
    return inv


def is_bn(m):
    return isinstance(m, nn.BatchNorm2d)


@torch.no_grad()
def fold_bn(conv, bn):
    """Return a copy of `conv` (nn.Conv2d or anything with .weight [C_out, ...] and optional .bias) with
    the eval-mode BatchNorm `bn` folded in: w' = w * s, b' = (b - mean) * s + beta, s = gamma / sqrt(var + eps)."""
    import copy
    out = copy.deepcopy(conv)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else torch.rsqrt(bn.running_var + bn.eps)
    shift = bn.bias if bn.affine else torch.zeros_like(scale)
    b = conv.bias if conv.bias is not None else torch.zeros_like(scale)
    out.weight = nn.Parameter(conv.weight * scale.reshape(-1, *([1] * (conv.weight.dim() - 1))))
    out.bias = nn.Parameter((b - bn.running_mean) * scale + shift)
    return out


def give_bias(conv):
    """Give a bias-free conv a (zero) bias parameter in place, so that a folded state_dict loads into it."""
    if conv.bias is None:
        conv.bias = nn.Parameter(torch.zeros(conv.weight.shape[0], dtype=conv.weight.dtype,
                                             device=conv.weight.device))
    return conv


class DenseGrad(torch.autograd.Function):
    """Identity whose backward hands on the gradient densely in x's memory format.  A slice of a cat's
    gradient (a channel slice: strided) would otherwise send the ReLU and BatchNorm backward kernels
    down their slow non-contiguous paths, which cost far more than this one copy."""

    @staticmethod
    def forward(ctx, x):
        ctx.fmt = torch.channels_last if x.dim() == 4 and x.stride(1) == 1 and x.stride(3) != 1 \
            else torch.contiguous_format
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g.contiguous(memory_format=ctx.fmt)
