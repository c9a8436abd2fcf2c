"""Model registry: CIFAR-style ResNet teachers and this package's ShuffleNet students.

The ResNets follow the CIFAR ResNets of the CRD benchmark code (RepDistiller, `models/resnet.py`):
a 3x3 stem, three stages of BasicBlocks (n = (depth - 2) / 6 blocks each, strides 1, 2, 2), global
average pooling and a linear classifier.  `resnet8x4` / `resnet32x4` use widths [32, 64, 128, 256] as
there; `resnet8` ... `resnet110` use [16, 16, 32, 64].  The `*_tiny` ones are ours: small enough to
train on two CPU cores in seconds.

Every model built here exposes its stages through `feature_stages(model)` (for the FitNets hint).
"""
import re

from torch import nn
import torch.nn.functional as F

__all__ = ["CifarResNet", "build_model", "model_names", "feature_stages", "is_student_name"]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class CifarResNet(nn.Module):
    def __init__(self, depth, widths, num_classes=10, in_channels=3):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2 for a CIFAR BasicBlock ResNet, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._stage(widths[0], widths[1], n, 1)
        self.layer2 = self._stage(widths[1], widths[2], n, 2)
        self.layer3 = self._stage(widths[2], widths[3], n, 2)
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _stage(inplanes, planes, n, stride):
        blocks = [BasicBlock(inplanes, planes, stride)]
        blocks += [BasicBlock(planes, planes) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def feature_stages(self):
        return [self.layer1, self.layer2, self.layer3]

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


_RESNETS = {
    "resnet8": (8, [16, 16, 32, 64]),
    "resnet14": (14, [16, 16, 32, 64]),
    "resnet20": (20, [16, 16, 32, 64]),
    "resnet32": (32, [16, 16, 32, 64]),
    "resnet44": (44, [16, 16, 32, 64]),
    "resnet56": (56, [16, 16, 32, 64]),
    "resnet110": (110, [16, 16, 32, 64]),
    "resnet8x4": (8, [32, 64, 128, 256]),
    "resnet32x4": (32, [32, 64, 128, 256]),
    # ours, for CPU-sized runs (digits, tests)
    "resnet8_tiny": (8, [8, 8, 16, 32]),
    "resnet14_tiny": (14, [8, 8, 16, 32]),
    "resnet20_tiny": (20, [16, 16, 32, 64]),
}
_STUDENTS = ("shufflenet_v1", "shufflenet_v2")


def model_names():
    return sorted(_RESNETS) + list(_STUDENTS)


def is_student_name(name):
    return name in _STUDENTS


def build_model(name, num_classes, *, width_mult=1.0, groups=3, fused=True, small_input=True, mid_channels=None):
    """Build a registered model by name.

    `width_mult`, `groups`, `fused`, `small_input` and `mid_channels` (per-unit branch widths of a pruned
    student) apply to the ShuffleNet students (`sk.models.shufflenet_v1/_v2`); the ResNets take only
    `num_classes`.
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if name in _RESNETS:
        depth, widths = _RESNETS[name]
        return CifarResNet(depth, widths, num_classes=num_classes)
    if name in _STUDENTS:
        try:
            from .. import models as skm
        except ImportError as e:  # the models package lands on another branch
            raise ValueError(f"model {name!r} needs shufflekern.models, which is not available: {e}") from e
        if name == "shufflenet_v1":
            return skm.shufflenet_v1(groups=groups, width_mult=width_mult, num_classes=num_classes,
                                     fused=fused, small_input=small_input, mid_channels=mid_channels)
        return skm.shufflenet_v2(width_mult=width_mult, num_classes=num_classes, fused=fused,
                                 small_input=small_input, mid_channels=mid_channels)
    raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(model_names())}")


def feature_stages(model):
    """The model's stages, shallow to deep (the FitNets hint taps one of them)."""
    if hasattr(model, "feature_stages"):
        return list(model.feature_stages())
    # torchvision-style ShuffleNets name them stage2..stage4; ResNets layer1..layer4.
    for pattern in (r"stage(\d+)$", r"layer(\d+)$"):
        found = sorted(((int(m.group(1)), mod) for n, mod in model.named_children()
                        if (m := re.match(pattern, n))), key=lambda t: t[0])
        if found:
            return [mod for _, mod in found]
    if isinstance(getattr(model, "stages", None), (nn.ModuleList, nn.Sequential)):
        return list(model.stages)
    raise ValueError(f"cannot find the stages of {type(model).__name__} for the hint: give it a "
                     "feature_stages() method or children named stageN/layerN")
