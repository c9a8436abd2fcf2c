"""Shuffle-aware structured channel pruning of the ShuffleNet students, and unstructured magnitude masks.

What is prunable.  Only channels that never cross a concatenation or a channel shuffle can be removed
without touching the unit's interface:
  * ShuffleNetV2: the mid channels of branch2, 1x1 conv (rows) -> BN -> ReLU -> depthwise -> BN ->
    1x1 conv (columns).  The branch outputs are concatenated with the shortcut and shuffled, so they stay.
  * ShuffleNetV1: the bottleneck, grouped 1x1 conv (rows) -> BN -> ReLU -> shuffle(g) -> depthwise ->
    BN -> grouped 1x1 conv (columns).  Here the shuffle is inside: bottleneck channel c = a*m + b (group
    a of conv1, m = mid/g) lands at position k = b*g + a, which feeds group k // m of conv3.  The channels
    form a g x g grid of blocks (conv1 group a -> conv3 group j); a smaller unit (m' per group) has its
    own block sizes, so the pruner keeps in every block exactly as many channels as the smaller unit's
    shuffle routes from a to j (equal numbers per group, mapped through the permutation) and copies
    each kept channel's conv3 column to its new position.  The pruned unit is then a plain ShuffleV1Unit
    with mid = g*m', and it computes what the original computes with the removed channels zeroed.
(Torch-Pruning's dependency graph takes the shuffle's transpose for index-preserving and gets V2 wrong;
this module knows the permutation.)

Importance: |gamma| of the BatchNorm right before the consuming 1x1 conv (network slimming's criterion,
Liu et al. 2017), not the L2 norm of the producing conv's filters.  Why: every conv here feeds a
BatchNorm, which divides out the filter's scale (and weight decay shrinks that scale freely), so a
filter's norm says nothing about how much the channel passes on; gamma is exactly the standard
deviation that the channel hands the consuming conv.  The same place exists in both nets (V2: the BN
after the depthwise conv; V1: bn2), and it costs nothing to read.  No sparsity-inducing training is run
first; the KD fine-tune afterwards recovers the accuracy.

The pruned model is a dense model of the same class with smaller widths (`mid_channels(model)` gives
them to the constructor), no masks.  Unstructured magnitude pruning (`prune_unstructured`,
torch.nn.utils.prune) only zeroes weights: the tensors keep their shapes, dense kernels do the same
work, so it saves nothing at inference; it is here to show that.
"""
import copy

import torch
from torch import nn

from ..models._common import inverse_index, shuffle_index
from ..models.shufflenetv1 import FusedShuffleV1Unit, ShuffleNetV1, ShuffleV1Unit
from ..models.shufflenetv2 import FusedInvertedResidual, InvertedResidual, ShuffleNetV2

__all__ = ["prune_structured", "prune_unstructured", "finalize_unstructured", "mid_channels", "is_fused",
           "v1_kept_per_block", "zero_removed", "recalibrate_bn"]


def is_fused(model):
    return any(isinstance(m, (FusedShuffleV1Unit, FusedInvertedResidual)) for m in model.modules())


def _check_ratio(ratio):
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be a number in (0, 1) (the fraction of prunable channels removed), got {ratio!r}")


def _units(model):
    return [u for s in (model.stage2, model.stage3, model.stage4) for u in s]


def mid_channels(model):
    """The per-unit branch (V2) / bottleneck (V1) widths: the constructor's `mid_channels`."""
    if isinstance(model, ShuffleNetV2):
        return [u.branch2[0].out_channels for u in _units(model)]
    if isinstance(model, ShuffleNetV1):
        return [u.mid for u in _units(model)]
    raise TypeError(f"mid_channels: expected a ShuffleNetV1 or ShuffleNetV2, got {type(model).__name__}")


def _gamma(bn, where):
    if not isinstance(bn, nn.BatchNorm2d) or bn.weight is None:
        raise ValueError(f"prune: {where} has no BatchNorm scale to rank channels by (BatchNorm folded by "
                         "sk.fuse in eval mode?); prune the training-form model (a trainer checkpoint)")
    return bn.weight.detach().abs()


