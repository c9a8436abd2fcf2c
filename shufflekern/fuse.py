"""sk.fuse / sk.unfuse: swap ShuffleNet units between their eager and fused forms.

Both walk the model and replace units in a copy (the argument is not modified), so they work on this
package's models, on torchvision.models.ShuffleNetV2 (its InvertedResidual units are recognised) and on
any model that embeds such units.  Weights and the train/eval mode are kept.  Unless it folds BatchNorm,
`fuse` also turns every BatchNorm2d directly followed by a ReLU in an nn.Sequential (the stems, V2's
branches and conv5) into one BatchNormReLU2d (same state_dict; the ReLU becomes a ReLUInBatchNorm
placeholder); `unfuse` turns them back.

How each unit converts is written next to it (the `UnitRule` each of shufflekern/models/shufflenetv1.py
and shufflenetv2.py registers); shufflekern/models/_fusing.py walks the model and dispatches to the rules.
"""
import copy

from torch import nn

from . import models  # noqa: F401  (importing the unit modules registers their rules)
from .models import _fusing

__all__ = ["fuse", "unfuse"]


def fuse(model: nn.Module, *, fold_bn=None) -> nn.Module:
    """A copy of `model` whose ShuffleNet units run on the fused ops, with the same weights and outputs.

    fold_bn: fold BatchNorm into the preceding conv (an inference-only model: the BN layers are gone).
    Default: fold when `model` is in eval mode.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse: model must be an nn.Module, got {type(model).__name__}")
    if fold_bn is None:
        fold_bn = not model.training
    return _fusing.fuse_in_place(copy.deepcopy(model), fold_bn)


def unfuse(model: nn.Module) -> nn.Module:
    """A copy of `model` made of plain torch modules again (for torch.export, ONNX, other runtimes).
    BatchNorms folded by `fuse` stay folded (convs with a bias)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"unfuse: model must be an nn.Module, got {type(model).__name__}")
    return _fusing.unfuse_in_place(copy.deepcopy(model))
