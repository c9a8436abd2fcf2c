"""ShuffleNet V2 (Ma et al., 2018), eager and fused, with torchvision's module names and channel table, so
that state_dicts load both ways and parameter counts match (1,366,792 / 2,278,604 / 3,503,624 /
7,393,996 for 0.5x / 1.0x / 1.5x / 2.0x).

Fused unit: the eager unit ends with `channel_shuffle(cat((a, b), 1), 2)`, two copies.  With h channels
in a and b, shuffle(cat(a, b), 2)[:, 2i + j] = (a, b)[j][:, i], which is `stack((a, b), 2).flatten(1, 2)`:
one copy (the concatenation's own) with the shuffle folded into its indexing.  For channels_last tensors
the same interleave runs on the NHWC view, so the result stays channels_last.  Between units the
activation travels as its two channel halves (see FusedUnitSequence), which removes the copy of the
half-channel input of every stride-1 unit too.

Branch width: the mid channels of branch2 (1x1 conv -> BN -> ReLU -> depthwise -> BN -> 1x1 conv) never
cross the concat + shuffle, so they may differ from oup/2: `mid` per unit (`mid_channels` for the whole
net) sets them, e.g. for a model pruned by `shufflekern.compress`.
"""
from collections import OrderedDict

import torch
from torch import nn

from . import _fusing
from ._common import bn_act, check_mids, eager_channel_shuffle, fused_stem, is_bn
from ._units import UnitKernelMixin, pack_1x1, pack_dw
from ._units import _bias as _unit_bias

__all__ = ["ShuffleNetV2", "InvertedResidual", "FusedInvertedResidual", "FusedUnitSequence", "shufflenet_v2",
           "V2_CHANNELS"]

V2_CHANNELS = {0.5: [24, 48, 96, 192, 1024], 1.0: [24, 116, 232, 464, 1024],
               1.5: [24, 176, 352, 704, 1024], 2.0: [24, 244, 488, 976, 2048]}
REPEATS = (4, 8, 4)


def _dw(c, stride):
    return nn.Conv2d(c, c, 3, stride, 1, bias=False, groups=c)


class InvertedResidual(nn.Module):
    """torchvision's ShuffleNetV2 unit (same submodules, same maths); plain torch ops."""

    def __init__(self, inp, oup, stride, mid=None):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual: stride must be 1 or 2, got {stride!r}")
        if oup % 2:
            raise ValueError(f"InvertedResidual: oup ({oup}) must be even")
        self.stride = stride
        bf = oup // 2
        if stride == 1 and inp != 2 * bf:
            raise ValueError(f"InvertedResidual: a stride-1 unit needs inp == oup, got {inp} and {oup}")
        if mid is None:
            mid = bf
        elif isinstance(mid, bool) or not isinstance(mid, int) or mid < 1:
            raise ValueError(f"InvertedResidual: mid must be a positive int or None, got {mid!r}")
        if stride > 1:
            self.branch1 = nn.Sequential(_dw(inp, stride), nn.BatchNorm2d(inp),
                                         nn.Conv2d(inp, bf, 1, 1, 0, bias=False), nn.BatchNorm2d(bf),
                                         nn.ReLU(inplace=True))
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else bf, mid, 1, 1, 0, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            _dw(mid, stride), nn.BatchNorm2d(mid),
            nn.Conv2d(mid, bf, 1, 1, 0, bias=False), nn.BatchNorm2d(bf), nn.ReLU(inplace=True))

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return eager_channel_shuffle(out, 2)


def _channels_last(x):
    """Channels innermost (a channels_last tensor or a channel slice of one)."""
    return x.stride(1) == 1 and x.shape[1] > 1 and x.stride(3) != 1


