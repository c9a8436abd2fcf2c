"""Losses: Hinton KD (fused `sk.kd_loss` or its eager reference), the FitNets hint, plain CE.

    kd(s, t, y) = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)

`kd_loss_eager` is the same loss from stock PyTorch ops (what `--no-fused` runs, and the reference the
fused op is compared with).  It follows DESIGN.md: rows are the leading dims, `batchmean` divides by
the number of counted rows, rows whose target is `ignore_index` count in neither term.
"""
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["kd_loss_eager", "kd_loss_fused", "HintLoss"]


def kd_loss_eager(student_logits, teacher_logits, target, *, temperature=4.0, alpha=0.9,
                  reduction="batchmean", ignore_index=-100):
    dtype = student_logits.dtype
    c = student_logits.shape[-1]
    s = student_logits.float().reshape(-1, c)
    t = teacher_logits.float().reshape(-1, c)
    y = target.reshape(-1)
    keep = y != ignore_index
    log_ps = F.log_softmax(s / temperature, dim=-1)
    log_pt = F.log_softmax(t / temperature, dim=-1)
    pt = log_pt.exp()
    # xlogy gives 0 * log 0 = 0 for teacher probabilities that are exactly 0 (logit -inf).
    kl_rows = (torch.xlogy(pt, pt) - pt * log_ps).sum(-1)
    kl_rows = temperature ** 2 * torch.where(keep, kl_rows, torch.zeros_like(kl_rows))
    ce_rows = F.cross_entropy(s, y, ignore_index=ignore_index, reduction="none")
    rows = alpha * kl_rows + (1 - alpha) * ce_rows
    if reduction == "none":
        return rows.reshape(target.shape).to(dtype)
    if reduction == "sum":
        return rows.sum().to(dtype)
    n = keep.sum().clamp_min(1)
    if reduction == "batchmean":
        return (rows.sum() / n).to(dtype)
    if reduction == "mean":
        return (alpha * kl_rows.sum() / (n * c) + (1 - alpha) * ce_rows.sum() / n).to(dtype)
    raise ValueError(f"reduction must be 'batchmean', 'sum', 'mean' or 'none', got {reduction!r}")


def kd_loss_fused(student_logits, teacher_logits, target, **kw):
    from .. import kd_loss  # sk.kd_loss: the fused op

    return kd_loss(student_logits, teacher_logits, target, **kw)


def fused_available():
    from .. import functional

    return hasattr(functional, "kd_loss")


class HintLoss(nn.Module):
    """FitNets hint: MSE between a 1x1-conv-adapted student feature map and the teacher's.

    If the spatial sizes differ, the larger map is average-pooled to the smaller one's size.
    """

    def __init__(self, student_channels, teacher_channels):
        super().__init__()
        self.adapter = nn.Conv2d(student_channels, teacher_channels, 1, bias=False)

    def forward(self, f_student, f_teacher):
        f_student = self.adapter(f_student)
        hs, ht = f_student.shape[-2:], f_teacher.shape[-2:]
        if hs != ht:
            size = (min(hs[0], ht[0]), min(hs[1], ht[1]))
            f_student = F.adaptive_avg_pool2d(f_student, size)
            f_teacher = F.adaptive_avg_pool2d(f_teacher, size)
        return F.mse_loss(f_student.float(), f_teacher.float())
