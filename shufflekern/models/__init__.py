"""Reference ShuffleNet V1 / V2 models, eager and fused (`sk.models.shufflenet_v1`, `sk.models.shufflenet_v2`).

Modules are named apart from their builders (torchvision's convention): `shufflenetv1` / `shufflenetv2`
hold the units, the networks, each unit's fuse rule and the builder re-exported here.
"""
from .shufflenetv1 import FusedShuffleV1Unit, ShuffleNetV1, ShuffleV1Unit, shufflenet_v1
from .shufflenetv1 import v1_channels as shufflenet_v1_channels
from .shufflenetv2 import FusedInvertedResidual, FusedUnitSequence, InvertedResidual, ShuffleNetV2, shufflenet_v2

__all__ = ["shufflenet_v1", "shufflenet_v2", "ShuffleNetV1", "ShuffleNetV2", "ShuffleV1Unit",
           "FusedShuffleV1Unit", "InvertedResidual", "FusedInvertedResidual", "FusedUnitSequence",
           "shufflenet_v1_channels"]
