"""Model registry: CIFAR-style ResNet teachers and this package's ShuffleNet students.

The ResNets follow the CIFAR ResNets of the CRD benchmark code (RepDistiller, `models/resnet.py`):
a 3x3 stem, three stages of BasicBlocks (n = (depth - 2) / 6 blocks each, strides 1, 2, 2), global
average pooling and a linear classifier.  `resnet8x4` / `resnet32x4` use widths [32, 64, 128, 256] as
there; `resnet8` ... `resnet110` use [16, 16, 32, 64].  The `*_tiny` ones are ours: small enough to
train on two CPU cores in seconds.

`vgg8` ... `vgg19` are RepDistiller's CIFAR VGGs with BatchNorm (`models/vgg.py`, the `*_bn` variants its
registry names vgg8 ... vgg19): five conv blocks (3x3 conv with bias, BN, ReLU; no ReLU after a block's
last BN, it is applied as a separate module), max-pooling between blocks 0-1, 1-2, 2-3 (and 3-4 on 64x64
inputs), global average pooling, Linear(512, classes).  `mobilenetv2` is RepDistiller's `mobile_half`
(`models/mobilenetv2.py`: expansion 6, width 0.5, a stride-2 stem, last 1x1 conv of 1280 channels).
Parameter counts equal RepDistiller's (tests/test_zoo.py); parameter names too, so their state dicts load.

Every model built here exposes its stages through `feature_stages(model)` (the FitNets hint and attention
transfer tap their outputs: RepDistiller's feat[1:-1]) and its penultimate features through
`penultimate_module(model)` (a forward pre-hook on it sees them; relational KD).
"""
import math
import re

import torch

from torch import nn
import torch.nn.functional as F

__all__ = ["CifarResNet", "CifarVGG", "MobileNetV2", "build_model", "model_names", "feature_stages",
           "penultimate_module", "is_student_name"]


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


def _repdistiller_init(model):
    # RepDistiller's _initialize_weights (VGG and MobileNetV2)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0, math.sqrt(2.0 / n))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class CifarVGG(nn.Module):
    """CIFAR VGG with BatchNorm (RepDistiller's VGG(cfg, batch_norm=True)); `cfg` is five lists of widths."""

    def __init__(self, cfg, num_classes=10, in_channels=3):
        super().__init__()
        widths = [in_channels] + [block[-1] for block in cfg]
        for i, block in enumerate(cfg):
            setattr(self, f"block{i}", self._block(block, widths[i]))
        for i in range(4):
            setattr(self, f"pool{i}", nn.MaxPool2d(kernel_size=2, stride=2))
        # the ReLU after each block, as modules so that a forward hook sees the stage outputs (RepDistiller's
        # f1 ... f4 are these, post-activation)
        self.act = nn.ModuleList(nn.ReLU() for _ in range(5))
        self.classifier = nn.Linear(cfg[-1][-1], num_classes)
        _repdistiller_init(self)

    @staticmethod
    def _block(widths, in_channels):
        layers = []
        for v in widths:
            layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            in_channels = v
        return nn.Sequential(*layers[:-1])

    def feature_stages(self):
        return [self.act[1], self.act[2], self.act[3], self.act[4]]

    def penultimate_module(self):
        return self.classifier

    def forward(self, x):
        h = x.shape[2]
        x = self.pool0(self.act[0](self.block0(x)))
        x = self.pool1(self.act[1](self.block1(x)))
        x = self.pool2(self.act[2](self.block2(x)))
        x = self.act[3](self.block3(x))
        if h == 64:
            x = self.pool3(x)
        x = self.act[4](self.block4(x))
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


_VGG_CFG = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def _conv_bn(inp, oup, kernel, stride):
    return nn.Sequential(nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(oup),
                         nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual: stride must be 1 or 2, got {stride}")
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup))

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """RepDistiller's CIFAR MobileNetV2 (`mobilenetv2_T_w(T, W)`; `mobile_half` = T 6, W 0.5)."""

    def __init__(self, expansion=6, width_mult=0.5, num_classes=100, in_channels=3):
        super().__init__()
        setting = [(1, 16, 1, 1), (expansion, 24, 2, 1), (expansion, 32, 3, 2), (expansion, 64, 4, 2),
                   (expansion, 96, 3, 1), (expansion, 160, 3, 2), (expansion, 320, 1, 1)]  # t, c, n, s
        channels = int(32 * width_mult)
        self.conv1 = _conv_bn(in_channels, channels, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in setting:
            out = int(c * width_mult)
            layers = []
            for stride in [s] + [1] * (n - 1):
                layers.append(InvertedResidual(channels, out, stride, t))
                channels = out
            self.blocks.append(nn.Sequential(*layers))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn(channels, self.last_channel, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        _repdistiller_init(self)

    def feature_stages(self):
        # RepDistiller's f1 ... f4
        return [self.blocks[1], self.blocks[2], self.blocks[4], self.blocks[6]]

    def penultimate_module(self):
        return self.classifier

    def forward(self, x):
        x = self.conv1(x)
        for block in self.blocks:
            x = block(x)
        x = self.conv2(x)
        # RepDistiller: AvgPool2d(input_size // 16, ceil_mode=True) on the 2x2 map of a 32x32 input, i.e.
        # global average pooling there; global pooling here for any input size.
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


def model_names():
    return sorted(_RESNETS) + list(_VGG_CFG) + ["mobilenetv2"] + list(_STUDENTS)


def is_student_name(name):
    return name in _STUDENTS


def build_model(name, num_classes, *, width_mult=1.0, groups=3, fused=True, small_input=True, mid_channels=None):
    """Build a registered model by name.

    `width_mult`, `groups`, `fused`, `small_input` and `mid_channels` (per-unit branch widths of a pruned
    student) apply to the ShuffleNet students (`sk.models.shufflenet_v1/_v2`); the ResNets, VGGs and
    `mobilenetv2` take only `num_classes`.
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if name in _RESNETS:
        depth, widths = _RESNETS[name]
        return CifarResNet(depth, widths, num_classes=num_classes)
    if name in _VGG_CFG:
        return CifarVGG(_VGG_CFG[name], num_classes=num_classes)
    if name == "mobilenetv2":
        return MobileNetV2(expansion=6, width_mult=0.5, num_classes=num_classes)
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


def penultimate_module(model):
    """The classifier whose input is the penultimate (pooled) feature vector: model.penultimate_module() if
    defined, else the model's last nn.Linear (the ResNets' and ShuffleNets' `fc`).  A forward pre-hook on
    it sees the features (relational KD)."""
    if hasattr(model, "penultimate_module"):
        return model.penultimate_module()
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    if last is None:
        raise ValueError(f"cannot find the classifier of {type(model).__name__} (no nn.Linear) for the "
                         "penultimate features: give it a penultimate_module() method")
    return last
