"""Reference ShuffleNet V1 / V2 models, eager and fused (`sk.models.shufflenet_v1`, `sk.models.shufflenet_v2`)."""
from .shufflenet_v1 import FusedShuffleV1Unit, ShuffleNetV1, ShuffleV1Unit, shufflenet_v1
from .shufflenet_v1 import v1_channels as shufflenet_v1_channels
from .shufflenet_v2 import FusedInvertedResidual, InvertedResidual, ShuffleNetV2, shufflenet_v2

__all__ = ["shufflenet_v1", "shufflenet_v2", "ShuffleNetV1", "ShuffleNetV2", "ShuffleV1Unit",
           "FusedShuffleV1Unit", "InvertedResidual", "FusedInvertedResidual", "shufflenet_v1_channels"]
