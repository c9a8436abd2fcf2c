"""ShuffleNet V1 (Zhang et al., 2018), eager and fused.

Stage configuration from the paper (Table 1): stem 3x3/2 conv + 3x3/2 max-pool, stages 2-4 with 4/8/4
units (the first of each stride 2), bottleneck = out/4, no group conv on the first pointwise layer of
stage 2, average-pool shortcut concatenated on stride-2 units, global pool, fc.

Channel rule (reproduces the released checkpoints' configurations and so the published parameter
counts, g=3: 717,324 / 1,864,728 / 3,441,168 / 5,449,776 and g=8: 1,010,448 / 2,433,768 / 4,268,952 /
6,521,232 for 0.5x-2.0x at 1000 classes, i.e. the published 0.7M / 1.9M / 3.4M / 5.4M and 1.0M / 2.4M / 4.3M / 6.5M;
the classifier has no bias, as in the released models):
  stage-2 width = the paper's 1x width for g (144, 200, 240, 272, 384 for g = 1, 2, 3, 4, 8) times
  width_mult, rounded to the nearest multiple of 4*g (so the bottleneck out/4 divides by g); stages 3 and
  4 double it.  Stem: 24 channels for 1.0x and 1.5x, 48 for 2.0x, 12 rounded up to a multiple of g for
  0.5x (12, or 16 for g=8), as in megvii's ShuffleNet-Series.  Every stride-2 unit's residual branch
  then has out - in channels, divisible by g.

Fused unit: the eager unit is
    conv1 (1x1, g) -> bn1 -> relu -> shuffle(g) -> conv2 (dw 3x3) -> bn2 -> conv3 (1x1, g) -> bn3.
The shuffle is a channel permutation P and commutes with per-channel ops (BN, ReLU, depthwise conv) once
their per-channel parameters are permuted: dw(P r) = P dw'(r) with dw'[j] = dw[P^-1 j].  So the fused
unit runs conv2/bn2 on the unshuffled channels and folds P into conv3:
    conv3(P u) = shuffle_conv1x1(u, conv3.weight, groups=g, shuffle_groups=g).
In stage 2's first unit conv1 is dense, so P is folded into conv1's output rows (and bn1) instead, for
free.  The grouped conv1 of the other units runs on shuffle_conv1x1 too (shuffle_groups=1: no shuffle),
and every BatchNorm [+ residual] [+ ReLU] on batch_norm_act (models._common.bn_act).

Parameters stay in the eager (canonical) channel order: the fused unit gathers the few permuted
per-channel tensors (a depthwise kernel, BatchNorm parameters and statistics: O(mid) values) on the fly
in its forward and scatters the running-statistics update back.  So `named_parameters()`, `state_dict()`
and every per-channel tool (the pruner, an EMA, inspection) see the same channels in both forms.

Bottleneck width: out/4 by default; `mid` (per unit, `mid_channels` for the whole net) overrides it, e.g.
for a model pruned by `shufflekern.compress`.  It must be divisible by the groups.
"""
import torch
import torch.nn.functional as F
from torch import nn

from . import _fusing
from ._common import (DenseGrad, bn_act, check_mids, eager_channel_shuffle, fused_stem, give_bias, inverse_index,
                      is_bn, shuffle_index)
from ._units import UnitKernelMixin, pack_1x1, pack_dw
from ._units import _bias as _unit_bias

__all__ = ["ShuffleNetV1", "ShuffleV1Unit", "FusedShuffleV1Unit", "shufflenet_v1", "v1_channels",
           "SUPPORTED_GROUPS", "SUPPORTED_WIDTHS"]

SUPPORTED_GROUPS = (1, 2, 3, 4, 8)
SUPPORTED_WIDTHS = (0.5, 1.0, 1.5, 2.0)
_STAGE2_1X = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}
REPEATS = (4, 8, 4)


