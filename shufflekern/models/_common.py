"""Pieces shared by the ShuffleNet models: the eager shuffle, BatchNorm folding, channel permutations,
BatchNorm [+ residual] + ReLU in one op."""
import torch
from torch import nn
from torch.nn.modules.utils import _pair

from .. import _backend


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


def _bn_op(bn, x, residual):
    """The batch_norm_act overload the backend policy picks for these tensors (shufflekern/_backend.py: the
    C++ CPU kernel for float32/float64 CPU tensors, the C++/CUDA kernel, then the Triton twin, on CUDA
    tensors; the forced backend's kernel otherwise), or None where no backend of the current choice takes the
    input (then the eager composition runs).  BatchNorm parameters and statistics must have x's dtype."""
    if x.dim() != 4 or x.numel() == 0 or not all(t is None or t.dtype == x.dtype
                               for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var)):
        return None
    if residual is not None and (residual.dtype != x.dtype or residual.shape != x.shape):
        return None
    return _backend.select_or_none("batch_norm_act", x.device, x.dtype)


def bn_act(bn, x, residual=None, relu=True, perm=None, inv=None):
    """`relu(bn(x) + residual)` (no `+ residual` when it is None, no ReLU when relu=False), with nn.BatchNorm2d's
    semantics (batch statistics and running-statistics update in training, running statistics in eval).

    perm / inv: x's channels are `bn`'s channels in the order `perm` (x channel j is bn channel perm[j];
    inv is perm's inverse).  The fused V1 unit runs BatchNorms on unshuffled activations while the module
    keeps its parameters in the canonical (eager) order: the few per-channel parameters are gathered on
    the fly and the running statistics scattered back.

    One shufflekern::batch_norm_act call where there is a kernel for it (see _bn_op; fewer passes over
    memory than BatchNorm, add and ReLU one after the other: csrc/cpu/vec/batch_norm_act.cpp).  Otherwise,
    and when `bn` is not exactly a BatchNorm2d (e.g. nn.Identity after BN folding), the eager ops, which
    may overwrite `x` (callers pass a fresh convolution output)."""
    # Exact types only: a BatchNorm2d subclass (e.g. the trainer's DistBatchNorm2d) has its own forward.
    op = _bn_op(bn, x, residual) if type(bn) in (nn.BatchNorm2d, BatchNormReLU2d) else None
    if op is None:
        if perm is not None and not isinstance(bn, nn.Identity):
            # Rare path (odd dtype, a BatchNorm subclass): run the module on x in its own channel order.
            y = bn_act(bn, x.index_select(1, inv), relu=False).index_select(1, perm)
        else:
            y = nn.BatchNorm2d.forward(bn, x) if type(bn) is BatchNormReLU2d else bn(x)
        if residual is not None:
            y = y.add_(residual)
        return y.relu_() if relu else y
    training, n, update = _bn_step(bn, x)

    def take(t):
        return t if t is None or perm is None else t.index_select(0, perm)

    y, mean, var = op(
        x, take(bn.weight), take(bn.bias), residual, None if training else take(bn.running_mean),
        None if training else take(bn.running_var), training, bn.eps, relu)
    if update:
        if perm is not None:
            mean, var = mean.index_select(0, inv), var.index_select(0, inv)
        _update_running(bn, mean, var, n)
    return y


def _bn_step(bn, x):
    """nn.BatchNorm2d's forward bookkeeping for x: (normalise with batch statistics?, values per channel,
    update the running statistics?); counts the batch in num_batches_tracked when it updates."""
    training = bn.training or (bn.running_mean is None and bn.running_var is None)
    n = x.numel() // x.shape[1]
    if bn.training and n <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
    update = bn.training and bn.running_mean is not None
    if update and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
    return training, n, update


def _update_running(bn, mean, var, n):
    """The running-statistics update of nn.BatchNorm2d from a batch's mean and biased variance over n values."""
    f = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    with torch.no_grad():
        bn.running_mean.mul_(1 - f).add_(mean, alpha=f)
        bn.running_var.mul_(1 - f).add_(var, alpha=f * n / (n - 1))


class BatchNormReLU2d(nn.BatchNorm2d):
    """nn.BatchNorm2d followed by ReLU, in one op where `bn_act` has a kernel (same parameters, buffers and
    state_dict as the BatchNorm2d it replaces).  `sk.fuse` puts it in place of a Sequential's BatchNorm2d
    and turns the ReLU after it into a `ReLUInBatchNorm` placeholder; `sk.unfuse` reverts both."""

    def forward(self, x):
        self._check_input_dim(x)
        return bn_act(self, x, relu=True)

    @classmethod
    def from_bn(cls, bn):
        return _convert_bn(bn, cls)

    def to_bn(self):
        return _convert_bn(self, nn.BatchNorm2d)


def _convert_bn(bn, cls):
    """A `cls` BatchNorm with `bn`'s configuration, state, mode and requires_grad flags."""
    new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    p = next(iter(bn.state_dict().values()), None)
    if p is not None:
        new.to(device=p.device, dtype=p.dtype)
    new.load_state_dict(bn.state_dict())
    for name, param in new.named_parameters():
        param.requires_grad_(getattr(bn, name).requires_grad)
    return new.train(bn.training)