def _bn_take(bn, idx):
    new = nn.BatchNorm2d(len(idx), bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    new.to(device=bn.running_mean.device if bn.running_mean is not None else None,
           dtype=bn.running_mean.dtype if bn.running_mean is not None else None)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(bn, name)
            if t is not None:
                getattr(new, name).copy_(t[idx])
        if bn.num_batches_tracked is not None:
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new.train(bn.training)


def _conv_like(conv, in_channels, out_channels, groups, weight):
    new = nn.Conv2d(in_channels, out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    groups, bias=conv.bias is not None)
    new.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
    return new.train(conv.training)


# -- ShuffleNetV2 ------------------------------------------------------------------------------------------
def _prune_v2_unit(unit, ratio):
    b = unit.branch2
    mid = b[0].out_channels
    keep = max(1, int(mid * (1.0 - ratio) + 0.5))
    idx = torch.topk(_gamma(b[4], "a V2 branch"), keep).indices.sort().values
    b[0] = _conv_like(b[0], b[0].in_channels, keep, 1, b[0].weight.detach()[idx])
    b[1] = _bn_take(b[1], idx)
    b[3] = _conv_like(b[3], keep, keep, keep, b[3].weight.detach()[idx])
    b[4] = _bn_take(b[4], idx)
    b[5] = _conv_like(b[5], keep, b[5].out_channels, 1, b[5].weight.detach()[:, idx])
    return {"mid_before": mid, "mid_after": keep, "kept": idx.tolist()}


# -- ShuffleNetV1 ------------------------------------------------------------------------------------------
def _blocks(m, g):
    """counts[a][j]: bottleneck channels of conv1 group a that the shuffle routes to conv3 group j, for a
    unit with m channels per group (position of channel a*m + b is b*g + a)."""
    counts = [[0] * g for _ in range(g)]
    for a in range(g):
        for b in range(m):
            counts[a][(b * g + a) // m] += 1
    return counts


def v1_kept_per_block(m, g, ratio):
    """(m', its block counts): m' channels per group kept, the one nearest m (1 - ratio) (ties: fewer) among
    those whose blocks all fit in the original's, so that the smaller unit's shuffle routes every kept
    channel between the same two groups as before.  (m, counts) when none fits (then the unit stays
    whole: with many groups and few channels per group, e.g. g=8, m=6, the grid leaves no room)."""
    old = _blocks(m, g)
    target = m * (1.0 - ratio)
    for mp in sorted(range(1, m), key=lambda v: (abs(v - target), v)):
        new = _blocks(mp, g)
        if all(new[a][j] <= old[a][j] for a in range(g) for j in range(g)):
            return mp, new
    return m, old


def _prune_v1_unit(unit, ratio):
    g, mid = unit.groups, unit.mid
    m = mid // g
    mp, want = v1_kept_per_block(m, g, ratio)
    idx = shuffle_index(mid, g) if g > 1 else torch.arange(mid)  # shuffled[:, k] = y[:, idx[k]]
    pos = inverse_index(idx)                                       # channel c sits at position pos[c]
    imp = _gamma(unit.bn2, "a V1 unit")[pos]                       # importance of pre-shuffle channel c
    old_of_new = []
    for a in range(g):
        kept = []
        for j in range(g):
            cands = torch.tensor([a * m + b for b in range(m) if (b * g + a) // m == j], dtype=torch.long)
            if want[a][j]:
                kept += cands[torch.topk(imp[cands], want[a][j]).indices].tolist()
        old_of_new += sorted(kept)
    old_of_new = torch.tensor(old_of_new, dtype=torch.long)
    new_mid = g * mp
    new_idx = shuffle_index(new_mid, g) if g > 1 else torch.arange(new_mid)
    kmap = pos[old_of_new[new_idx]]  # new position k' -> old position k
    bo = unit.conv3.out_channels // g
    w3 = unit.conv3.weight.detach()
    new_w3 = w3.new_empty(unit.conv3.out_channels, mp, 1, 1)
    for kp in range(new_mid):
        j, k = kp // mp, int(kmap[kp])
        assert k // m == j, "V1 pruning: a kept channel changed conv3 group"  # guaranteed by v1_kept_per_block
        new_w3[j * bo:(j + 1) * bo, kp - j * mp] = w3[j * bo:(j + 1) * bo, k - j * m]
    c1 = unit.conv1
    unit.conv1 = _conv_like(c1, c1.in_channels, new_mid, c1.groups, c1.weight.detach()[old_of_new])
    unit.bn1 = _bn_take(unit.bn1, old_of_new)
    unit.conv2 = _conv_like(unit.conv2, new_mid, new_mid, new_mid, unit.conv2.weight.detach()[kmap])
    unit.bn2 = _bn_take(unit.bn2, kmap)
    unit.conv3 = _conv_like(unit.conv3, new_mid, unit.conv3.out_channels, g, new_w3)
    unit.mid = new_mid
    return {"mid_before": mid, "mid_after": new_mid, "kept": old_of_new.tolist(), "kept_positions": kmap.tolist()}


def prune_structured(model, ratio):
    """A smaller dense copy of the ShuffleNet `model` (V1 or V2, eager or fused; BatchNorm not folded)
    with a fraction `ratio` of the prunable channels of every unit removed, lowest BN |gamma| first.

    Returns (pruned model, plan): same class, same form (fused stays fused) and mode; plan[i] says per
    unit which channels were kept (see the module docstring for what V1 keeps)."""
    _check_ratio(ratio)
    if not isinstance(model, (ShuffleNetV1, ShuffleNetV2)):
        raise TypeError(f"prune_structured: expected a shufflekern ShuffleNetV1 or ShuffleNetV2 student, got "
                        f"{type(model).__name__}")
    from ..fuse import fuse, unfuse
    fused = is_fused(model)
    eager = unfuse(model) if fused else copy.deepcopy(model)
    plan = []
    for unit in _units(eager):
        if isinstance(unit, InvertedResidual):
            plan.append(_prune_v2_unit(unit, ratio))
        elif isinstance(unit, ShuffleV1Unit):
            plan.append(_prune_v1_unit(unit, ratio))
        else:  # pragma: no cover
            raise TypeError(f"prune_structured: unexpected unit {type(unit).__name__}")
    return (fuse(eager, fold_bn=False) if fused else eager), plan


@torch.no_grad()
def zero_removed(model, plan):
    """A copy of the (eager, unpruned) `model` with the weights that consume the channels `plan` removed set
    to zero: in eval mode it computes what the pruned model computes (the test of the pruner)."""
    model = copy.deepcopy(model)
    for unit, p in zip(_units(model), plan):
        if isinstance(unit, InvertedResidual):
            drop = sorted(set(range(p["mid_before"])) - set(p["kept"]))
            unit.branch2[5].weight[:, drop] = 0
        else:
            m = unit.mid // unit.groups
            drop = sorted(set(range(unit.mid)) - set(p["kept_positions"]))
            bo = unit.conv3.out_channels // unit.groups
            for k in drop:
                j = k // m
                unit.conv3.weight[j * bo:(j + 1) * bo, k - j * m] = 0
    return model


# -- unstructured ------------------------------------------------------------------------------------------
def _weighted(model):
    return [(m, "weight") for m in model.modules()
            if isinstance(getattr(m, "weight", None), nn.Parameter) and m.weight.dim() in (2, 4)]


def prune_unstructured(model, ratio):
    """Global L1 magnitude pruning (torch.nn.utils.prune.global_unstructured) of a fraction `ratio` of all
    conv and linear weights, in place, as masks (weight = weight_orig * weight_mask during fine-tuning).
    Masks only: shapes stay, dense kernels run the zeros, nothing gets faster.  Call
    `finalize_unstructured` before saving (plain weights again, with the zeros baked in)."""
    import torch.nn.utils.prune as tprune
    _check_ratio(ratio)
    tprune.global_unstructured(_weighted(model), pruning_method=tprune.L1Unstructured, amount=float(ratio))
    return model


def finalize_unstructured(model):
    import torch.nn.utils.prune as tprune
    for m in model.modules():
        if tprune.is_pruned(m) and hasattr(m, "weight_mask"):
            tprune.remove(m, "weight")
    return model


@torch.no_grad()
def recalibrate_bn(model, batches):
    """Re-estimate every BatchNorm's running statistics of `model` from `batches` (an iterable of inputs):
    statistics reset, then the exact average over the batches (momentum None), weights untouched.  After
    structured pruning the BatchNorms after a pruned conv input (V2: the branch's last 1x1 conv; V1: the
    grouped conv after the depthwise) normalise with statistics of the unpruned sum, which no longer holds;
    masks (unstructured) shift them too.  Returns the number of BatchNorms recalibrated; the model's mode is
    restored."""
    batches = list(batches)
    if not batches:
        raise ValueError("recalibrate_bn: batches is empty")
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
           and m.track_running_stats]
    if not bns:
        return 0
    was_training = model.training
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    try:
        for x in batches:
            model(x)
    finally:
        for bn, mom in zip(bns, saved):
            bn.momentum = mom
        model.train(was_training)
    return len(bns)

