"""torch.nn modules over the fused ops."""
import math

import torch
from torch import nn

from . import functional as F

__all__ = ["ChannelShuffle", "ShuffleConv1x1", "KDKLDiv", "KDLoss", "DKDLoss", "ATLoss", "RKDLoss"]


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


class ShuffleConv1x1(nn.Module):
    """`nn.Conv2d(in_channels, out_channels, 1, groups=groups, bias=bias)` applied to
    `channel_shuffle(x, shuffle_groups)` (default: `groups`), in one kernel.

    Parameters are shaped and initialised like `nn.Conv2d`'s: weight `[out, in/groups, 1, 1]`, bias `[out]`.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int = 1, shuffle_groups=None,
                 bias: bool = False, device=None, dtype=None):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name != "groups" else 1):
                raise ValueError(f"ShuffleConv1x1: {name} must be a {'positive' if name == 'groups' else 'non-negative'}"
                                 f" int, got {v!r}")
        sg = groups if shuffle_groups is None else shuffle_groups
        if isinstance(sg, bool) or not isinstance(sg, int) or sg < 1:
            raise ValueError(f"ShuffleConv1x1: shuffle_groups must be a positive int or None, got {shuffle_groups!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"ShuffleConv1x1: in_channels ({in_channels}) and out_channels ({out_channels}) must be "
                             f"divisible by groups ({groups})")
        if in_channels % sg:
            raise ValueError(f"ShuffleConv1x1: in_channels ({in_channels}) must be divisible by shuffle_groups ({sg})")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.groups, self.shuffle_groups = groups, sg
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, 1, 1, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        # nn.Conv2d.reset_parameters: kaiming_uniform(a=sqrt(5)), bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1]
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, shuffle_groups=None) -> "ShuffleConv1x1":
        """The module computing `conv(channel_shuffle(x, shuffle_groups))` (default: conv.groups), with a copy
        of conv's parameters (requires_grad kept)."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"ShuffleConv1x1.from_conv: conv must be an nn.Conv2d, got {type(conv).__name__}")
        # With a 1x1 kernel, padding "same" and "valid" both mean no padding.
        padded = tuple(conv.padding) != (0, 0) if not isinstance(conv.padding, str) else False
        if (tuple(conv.kernel_size) != (1, 1) or tuple(conv.stride) != (1, 1) or tuple(conv.dilation) != (1, 1)
                or padded):
            raise ValueError("ShuffleConv1x1.from_conv: conv must be a 1x1 convolution with stride 1, dilation 1 "
                             f"and no padding, got {conv}")
        w = conv.weight
        m = cls(conv.in_channels, conv.out_channels, groups=conv.groups, shuffle_groups=shuffle_groups,
                bias=conv.bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            m.weight.copy_(w)
            m.weight.requires_grad_(w.requires_grad)
            if conv.bias is not None:
                m.bias.copy_(conv.bias)
                m.bias.requires_grad_(conv.bias.requires_grad)
        m.train(conv.training)
        return m

    def forward(self, x):
        return F.shuffle_conv1x1(x, self.weight, self.bias, groups=self.groups, shuffle_groups=self.shuffle_groups)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, groups={self.groups}, "
                f"shuffle_groups={self.shuffle_groups}, bias={self.bias is not None}")

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


