"""shufflekern: fused channel-shuffle + pointwise group conv and distillation-loss kernels for PyTorch.

    import shufflekern as sk
    y = sk.channel_shuffle(x, groups=3)
"""
import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C  # noqa: F401
from . import ops  # noqa: F401
from ._backend import backend, get_backend, set_backend
from ._info import info
from ._malloc import malloc_state, tune_malloc
from .functional import *  # noqa: F401,F403
from .functional import __all__ as _functional_all
from . import nn  # noqa: E402
from . import testing  # noqa: E402
from . import models  # noqa: E402
from .fuse import fuse, unfuse  # noqa: E402

__version__ = "0.1.0"
__all__ = list(_functional_all) + ["backend", "get_backend", "set_backend", "info", "nn",
                                  "models", "fuse", "unfuse", "testing", "tune_malloc", "malloc_state"]
