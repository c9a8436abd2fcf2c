"""torch.nn modules over the fused ops."""
from torch import nn

from . import functional as F

__all__ = ["ChannelShuffle"]


class ChannelShuffle(nn.Module):
    """`nn.ChannelShuffle(groups)` on shufflekern's kernels."""

    def __init__(self, groups: int):
        super().__init__()
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"ChannelShuffle: groups must be a positive int, got {groups!r}")
        self.groups = groups

    def forward(self, x):
        return F.channel_shuffle(x, self.groups)

    def extra_repr(self):
        return f"groups={self.groups}"
