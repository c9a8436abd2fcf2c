"""torch.nn modules over the fused ops."""
from torch import nn

from . import functional as F

__all__ = ["ChannelShuffle", "KDKLDiv", "KDLoss"]


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


class KDKLDiv(nn.Module):
    """`sk.kd_kl_div` as a module: forward(student_logits, teacher_logits)."""

    def __init__(self, temperature: float = 1.0, reduction: str = "batchmean"):
        super().__init__()
        _check_kd_module("KDKLDiv", temperature, 1.0, reduction)
        self.temperature = float(temperature)
        self.reduction = reduction

    def forward(self, student_logits, teacher_logits):
        return F.kd_kl_div(student_logits, teacher_logits, temperature=self.temperature, reduction=self.reduction)

    def extra_repr(self):
        return f"temperature={self.temperature}, reduction={self.reduction!r}"


class KDLoss(nn.Module):
    """`sk.kd_loss` as a module: forward(student_logits, teacher_logits, target)."""

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9, reduction: str = "batchmean",
                 ignore_index: int = -100):
        super().__init__()
        _check_kd_module("KDLoss", temperature, alpha, reduction)
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(f"KDLoss: ignore_index must be an int, got {type(ignore_index).__name__}")
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.reduction = reduction
        self.ignore_index = ignore_index

    def forward(self, student_logits, teacher_logits, target):
        return F.kd_loss(student_logits, teacher_logits, target, temperature=self.temperature, alpha=self.alpha,
                         reduction=self.reduction, ignore_index=self.ignore_index)

    def extra_repr(self):
        return (f"temperature={self.temperature}, alpha={self.alpha}, reduction={self.reduction!r}, "
                f"ignore_index={self.ignore_index}")


def _check_kd_module(op, temperature, alpha, reduction):
    import math

    from ._validate import check_number, kd_reduction_code
    temperature = check_number(op, "temperature", temperature)
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"{op}: temperature must be a finite number > 0, got {temperature}")
    if not math.isfinite(check_number(op, "alpha", alpha)):
        raise ValueError(f"{op}: alpha must be finite, got {alpha}")
    kd_reduction_code(op, reduction)