def _interleave(a, b):
    """channel_shuffle(cat((a, b), 1), 2), i.e. out[:, 2i + j] = (a, b)[j][:, i], in one copy, in a's
    memory format.  channels_last: the interleave is element-wise along the contiguous channel dim; a
    complex tensor is exactly (re, im) interleaved and torch.complex writes it with a vectorised kernel
    (4x faster than torch.stack on the last dim here)."""
    if _channels_last(a):
        ap, bp = a.permute(0, 2, 3, 1), b.permute(0, 2, 3, 1)
        # (Inductor generates its own kernel for the stack and has no complex codegen.)
        if a.dtype in (torch.float32, torch.float64) and b.dtype == a.dtype and not torch.compiler.is_compiling():
            y = torch.view_as_real(torch.complex(ap, bp))
        else:
            y = torch.stack((ap, bp), dim=4)
        return y.flatten(3).permute(0, 3, 1, 2)
    return torch.stack((a, b), dim=2).flatten(1, 2)


def _fmt(x):
    return torch.channels_last if _channels_last(x) else torch.contiguous_format


def _deinterleave(grads, j, shape, dtype, device, fmt):
    """Gradient of one interleave input: the j-th (0: a, 1: b) channel of each output-gradient pair, copied
    into a fresh tensor in the input's memory format (strided views would send the ReLU and BatchNorm
    backward kernels down their slow non-contiguous paths)."""
    out = torch.empty(shape, dtype=dtype, device=device, memory_format=fmt)
    c, q = 0, shape[1] // len(grads)
    for g in grads:
        if g is None:  # an output half that did not reach the loss
            out[:, c:c + q].zero_()
        else:
            out[:, c:c + q].copy_(g.unflatten(1, (q, 2)).select(2, j))
        c += q
    return out


class _Interleave(torch.autograd.Function):
    """out = channel_shuffle(cat((a, b), 1), 2), returned whole or as its two channel halves: what
    shufflekern::interleave (csrc/cpu/interleave.cpp; its backward shufflekern::deinterleave, one vectorised
    pass each) computes on CPU tensors; this torch.stack / torch.complex version serves other devices and
    torch.compile, whose inductor fuses the stack with its neighbours."""

    @staticmethod
    def forward(ctx, a, b, halves):
        ctx.meta = (a.shape, a.dtype, a.device, _fmt(a))
        ctx.halves = halves
        ctx.set_materialize_grads(False)
        if not halves:
            return _interleave(a, b)
        q = a.shape[1] // 2
        return _interleave(a[:, :q], b[:, :q]), _interleave(a[:, q:], b[:, q:])

    @staticmethod
    def backward(ctx, *grads):
        return _deinterleave(grads, 0, *ctx.meta), _deinterleave(grads, 1, *ctx.meta), None


