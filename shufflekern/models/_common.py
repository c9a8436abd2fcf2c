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


def _bn_kernel_applies(bn, x, residual):
    """shufflekern::batch_norm_act takes CPU float32/float64 4-D tensors whose BatchNorm parameters and
    statistics have the same dtype; anything else runs the eager composition."""
    same = all(t is None or t.dtype == x.dtype for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var))
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.dim() == 4 and same
            and (residual is None or (residual.dtype == x.dtype and residual.shape == x.shape)))


def bn_act(bn, x, residual=None, relu=True):
    """`relu(bn(x) + residual)` (no `+ residual` when it is None, no ReLU when relu=False), with nn.BatchNorm2d's
    semantics (batch statistics and running-statistics update in training, running statistics in eval).

    CPU float32/float64: one shufflekern::batch_norm_act call (fewer passes over memory than BatchNorm, add
    and ReLU one after the other; see csrc/cpu/vec/batch_norm_act.cpp).  Otherwise, and when `bn` is not a
    BatchNorm2d (e.g. nn.Identity after BN folding), the eager ops, which may overwrite `x` (callers pass a
    fresh convolution output)."""
    # Exact types only: a BatchNorm2d subclass (e.g. the trainer's DistBatchNorm2d) has its own forward.
    if type(bn) not in (nn.BatchNorm2d, BatchNormReLU2d) or not _bn_kernel_applies(bn, x, residual):
        y = nn.BatchNorm2d.forward(bn, x) if type(bn) is BatchNormReLU2d else bn(x)
        if residual is not None:
            y = y.add_(residual)
        return y.relu_() if relu else y
    training = bn.training or (bn.running_mean is None and bn.running_var is None)
    n = x.numel() // x.shape[1]
    if bn.training and n <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
    update = bn.training and bn.running_mean is not None
    if update and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
    y, mean, var = torch.ops.shufflekern.batch_norm_act(
        x, bn.weight, bn.bias, residual, None if training else bn.running_mean,
        None if training else bn.running_var, training, bn.eps, relu)
    if update:
        f = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        with torch.no_grad():
            bn.running_mean.mul_(1 - f).add_(mean, alpha=f)
            bn.running_var.mul_(1 - f).add_(var, alpha=f * n / (n - 1))
    return y


class BatchNormReLU2d(nn.BatchNorm2d):
    """nn.BatchNorm2d followed by ReLU, in one op where `bn_act` has a kernel (same parameters, buffers and
    state_dict as the BatchNorm2d it replaces).  `sk.fuse` puts it in place of a Sequential's BatchNorm2d
    and turns the ReLU after it into a `ReLUInBatchNorm` placeholder; `sk.unfuse` reverts both."""

    def forward(self, x):
        self._check_input_dim(x)
        return bn_act(self, x, relu=True)

    @classmethod
    def from_bn(cls, bn):
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        p = next(iter(bn.state_dict().values()), None)
        if p is not None:
            new.to(device=p.device, dtype=p.dtype)
        new.load_state_dict(bn.state_dict())
        return new.train(bn.training)

    def to_bn(self):
        bn = nn.BatchNorm2d(self.num_features, self.eps, self.momentum, self.affine, self.track_running_stats)
        p = next(iter(self.state_dict().values()), None)
        if p is not None:
            bn.to(device=p.device, dtype=p.dtype)
        bn.load_state_dict(self.state_dict())
        return bn.train(self.training)


class ReLUInBatchNorm(nn.Identity):
    """Where a ReLU was before `sk.fuse` moved it into the BatchNormReLU2d before it (`inplace` kept for unfuse)."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def extra_repr(self):
        return "applied by the BatchNormReLU2d before it"
