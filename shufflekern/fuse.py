"""sk.fuse / sk.unfuse: swap ShuffleNet units between their eager and fused forms.

Both walk the model and replace units in a copy (the argument is not modified), so they work on this
package's models, on torchvision.models.ShuffleNetV2 (its InvertedResidual units are recognised) and on
any model that embeds such units.  Weights and the train/eval mode are kept.  Unless it folds BatchNorm,
`fuse` also turns every BatchNorm2d directly followed by a ReLU in an nn.Sequential (the stems, V2's
branches and conv5) into one BatchNormReLU2d (same state_dict; the ReLU becomes a ReLUInBatchNorm
placeholder); `unfuse` turns them back.
"""
import copy

from torch import nn

import sys

from .models import shufflenet_v1 as _v1_module  # noqa: F401  (the package re-exports a function of that name)

v1 = sys.modules[__package__ + ".models.shufflenet_v1"]
v2 = sys.modules[__package__ + ".models.shufflenet_v2"]
from .models._common import BatchNormReLU2d, ReLUInBatchNorm
from .models._common import fold_bn as _fold

__all__ = ["fuse", "unfuse"]


def _is_v2_unit(m):
    if isinstance(m, v2.InvertedResidual):
        return True
    try:  # torchvision is optional
        from torchvision.models.shufflenetv2 import InvertedResidual as TVUnit
    except ImportError:  # pragma: no cover
        return False
    return isinstance(m, TVUnit)


def _swap(model, rule):
    """Replace, depth first, every submodule for which `rule(m)` returns a module."""
    for name, child in list(model.named_children()):
        new = rule(child)
        if new is not None:
            setattr(model, name, new)
        else:
            _swap(child, rule)
    return model


def _fold_all(model):
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d (in a Sequential or a V1 unit)."""
    for m in model.modules():
        if isinstance(m, nn.Sequential):
            pairs = [(m, str(i), str(i + 1)) for i in range(len(m) - 1)]
        elif isinstance(m, (v1.ShuffleV1Unit, v1.FusedShuffleV1Unit)):
            pairs = [(m, f"conv{i}", f"bn{i}") for i in (1, 2, 3)]
        else:
            continue
        for parent, conv_name, bn_name in pairs:
            conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
            if isinstance(bn, nn.BatchNorm2d) and not bn.training and bn.track_running_stats \
                    and getattr(conv, "weight", None) is not None and conv.weight.dim() == 4:
                setattr(parent, conv_name, _fold(conv, bn))
                setattr(parent, bn_name, nn.Identity())
    return model


def fuse(model: nn.Module, *, fold_bn=None) -> nn.Module:
    """A copy of `model` whose ShuffleNet units run on the fused ops, with the same weights and outputs.

    fold_bn: fold BatchNorm into the preceding conv (an inference-only model: the BN layers are gone).
    Default: fold when `model` is in eval mode.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse: model must be an nn.Module, got {type(model).__name__}")
    if fold_bn is None:
        fold_bn = not model.training
    model = copy.deepcopy(model)

    def rule(m):
        if isinstance(m, (v1.FusedShuffleV1Unit, v2.FusedInvertedResidual)):
            return m
        if isinstance(m, v1.ShuffleV1Unit):
            return v1.convert_unit(m, v1.FusedShuffleV1Unit)
        if _is_v2_unit(m):
            return v2.convert_unit(m, v2.FusedInvertedResidual)
        return None

    model = _swap(model, rule) if rule(model) is None else rule(model)
    _link_pairs(model)
    if fold_bn:
        return _fold_all(_split_bn_relu(model))
    return _join_bn_relu(model)


def _sequentials(model):
    return [m for m in model.modules() if isinstance(m, nn.Sequential)]


def _join_bn_relu(model):
    """In every nn.Sequential, BatchNorm2d then nn.ReLU -> BatchNormReLU2d then ReLUInBatchNorm (in place)."""
    for seq in _sequentials(model):
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            bn, act = seq._modules[a], seq._modules[b]
            if type(bn) is nn.BatchNorm2d and type(act) is nn.ReLU:
                seq._modules[a] = BatchNormReLU2d.from_bn(bn)
                seq._modules[b] = ReLUInBatchNorm(act.inplace)
    return model


def _split_bn_relu(model):
    """The inverse of _join_bn_relu (in place)."""
    for seq in _sequentials(model):
        for name, m in list(seq._modules.items()):
            if type(m) is BatchNormReLU2d:
                seq._modules[name] = m.to_bn()
            elif type(m) is ReLUInBatchNorm:
                seq._modules[name] = nn.ReLU(m.inplace)
    return model


def _link_pairs(model):
    """A fused V2 unit followed, in the same Sequential, by another one hands it its output as two
    channel halves (no concatenation copy; see FusedInvertedResidual)."""
    for m in model.modules():
        if isinstance(m, nn.Sequential):
            for a, b in zip(m, list(m)[1:]):
                if isinstance(a, v2.FusedInvertedResidual) and isinstance(b, v2.FusedInvertedResidual):
                    a.emit_pair = True


def unfuse(model: nn.Module) -> nn.Module:
    """A copy of `model` made of plain torch modules again (for torch.export, ONNX, other runtimes).
    BatchNorms folded by `fuse` stay folded (convs with a bias)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"unfuse: model must be an nn.Module, got {type(model).__name__}")
    model = _split_bn_relu(copy.deepcopy(model))

    def rule(m):
        if isinstance(m, v1.FusedShuffleV1Unit):
            return v1.convert_unit(m, v1.ShuffleV1Unit)
        if isinstance(m, v2.FusedInvertedResidual):
            return v2.convert_unit(m, v2.InvertedResidual)
        return None

    return _swap(model, rule) if rule(model) is None else rule(model)