class FusedInvertedResidual(UnitKernelMixin, InvertedResidual):
    """ShuffleNet V2 unit without the shuffle copy.  Same submodules and state_dict as InvertedResidual;
    `sk.fuse` may replace the BatchNorms with nn.Identity (folded into the convs' bias) in eval mode.

    `unit(x)` takes and returns a tensor, as any nn.Sequential child.  `unit(x, halves=True)` returns the
    output as its two channel halves (lo, hi), each a contiguous tensor, and `x` may be such a pair: only
    FusedUnitSequence, the container `sk.fuse` puts around consecutive fused units, passes pairs.

    Eval mode with BatchNorm folded, no gradient needed, a float32/float64 CPU input: the whole unit runs as
    one op, shufflekern::unit_v2, on weights packed once (models/_units.py); then the output is one tensor.
    """

    _PACK_NAMES = ("pk_w1", "pk_b1", "pk_wd", "pk_bd", "pk_w2", "pk_b2", "pk_wd1", "pk_bd1", "pk_wp1", "pk_bp1")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._unit_init()

    def _folded(self):
        b1 = list(self.branch1)
        b2 = list(self.branch2)
        ok2 = len(b2) == 8 and all(isinstance(b2[i], nn.Identity) for i in (1, 4, 6))
        ok1 = not b1 or (len(b1) == 5 and all(isinstance(b1[i], nn.Identity) for i in (1, 3)))
        return ok1 and ok2

    def _unit_sources(self):
        convs = [self.branch2[0], self.branch2[3], self.branch2[5]]
        if self.stride > 1:
            convs += [self.branch1[0], self.branch1[2]]
        return [t for c in convs for t in (c.weight, c.bias) if t is not None]

    def _unit_packs(self):
        if not self._folded():
            return None
        c1, dw, c2 = self.branch2[0], self.branch2[3], self.branch2[5]
        packs = dict(pk_w1=pack_1x1(c1.weight), pk_b1=_unit_bias(c1), pk_wd=pack_dw(dw.weight), pk_bd=_unit_bias(dw),
                     pk_w2=pack_1x1(c2.weight), pk_b2=_unit_bias(c2))
        if self.stride > 1:
            d1, p1 = self.branch1[0], self.branch1[2]
            packs.update(pk_wd1=pack_dw(d1.weight), pk_bd1=_unit_bias(d1), pk_wp1=pack_1x1(p1.weight),
                         pk_bp1=_unit_bias(p1))
        return packs

    def _branch(self, seq, x):
        for m in seq:
            if isinstance(m, nn.ReLU):
                x = x.relu_()
            elif type(m) is nn.BatchNorm2d:  # a BatchNorm without ReLU (BN + ReLU pairs are BatchNormReLU2d)
                x = bn_act(m, x, relu=False)
            else:
                x = m(x)
        return x

    def forward(self, x, halves=False):
        xt = torch.cat(x, 1) if isinstance(x, tuple) and self._unit_ready else x
        if self._use_unit_kernel(xt):
            return torch.ops.shufflekern.unit_v2(xt, self.pk_w1, self.pk_b1, self.pk_wd, self.pk_bd, self.pk_w2,
                                                 self.pk_b2, self.pk_wd1, self.pk_bd1, self.pk_wp1, self.pk_bp1,
                                                 self.stride)
        if self.stride == 1:
            x1, x2 = x if isinstance(x, tuple) else x.chunk(2, dim=1)
            b = self._branch(self.branch2, x2)
        else:
            if isinstance(x, tuple):
                x = torch.cat(x, 1)
            x1, b = self._branch(self.branch1, x), self._branch(self.branch2, x)
        parts = 2 if halves and b.shape[1] % 2 == 0 else 1
        if x1.is_cpu and b.is_cpu and x1.dtype == b.dtype and not torch.compiler.is_compiling():
            ys = torch.ops.shufflekern.interleave(x1, b, parts)
            return ys[0] if parts == 1 else tuple(ys)
        return _Interleave.apply(x1, b, parts == 2)


class FusedUnitSequence(nn.Sequential):
    """An nn.Sequential (same children, names and state_dict) whose consecutive fused V2 units hand each
    other the activation as its two channel halves (lo, hi), each a contiguous tensor: a stride-1 unit's
    branch then reads hi without the copy that convolving a channel slice costs, and the output halves
    are interleave(x1[:h/2], b[:h/2]) and interleave(x1[h/2:], b[h/2:]), together one copy.  It takes and
    returns a tensor; the pairs stay inside.  `sk.fuse` makes a stage of fused units one; `sk.unfuse`
    turns it back into an nn.Sequential."""

    def forward(self, x):
        mods = list(self._modules.values())
        for m, nxt in zip(mods, mods[1:] + [None]):
            if isinstance(m, FusedInvertedResidual):
                x = m(x, halves=isinstance(nxt, FusedInvertedResidual))
            else:
                x = m(torch.cat(x, 1) if isinstance(x, tuple) else x)
        return x


def convert_unit(unit, cls):
    """A `cls` unit with the weights, structure (folded BN or not) and mode of `unit` (ours or torchvision's)."""
    inp = unit.branch2[0].in_channels * (1 if unit.stride > 1 else 2)
    mid, bf = unit.branch2[0].out_channels, unit.branch2[5].out_channels
    new = cls(inp, 2 * bf, unit.stride, mid if mid != bf else None)
    for name in ("branch1", "branch2"):
        src, dst = getattr(unit, name), getattr(new, name)
        for i, m in enumerate(src):
            if not is_bn(m) and is_bn(dst[i]):
                dst[i] = nn.Identity()
            if isinstance(m, nn.Conv2d) and m.bias is not None and dst[i].bias is None:
                dst[i].bias = nn.Parameter(torch.zeros(dst[i].out_channels))
    p = next(unit.parameters())
    new.to(device=p.device, dtype=p.dtype)
    new.load_state_dict(unit.state_dict())
    return new.train(unit.training)


