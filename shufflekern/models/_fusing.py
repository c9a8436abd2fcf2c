"""The layer-swapping machinery behind `sk.fuse` / `sk.unfuse`, knowing no unit in particular.

Each unit module says how its unit converts (`register(UnitRule(...))` next to the unit's classes:
shufflenetv1.py, shufflenetv2.py); this module walks a model and applies the rules, and joins / splits the
BatchNorm2d + ReLU pairs of nn.Sequentials.  `shufflekern.fuse` (the public `sk.fuse` / `sk.unfuse`) and
the model builders (`fused=True`) call it.  It imports no unit module, so nothing here closes a cycle.
"""
from dataclasses import dataclass
from typing import Callable, Optional

from torch import nn

from ._common import BatchNormReLU2d, MaxPool3x3s2, ReLUInBatchNorm
from ._common import fold_bn as _fold

__all__ = ["UnitRule", "register", "rules", "fuse_in_place", "unfuse_in_place", "join_bn_relu", "split_bn_relu",
           "swap_pools"]


@dataclass(frozen=True)
class UnitRule:
    """How one kind of unit fuses and unfuses.

    fuse(m): the fused form of `m` (m itself if it is fused already), or None if `m` is not this unit.
    unfuse(m): the eager form of a fused `m`, or None if `m` is not this unit's fused form.
    conv_bn_pairs(m): for BatchNorm folding, the (conv attribute, bn attribute) pairs of `m`, or None if `m`
        is not this unit (nn.Sequential pairs are found without a rule).
    after_fuse / after_unfuse(model): a last pass over the converted model (e.g. swapping containers);
        returns the model (a different module if `model` itself was replaced).
    """
    name: str
    fuse: Callable[[nn.Module], Optional[nn.Module]]
    unfuse: Callable[[nn.Module], Optional[nn.Module]]
    conv_bn_pairs: Optional[Callable[[nn.Module], Optional[list]]] = None
    after_fuse: Optional[Callable[[nn.Module], nn.Module]] = None
    after_unfuse: Optional[Callable[[nn.Module], nn.Module]] = None


_RULES = {}


def register(rule):
    """Add (or replace, by name) a unit's rule."""
    _RULES[rule.name] = rule
    return rule


def rules():
    return list(_RULES.values())


def _first(fn_name, m):
    for r in _RULES.values():
        new = getattr(r, fn_name)(m)
        if new is not None:
            return new
    return None


def _swap(model, convert):
    """Replace, depth first, every submodule for which `convert(m)` returns a module (model included)."""
    top = convert(model)
    if top is not None:
        return top
    for name, child in list(model.named_children()):
        setattr(model, name, _swap(child, convert))
    return model


def _fold_all(model):
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d (in a Sequential or a unit)."""
    for m in model.modules():
        if isinstance(m, nn.Sequential):
            pairs = [(str(i), str(i + 1)) for i in range(len(m) - 1)]
        else:
            pairs = next((p for r in _RULES.values() if r.conv_bn_pairs is not None
                          for p in [r.conv_bn_pairs(m)] if p is not None), None)
            if pairs is None:
                continue
        for conv_name, bn_name in pairs:
            conv, bn = getattr(m, conv_name), getattr(m, bn_name)
            if isinstance(bn, nn.BatchNorm2d) and not bn.training and bn.track_running_stats \
                    and getattr(conv, "weight", None) is not None and conv.weight.dim() == 4:
                setattr(m, conv_name, _fold(conv, bn))
                setattr(m, bn_name, nn.Identity())
    return model


def _sequentials(model):
    return [m for m in model.modules() if isinstance(m, nn.Sequential)]


def join_bn_relu(model):
    """In every nn.Sequential, BatchNorm2d then nn.ReLU -> BatchNormReLU2d then ReLUInBatchNorm (in place)."""
    for seq in _sequentials(model):
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            bn, act = seq._modules[a], seq._modules[b]
            if type(bn) is nn.BatchNorm2d and type(act) is nn.ReLU:
                seq._modules[a] = BatchNormReLU2d.from_bn(bn)
                seq._modules[b] = ReLUInBatchNorm(act.inplace)
    return model


def split_bn_relu(model):
    """The inverse of join_bn_relu (in place)."""
    for seq in _sequentials(model):
        for name, m in list(seq._modules.items()):
            if type(m) is BatchNormReLU2d:
                seq._modules[name] = m.to_bn()
            elif type(m) is ReLUInBatchNorm:
                seq._modules[name] = nn.ReLU(m.inplace)
    return model


def swap_pools(model, to_fused=True):
    """Every nn.MaxPool2d(3, 2, 1) submodule -> MaxPool3x3s2 (to_fused), or back (in place; `model` itself is
    kept)."""
    def convert(m):
        if m is model:
            return None
        if to_fused and MaxPool3x3s2.replaces(m):
            return MaxPool3x3s2().train(m.training)
        if not to_fused and type(m) is MaxPool3x3s2:
            return nn.MaxPool2d(3, 2, 1).train(m.training)
        return None
    return _swap(model, convert)


def fuse_in_place(model, fold_bn):
    """`model` with its units fused (converted in place where possible; returns the result)."""
    model = swap_pools(_swap(model, lambda m: _first("fuse", m)))
    for r in _RULES.values():
        if r.after_fuse is not None:
            model = r.after_fuse(model)
    if fold_bn:
        return _prepack_all(_fold_all(split_bn_relu(model)))
    return join_bn_relu(model)


def _prepack_all(model):
    """Let every unit with a whole-unit inference op (a `prepack` method: models/_units.py) pack its folded
    weights once, now that the BatchNorms are folded."""
    for m in model.modules():
        prepack = getattr(m, "prepack", None)
        if callable(prepack):
            prepack()
    return model


def unfuse_in_place(model):
    """`model` with its units eager again and its BatchNorm + ReLU pairs split (BN folds stay folded)."""
    model = swap_pools(_swap(split_bn_relu(model), lambda m: _first("unfuse", m)), to_fused=False)
    for r in _RULES.values():
        if r.after_unfuse is not None:
            model = r.after_unfuse(model)
    return model