def _round_to(v, d):
    """Nearest multiple of d (halves up), at least d."""
    return max(d, int(v + d / 2) // d * d)


def v1_channels(groups, width_mult):
    """(stem channels, [stage2, stage3, stage4] output channels) for ShuffleNet V1 g x width_mult."""
    if isinstance(groups, bool) or groups not in SUPPORTED_GROUPS:
        raise ValueError(f"shufflenet_v1: groups must be one of {SUPPORTED_GROUPS}, got {groups!r}")
    if isinstance(width_mult, bool) or width_mult not in SUPPORTED_WIDTHS:
        raise ValueError(f"shufflenet_v1: width_mult must be one of {SUPPORTED_WIDTHS}, got {width_mult!r}")
    out2 = _round_to(_STAGE2_1X[groups] * width_mult, 4 * groups)
    if width_mult == 2.0:
        stem = 48
    elif width_mult >= 1.0:
        stem = 24
    else:
        stem = -(-12 // groups) * groups
    return stem, [out2, 2 * out2, 4 * out2]


def _unit_dims(in_channels, out_channels, groups, stride, group_first, mid=None):
    """(first conv groups, bottleneck, residual-branch channels); raises ValueError on a bad shape."""
    if stride not in (1, 2):
        raise ValueError(f"ShuffleV1Unit: stride must be 1 or 2, got {stride!r}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"ShuffleV1Unit: groups must be a positive int, got {groups!r}")
    if stride == 1 and in_channels != out_channels:
        raise ValueError(f"ShuffleV1Unit: a stride-1 unit needs in_channels == out_channels, "
                         f"got {in_channels} and {out_channels}")
    if mid is None:
        if out_channels % 4:
            raise ValueError(f"ShuffleV1Unit: out_channels ({out_channels}) must be divisible by 4 (bottleneck = out/4)")
        mid = out_channels // 4
    elif isinstance(mid, bool) or not isinstance(mid, int) or mid < 1:
        raise ValueError(f"ShuffleV1Unit: mid must be a positive int or None, got {mid!r}")
    branch = out_channels - in_channels if stride == 2 else out_channels
    g1 = groups if group_first else 1
    if branch <= 0:
        raise ValueError(f"ShuffleV1Unit: a stride-2 unit needs out_channels > in_channels, "
                         f"got {in_channels} -> {out_channels}")
    for name, c, g in (("in_channels", in_channels, g1), ("bottleneck (mid)", mid, groups),
                       ("out_channels - in_channels" if stride == 2 else "out_channels", branch, groups)):
        if c % g:
            raise ValueError(f"ShuffleV1Unit: {name} ({c}) must be divisible by groups ({g})")
    return g1, mid, branch


class ShuffleV1Unit(nn.Module):
    """Eager ShuffleNet V1 unit (plain torch ops only; what `sk.unfuse` returns)."""

    def __init__(self, in_channels, out_channels, groups, stride, group_first=True, mid=None):
        super().__init__()
        g1, mid, branch = _unit_dims(in_channels, out_channels, groups, stride, group_first, mid)
        self.in_channels, self.out_channels, self.groups, self.stride = in_channels, out_channels, groups, stride
        self.group_first, self.mid = group_first, mid
        self.conv1 = nn.Conv2d(in_channels, mid, 1, groups=g1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, branch, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        if self.groups > 1:
            y = eager_channel_shuffle(y, self.groups)
        y = self.bn3(self.conv3(self.bn2(self.conv2(y))))
        if self.stride == 1:
            return F.relu(x + y)
        return torch.cat((F.avg_pool2d(x, 3, 2, 1), F.relu(y)), 1)

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, groups={self.groups}, stride={self.stride}"
        return s + (f", mid={self.mid}" if self.mid != self.out_channels // 4 else "")


class FusedShuffleV1Unit(UnitKernelMixin, nn.Module):
    """ShuffleNet V1 unit without a shuffle copy (see the module docstring for the algebra).

    `bn1`/`bn2`/`bn3` become nn.Identity (and the convs get a bias) when `sk.fuse` folds BatchNorm in
    eval mode.  Then, with no gradient needed and a float32/float64 CPU input, the whole unit runs as one op,
    shufflekern::unit_v1, on weights packed once (models/_units.py): the depthwise conv on the unshuffled
    channels, the shuffle folded into the last GEMM's reads."""

    _PACK_NAMES = ("pk_w1", "pk_b1", "pk_wd", "pk_bd", "pk_w3", "pk_b3")

    def _unit_sources(self):
        return [t for c in (self.conv1, self.conv2, self.conv3) for t in (c.weight, c.bias) if t is not None]

    def _unit_packs(self):
        if not all(isinstance(getattr(self, f"bn{i}"), nn.Identity) for i in (1, 2, 3)):
            return None
        g1 = self.groups if self.group_first else 1
        wd, bd = self.conv2.weight.detach(), _unit_bias(self.conv2)
        if self.groups > 1:  # the depthwise conv runs on the unshuffled channels u (s = shuffle(u) = u[:, P])
            pinv = inverse_index(shuffle_index(self.mid, self.groups, device=wd.device))
            wd, bd = wd.index_select(0, pinv), bd.index_select(0, pinv)
        return dict(pk_w1=pack_1x1(self.conv1.weight, g1), pk_b1=_unit_bias(self.conv1), pk_wd=pack_dw(wd),
                    pk_bd=bd.contiguous(), pk_w3=pack_1x1(self.conv3.weight, self.groups), pk_b3=_unit_bias(self.conv3))

    def __init__(self, in_channels, out_channels, groups, stride, group_first=True, mid=None):
        super().__init__()
        from .. import nn as sknn
        g1, mid, branch = _unit_dims(in_channels, out_channels, groups, stride, group_first, mid)
        self.in_channels, self.out_channels, self.groups, self.stride = in_channels, out_channels, groups, stride
        self.group_first, self.mid = group_first, mid
        # The grouped first pointwise conv runs on the same grouped-GEMM kernel with no shuffle
        # (shuffle_groups=1): in training it is faster than oneDNN's grouped conv backward here.
        self.conv1 = (sknn.ShuffleConv1x1(in_channels, mid, groups=g1, shuffle_groups=1, bias=False) if g1 > 1
                      else nn.Conv2d(in_channels, mid, 1, bias=False))
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        if groups > 1 and group_first:
            self.conv3 = sknn.ShuffleConv1x1(mid, branch, groups=groups, shuffle_groups=groups, bias=False)
            # conv2/bn2 run on the unshuffled u = s[:, P^-1] (s = shuffle(u) = u[:, P]): internal = canonical[P^-1]
            self.permuted = "conv2"
            perm = inverse_index(shuffle_index(mid, groups))
        else:
            # Stage 2's first unit (dense conv1): conv3 is grouped but needs no shuffle; on the grouped-GEMM kernel
            # for the same reason as conv1 (oneDNN's grouped 1x1 backward: 1.6x ours, [16,60,28,28] -> 216, g=3).
            self.conv3 = (sknn.ShuffleConv1x1(mid, branch, groups=groups, shuffle_groups=1, bias=False) if groups > 1
                          else nn.Conv2d(mid, branch, 1, bias=False))
            # dense conv1 emits the shuffled channels: internal = canonical[P]
            self.permuted = "conv1" if groups > 1 else None
            perm = shuffle_index(mid, groups)
        self.bn3 = nn.BatchNorm2d(branch)
        # Index buffers, not state: x channel j of the permuted conv/bn is its canonical channel perm[j].
        self.register_buffer("perm", perm, persistent=False)
        self.register_buffer("perm_inv", inverse_index(perm), persistent=False)
        self._unit_init()

    def _conv(self, i, x):
        conv = getattr(self, f"conv{i}")
        if self.permuted != f"conv{i}":
            return conv(x)
        w, b = conv.weight.index_select(0, self.perm), conv.bias
        return F.conv2d(x, w, None if b is None else b.index_select(0, self.perm), conv.stride, conv.padding,
                        conv.dilation, conv.groups)

    def _bn(self, i, x, **kw):
        if self.permuted == f"conv{i}":
            kw.update(perm=self.perm, inv=self.perm_inv)
        return bn_act(getattr(self, f"bn{i}"), x, **kw)

    def forward(self, x):
        if self._use_unit_kernel(x):
            return torch.ops.shufflekern.unit_v1(x, self.pk_w1, self.pk_b1, self.pk_wd, self.pk_bd, self.pk_w3,
                                                 self.pk_b3, self.groups if self.group_first else 1, self.groups,
                                                 self.stride)
        # BatchNorm, residual add and ReLU run as one op each time (bn_act).
        y = self._bn(1, self._conv(1, x))
        y = self._bn(2, self._conv(2, y), relu=False)
        if self.stride == 1:
            return bn_act(self.bn3, self.conv3(y), residual=x)
        y = bn_act(self.bn3, self.conv3(y))
        # The cat hands bn_act's backward a strided channel slice of its gradient: DenseGrad makes it dense
        # once (the eager path's ReLU and BatchNorm backward kernels would take their slow strided paths).
        return torch.cat((F.avg_pool2d(x, 3, 2, 1), DenseGrad.apply(y) if y.requires_grad else y), 1)

    extra_repr = ShuffleV1Unit.extra_repr


def convert_unit(unit, cls):
    """A `cls` unit (eager or fused) with the weights, structure (folded BN or not) and mode of `unit`."""
    new = cls(unit.in_channels, unit.out_channels, unit.groups, unit.stride, unit.group_first, unit.mid)
    for i in (1, 2, 3):
        if not is_bn(getattr(unit, f"bn{i}")):
            setattr(new, f"bn{i}", nn.Identity())
        if getattr(unit, f"conv{i}").bias is not None:
            give_bias(getattr(new, f"conv{i}"))
    p = next(unit.parameters())
    new.to(device=p.device, dtype=p.dtype)
    new.load_state_dict(unit.state_dict())
    return new.train(unit.training)


# How sk.fuse / sk.unfuse convert this module's units (shufflekern.models._fusing applies the rule).
_fusing.register(_fusing.UnitRule(
    name="shufflenet_v1_unit",
    fuse=lambda m: (m if isinstance(m, FusedShuffleV1Unit) else
                    convert_unit(m, FusedShuffleV1Unit) if isinstance(m, ShuffleV1Unit) else None),
    unfuse=lambda m: convert_unit(m, ShuffleV1Unit) if isinstance(m, FusedShuffleV1Unit) else None,
    conv_bn_pairs=lambda m: ([(f"conv{i}", f"bn{i}") for i in (1, 2, 3)]
                             if isinstance(m, (ShuffleV1Unit, FusedShuffleV1Unit)) else None)))


class ShuffleNetV1(nn.Module):
    """ShuffleNet V1.  Module names: conv1 (stem Sequential), maxpool, stage2-4 (Sequentials of units), fc."""

    def __init__(self, groups=3, width_mult=1.0, num_classes=1000, small_input=False, mid_channels=None):
        super().__init__()
        stem, outs = v1_channels(groups, width_mult)
        mids = check_mids(mid_channels, sum(REPEATS), "shufflenet_v1")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"shufflenet_v1: num_classes must be a positive int, got {num_classes!r}")
        self.groups, self.width_mult = groups, width_mult
        self.conv1 = nn.Sequential(nn.Conv2d(3, stem, 3, 1 if small_input else 2, 1, bias=False),
                                   nn.BatchNorm2d(stem), nn.ReLU(inplace=True))
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(3, 2, 1)
        c, k = stem, 0
        for s, (out, repeats) in enumerate(zip(outs, REPEATS)):
            units = [ShuffleV1Unit(c if i == 0 else out, out, groups, 2 if i == 0 else 1,
                                   group_first=not (s == 0 and i == 0), mid=mids[k + i]) for i in range(repeats)]
            k += repeats
            setattr(self, f"stage{s + 2}", nn.Sequential(*units))
            c = out
        # Bias-free classifier, as in the released models (the published counts include no fc bias).
        self.fc = nn.Linear(c, num_classes, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)

    def forward(self, x):
        x = fused_stem(self.conv1, self.maxpool, x)
        x = self.stage4(self.stage3(self.stage2(x)))
        return self.fc(x.mean((2, 3)))


def shufflenet_v1(groups=3, width_mult=1.0, num_classes=1000, fused=True, small_input=False, mid_channels=None):
    """ShuffleNet V1 g x width_mult.  `fused=True` runs the shuffles on shufflekern's fused ops (same
    parameters and state_dict as the eager model); `small_input=True` uses a stride-1 stem without
    max-pool (32x32); `mid_channels`: per-unit bottleneck widths (16 ints; a pruned model's)."""
    model = ShuffleNetV1(groups, width_mult, num_classes, small_input, mid_channels)
    if fused:
        model = _fusing.fuse_in_place(model, fold_bn=False)
    return model