class ReLUInBatchNorm(nn.Identity):
    """Where a ReLU was before `sk.fuse` moved it into the BatchNormReLU2d before it (`inplace` kept for unfuse)."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def extra_repr(self):
        return "applied by the BatchNormReLU2d before it"


class MaxPool3x3s2(nn.MaxPool2d):
    """nn.MaxPool2d(3, 2, 1), ShuffleNet's stem pool (same attributes; `sk.fuse` puts it in place of one and
    `sk.unfuse` puts the nn.MaxPool2d back).  With a float32/float64 CPU batch and no gradient needed, its
    forward is shufflekern::max_pool3x3s2 (no indices: ATen's CPU max_pool2d computes and drops them; on the
    [16, 24, 112, 112] stem output, Zen 4 AVX-512, 2 threads: 1.43x faster channels_last, ~10x NCHW, where ATen
    loops over each window scalar by scalar and we pool output columns as vector lanes); otherwise nn.MaxPool2d's."""

    def __init__(self):
        super().__init__(3, 2, 1)

    @staticmethod
    def replaces(m):
        return (type(m) is nn.MaxPool2d and _pair(m.kernel_size) == (3, 3) and _pair(m.stride) == (2, 2)
                and _pair(m.padding) == (1, 1) and _pair(m.dilation) == (1, 1) and not m.ceil_mode
                and not m.return_indices)

    def forward(self, x):
        if (isinstance(x, torch.Tensor) and x.device.type == "cpu" and x.dim() == 4 and x.shape[2] > 0
                and x.shape[3] > 0 and x.dtype in (torch.float32, torch.float64)
                and not (torch.is_grad_enabled() and x.requires_grad)):
            return torch.ops.shufflekern.max_pool3x3s2(x)
        return super().forward(x)


def check_mids(mid_channels, n, who):
    """mid_channels: None (the default widths) or one positive int (or None) per unit."""
    if mid_channels is None:
        return [None] * n
    mids = list(mid_channels)
    if len(mids) != n or not all(m is None or (isinstance(m, int) and not isinstance(m, bool) and m > 0)
                                 for m in mids):
        raise ValueError(f"{who}: mid_channels must be None or {n} positive ints (one per unit), got {mid_channels!r}")
    return mids


def _hooked(*modules):
    """Whether a hook (forward or backward, a module's or a global one) would see these modules' calls."""
    from torch.nn.modules import module as m
    return bool(m._global_forward_hooks or m._global_forward_pre_hooks or m._global_backward_hooks
                or m._global_backward_pre_hooks) or any(
        mod._forward_hooks or mod._forward_pre_hooks or mod._backward_hooks or mod._backward_pre_hooks
        for mod in modules)


def _stem_op(bn, y):
    """Whether `fused_stem` runs the stem's BatchNorm + ReLU + pool as shufflekern::bn_relu_max_pool on y (the
    conv's output): a float32/float64 CPU y that the native batch_norm_act kernel would take."""
    return (y.device.type == "cpu" and y.dim() == 4 and y.numel() > 0 and _backend.get_backend() != "emulated"
            and _bn_op(bn, y, None) is torch.ops.shufflekern.batch_norm_act.default)


def fused_stem(conv1, maxpool, x):
    """`maxpool(conv1(x))`, a ShuffleNet stem.  Where `sk.fuse` made conv1 (conv, BatchNormReLU2d,
    ReLUInBatchNorm) and maxpool a MaxPool3x3s2, no hook would see those modules, torch.compile is not tracing
    (inductor fuses the eager ops and lowers the pool's indices to window offsets itself) and `_stem_op` takes
    the conv's output, the BatchNorm, ReLU and pool are one shufflekern::bn_relu_max_pool
    (csrc/cpu/vec/batch_norm_act.cpp: the full-resolution activation is never written; a 1-byte argmax instead
    of ATen's int64 indices; a backward that gathers per input instead of a zero fill and a scatter), with
    nn.BatchNorm2d's semantics (running statistics updated in training)."""
    if not (type(conv1) is nn.Sequential and len(conv1) == 3 and type(conv1[1]) is BatchNormReLU2d
            and type(conv1[2]) is ReLUInBatchNorm and type(maxpool) is MaxPool3x3s2) \
            or torch.compiler.is_compiling() or _hooked(conv1, conv1[1], conv1[2], maxpool):
        return maxpool(conv1(x))
    y = conv1[0](x)
    bn = conv1[1]
    if not _stem_op(bn, y):
        return maxpool(conv1[2](bn(y)))
    bn._check_input_dim(y)
    training, n, update = _bn_step(bn, y)
    out, _, mean, var = torch.ops.shufflekern.bn_relu_max_pool(
        y, bn.weight, bn.bias, None if training else bn.running_mean, None if training else bn.running_var,
        training, bn.eps)
    if update:
        _update_running(bn, mean, var, n)
    return out