def _is_v2_unit(m):
    if isinstance(m, InvertedResidual):
        return True
    try:  # torchvision is optional
        from torchvision.models.shufflenetv2 import InvertedResidual as TVUnit
    except ImportError:  # pragma: no cover
        return False
    return isinstance(m, TVUnit)


def _fuse(m):
    if isinstance(m, FusedInvertedResidual):
        return m
    return convert_unit(m, FusedInvertedResidual) if _is_v2_unit(m) else None


def _as(seq, cls):
    new = cls(OrderedDict(seq._modules))
    return new.train(seq.training)


def _sequences(model, want):
    """`model` with every nn.Sequential holding two consecutive fused units a FusedUnitSequence (want=True),
    or every FusedUnitSequence a plain nn.Sequential (want=False)."""
    def convert(m):
        if not want:
            return _as(m, nn.Sequential) if type(m) is FusedUnitSequence else None
        if type(m) is nn.Sequential and any(isinstance(a, FusedInvertedResidual) and isinstance(b, FusedInvertedResidual)
                                            for a, b in zip(m, list(m)[1:])):
            return _as(m, FusedUnitSequence)
        return None

    def walk(m):
        new = convert(m)
        m = new if new is not None else m
        for name, child in list(m.named_children()):
            setattr(m, name, walk(child))
        return m
    return walk(model)


# How sk.fuse / sk.unfuse convert this module's units, and torchvision's (shufflekern.models._fusing applies it).
_fusing.register(_fusing.UnitRule(
    name="shufflenet_v2_unit",
    fuse=_fuse,
    unfuse=lambda m: convert_unit(m, InvertedResidual) if isinstance(m, FusedInvertedResidual) else None,
    after_fuse=lambda model: _sequences(model, True),
    after_unfuse=lambda model: _sequences(model, False)))


class ShuffleNetV2(nn.Module):
    """torchvision.models.ShuffleNetV2's layout: conv1, maxpool, stage2-4, conv5, fc."""

    def __init__(self, width_mult=1.0, num_classes=1000, small_input=False, mid_channels=None):
        super().__init__()
        mids = check_mids(mid_channels, sum(REPEATS), "shufflenet_v2")
        if isinstance(width_mult, bool) or width_mult not in V2_CHANNELS:
            raise ValueError(f"shufflenet_v2: width_mult must be one of {tuple(V2_CHANNELS)}, got {width_mult!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"shufflenet_v2: num_classes must be a positive int, got {num_classes!r}")
        chans = V2_CHANNELS[width_mult]
        self.width_mult = width_mult
        c, k = chans[0], 0
        self.conv1 = nn.Sequential(nn.Conv2d(3, c, 3, 1 if small_input else 2, 1, bias=False),
                                   nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for s, (out, repeats) in enumerate(zip(chans[1:4], REPEATS)):
            units = [InvertedResidual(c if i == 0 else out, out, 2 if i == 0 else 1, mids[k + i]) for i in range(repeats)]
            k += repeats
            setattr(self, f"stage{s + 2}", nn.Sequential(*units))
            c = out
        self.conv5 = nn.Sequential(nn.Conv2d(c, chans[-1], 1, 1, 0, bias=False),
                                   nn.BatchNorm2d(chans[-1]), nn.ReLU(inplace=True))
        self.fc = nn.Linear(chans[-1], num_classes)

    def forward(self, x):
        x = fused_stem(self.conv1, self.maxpool, x)
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(x.mean((2, 3)))


def shufflenet_v2(width_mult=1.0, num_classes=1000, fused=True, small_input=False, mid_channels=None):
    """ShuffleNet V2 width_mult x with torchvision's names (loads its state_dicts).  `fused=True` runs the
    units without shuffle copies; `small_input=True` uses a stride-1 stem without max-pool (32x32);
    `mid_channels`: per-unit branch widths (16 ints; a pruned model's)."""
    model = ShuffleNetV2(width_mult, num_classes, small_input, mid_channels)
    if fused:
        model = _fusing.fuse_in_place(model, fold_bn=False)
    return model