class DKDLoss(nn.Module):
    """Decoupled KD (Zhao et al. 2022) as a module: forward(student_logits, teacher_logits, target) =
    `alpha * TCKD + beta * NCKD` as mdistiller computes it (T^2-scaled; rows whose target is ignore_index
    count nowhere).  Add the cross-entropy yourself (mdistiller: CE + warm-up factor * DKD).

    Which code runs: with fused=True, the fused op `shufflekern.functional.dkd_loss` (sk.dkd_loss) when this
    build has it, else the eager reference `shufflekern.distill.losses.dkd_loss_eager` (the same loss
    from stock PyTorch ops); `uses_fused` says which (also in the repr).  fused=False: always the eager
    reference.
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 1.0, beta: float = 8.0,
                 reduction: str = "batchmean", ignore_index: int = -100, fused: bool = True):
        super().__init__()
        _check_kd_module("DKDLoss", temperature, alpha, reduction)
        if not math.isfinite(_number("DKDLoss", "beta", beta)):
            raise ValueError(f"DKDLoss: beta must be finite, got {beta}")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(f"DKDLoss: ignore_index must be an int, got {type(ignore_index).__name__}")
        self.temperature, self.alpha, self.beta = float(temperature), float(alpha), float(beta)
        self.reduction, self.ignore_index, self.fused = reduction, ignore_index, bool(fused)

    @property
    def uses_fused(self):
        return self.fused and hasattr(F, "dkd_loss")

    def forward(self, student_logits, teacher_logits, target):
        kw = dict(temperature=self.temperature, alpha=self.alpha, beta=self.beta, reduction=self.reduction,
                  ignore_index=self.ignore_index)
        if self.uses_fused:
            return F.dkd_loss(student_logits, teacher_logits, target, **kw)
        from .distill.losses import dkd_loss_eager
        return dkd_loss_eager(student_logits, teacher_logits, target, **kw)

    def extra_repr(self):
        return (f"temperature={self.temperature}, alpha={self.alpha}, beta={self.beta}, "
                f"reduction={self.reduction!r}, ignore_index={self.ignore_index}, "
                f"path={'fused' if self.uses_fused else 'eager'}")


class ATLoss(nn.Module):
    """Attention transfer (Zagoruyko & Komodakis 2017) as RepDistiller / mdistiller compute it:
    forward(f_student, f_teacher) takes one feature map each or equal-length lists/tuples of them; each pair
    whose H x W differ has its larger map adaptive-average-pooled to the smaller one's size, then
    `at_loss(f_s, f_t) = mean((normalize(mean_c f_s^2) - normalize(mean_c f_t^2))^2)`; the pairs' losses
    are summed (RepDistiller returns the list and the trainer sums it; the weight, 1000 there, is yours).

    Which code runs: with fused=True, the fused op `shufflekern.functional.at_loss` (sk.at_loss) when this
    build has it, else the eager reference `shufflekern.distill.losses.at_loss_eager`; `uses_fused` says
    which.  fused=False: always the eager reference.
    """

    def __init__(self, fused: bool = True):
        super().__init__()
        self.fused = bool(fused)

    @property
    def uses_fused(self):
        return self.fused and hasattr(F, "at_loss")

    def forward(self, f_student, f_teacher):
        from .distill.losses import at_loss_eager, at_pool_pair
        single = isinstance(f_student, torch.Tensor)
        if single != isinstance(f_teacher, torch.Tensor):
            raise TypeError("ATLoss: f_student and f_teacher must both be tensors or both lists/tuples of "
                            f"tensors, got {type(f_student).__name__} and {type(f_teacher).__name__}")
        pairs = [(f_student, f_teacher)] if single else list(zip(f_student, f_teacher))
        if not single and len(f_student) != len(f_teacher):
            raise ValueError(f"ATLoss: f_student has {len(f_student)} feature maps, f_teacher "
                             f"{len(f_teacher)}: pass pairs")
        if not pairs:
            raise ValueError("ATLoss: no feature maps given")
        op = F.at_loss if self.uses_fused else at_loss_eager
        total = None
        for i, (fs, ft) in enumerate(pairs):
            for name, f in (("f_student", fs), ("f_teacher", ft)):
                if not isinstance(f, torch.Tensor) or f.dim() != 4:
                    raise ValueError(f"ATLoss: {name}[{i}] must be a 4-D [N, C, H, W] tensor, got "
                                     f"{tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__}")
            fs, ft = at_pool_pair(fs, ft)
            loss = op(fs, ft)
            total = loss if total is None else total + loss
        return total

    def extra_repr(self):
        return f"path={'fused' if self.uses_fused else 'eager'}"


class RKDLoss(nn.Module):
    """Relational KD (Park et al. 2019) as RepDistiller computes it: forward(f_student, f_teacher) on the
    penultimate features [B, ...] = `distance_weight * distance + angle_weight * angle` (smooth-L1 of the
    mean-normalised pairwise distances and of all the triplet angle cosines; the teacher side without
    gradient).  Always eager (its cost is B^2: there is no fused kernel to call), in fp32 with autocast
    off, and the angle term from the B x B Gram matrix, without RepDistiller's B x B x D tensor."""

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0):
        super().__init__()
        for name, v in (("distance_weight", distance_weight), ("angle_weight", angle_weight)):
            if not math.isfinite(_number("RKDLoss", name, v)):
                raise ValueError(f"RKDLoss: {name} must be finite, got {v}")
        self.distance_weight, self.angle_weight = float(distance_weight), float(angle_weight)

    def forward(self, f_student, f_teacher):
        from .distill.losses import rkd_loss_eager
        return rkd_loss_eager(f_student, f_teacher, distance_weight=self.distance_weight,
                              angle_weight=self.angle_weight)

    def extra_repr(self):
        return f"distance_weight={self.distance_weight}, angle_weight={self.angle_weight}"


def _number(op, name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{op}: {name} must be a number, got {type(v).__name__}")
    return float(v)


def _check_kd_module(op, temperature, alpha, reduction):
    import math

    from ._validate import check_number, kd_reduction_code
    temperature = check_number(op, "temperature", temperature)
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"{op}: temperature must be a finite number > 0, got {temperature}")
    if not math.isfinite(check_number(op, "alpha", alpha)):
        raise ValueError(f"{op}: alpha must be finite, got {alpha}")
    kd_reduction_code(op, reduction)
