"""Losses: Hinton KD (fused `sk.kd_loss` or its eager reference), Decoupled KD and attention transfer
(fused `sk.dkd_loss` / `sk.at_loss` or their eager references), relational KD (eager), the FitNets
hint, plain CE.

    kd(s, t, y) = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)

`kd_loss_eager` is the same loss from stock PyTorch ops (what `--no-fused` runs, and the reference the
fused op is compared with).  It follows DESIGN.md: rows are the leading dims, `batchmean` divides by
the number of counted rows, rows whose target is `ignore_index` count in neither term.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["kd_loss_eager", "kd_loss_fused", "HintLoss", "dkd_loss_eager", "dkd_loss_fused", "at_loss_eager",
           "at_loss_fused", "at_pool_pair", "attention_map", "rkd_loss_eager", "fused_op_available"]


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
    from .. import functional  # sk.kd_loss is functional.kd_loss: the fused op

    return functional.kd_loss(student_logits, teacher_logits, target, **kw)


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


# -- Decoupled KD (Zhao et al. 2022) ------------------------------------------------------------------
def _reduce_rows(rows, keep, reduction, c, dtype, shape):
    if reduction == "none":
        return rows.reshape(shape).to(dtype)
    if reduction == "sum":
        return rows.sum().to(dtype)
    n = keep.sum().clamp_min(1)
    if reduction == "batchmean":
        return (rows.sum() / n).to(dtype)
    if reduction == "mean":  # a KL term: counted rows x C elements, as torch's kl_div "mean"
        return (rows.sum() / (n * c)).to(dtype)
    raise ValueError(f"reduction must be 'batchmean', 'sum', 'mean' or 'none', got {reduction!r}")


def dkd_loss_eager(student_logits, teacher_logits, target, *, temperature=4.0, alpha=1.0, beta=8.0,
                   reduction="batchmean", ignore_index=-100):
    """Decoupled KD as mdistiller computes it (`mdistiller/distillers/DKD.py`, `dkd_loss`), per row:

        TCKD = T^2 * KL([p_t, 1 - p_t] of the teacher || the same of the student),  p = softmax(z / T)
               at the target class, the binary distributions built by summing the softmax (cat_mask)
        NCKD = T^2 * KL(softmax(t/T - 1000*gt) || softmax(s/T - 1000*gt))   (the non-target classes)
        loss = alpha * TCKD + beta * NCKD

    mdistiller divides the summed rows by the batch size (= `batchmean` here).  Rows whose target is
    `ignore_index` count nowhere (not in the sum, not in the divisor; 0 under `none`); all ignored -> 0.
    `mean` divides by counted rows x C (a KL term, as kd_loss's).  Computed in fp32 (fp64 stays fp64),
    returned in the input dtype.  This is the reference the fused `sk.dkd_loss` is tested against, and
    what `--no-fused` runs.  One deviation in evaluation, not in value: the binary distributions are
    formed in log space (log p(rest) from the non-target log-sum-exp), where mdistiller takes the log of
    the summed softmax and gets -inf once the student's non-target mass underflows.
    """
    dtype = student_logits.dtype
    work = torch.float64 if dtype == torch.float64 else torch.float32
    c = student_logits.shape[-1]
    s = student_logits.to(work).reshape(-1, c)
    t = teacher_logits.to(work).reshape(-1, c)
    y = target.reshape(-1)
    keep = y != ignore_index
    y_safe = torch.where(keep, y, torch.zeros_like(y))
    gt = torch.zeros_like(s).scatter_(1, y_safe.unsqueeze(1), 1).bool()
    # The binary distributions [p(target), p(rest)] in log space: log p(target) from log_softmax, log p(rest)
    # from the non-target log-sum-exp (mdistiller sums the softmax and takes the log, which is -inf once the
    # rest underflows; same value otherwise).
    def log_binary(z):
        z = z / temperature
        lse = torch.logsumexp(z, dim=1, keepdim=True)
        log_target = z.gather(1, y_safe.unsqueeze(1)) - lse
        log_rest = torch.logsumexp(z.masked_fill(gt, float("-inf")), dim=1, keepdim=True) - lse
        return torch.cat([log_target, log_rest], dim=1)

    log_b_s, log_b_t = log_binary(s), log_binary(t)
    b_t = log_b_t.exp()
    # F.kl_div(log b_s, b_t) elementwise: b_t * (log b_t - log b_s), 0 where b_t == 0
    tckd = torch.where(b_t > 0, b_t * (log_b_t - log_b_s), torch.zeros_like(b_t)).sum(1) * temperature ** 2
    # NCKD exactly as mdistiller: the target logit pushed down by 1000 before the softmaxes
    # (the teacher's log-probabilities from log_softmax, so that the target column, whose probability is
    # 0, has a finite log and a zero gradient; a teacher logit of -inf contributes 0)
    log_p_t2 = F.log_softmax(t / temperature - 1000.0 * gt, dim=1)
    log_p_s2 = F.log_softmax(s / temperature - 1000.0 * gt, dim=1)
    p_t2 = log_p_t2.exp()
    nckd = torch.where(p_t2 > 0, p_t2 * (log_p_t2 - log_p_s2), torch.zeros_like(p_t2)).sum(1) * temperature ** 2
    rows = alpha * tckd + beta * nckd
    rows = torch.where(keep, rows, torch.zeros_like(rows))
    return _reduce_rows(rows, keep, reduction, c, dtype, target.shape)


def dkd_loss_fused(student_logits, teacher_logits, target, **kw):
    from .. import functional

    return functional.dkd_loss(student_logits, teacher_logits, target, **kw)


# -- attention transfer (Zagoruyko & Komodakis 2017) ----------------------------------------------------
def _check_at_pair(f_student, f_teacher, op="at_loss"):
    for name, f in (("f_student", f_student), ("f_teacher", f_teacher)):
        if not isinstance(f, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a Tensor, got {type(f).__name__}")
        if f.dim() < 2:
            raise ValueError(f"{op}: {name} must be [N, C, ...] (a feature map), got shape {tuple(f.shape)}")
    if f_student.shape[0] != f_teacher.shape[0]:
        raise ValueError(f"{op}: f_student and f_teacher must have the same batch size N, got "
                         f"{f_student.shape[0]} and {f_teacher.shape[0]}")
    if f_student.shape[2:].numel() != f_teacher.shape[2:].numel():
        raise ValueError(f"{op}: f_student and f_teacher must have the same number of positions H*W, got "
                         f"{tuple(f_student.shape[2:])} and {tuple(f_teacher.shape[2:])} (pool the larger "
                         "map first, as sk.nn.ATLoss does)")


def attention_map(f):
    """RepDistiller's `at(f)` with p = 2: normalize(f.pow(2).mean(1).view(N, -1)) (unit L2 norm per sample)."""
    return F.normalize(f.pow(2).mean(1).reshape(f.shape[0], -1))


def at_loss_eager(f_student, f_teacher):
    """Attention transfer for one pair, as RepDistiller's `distiller_zoo/AT.py` (`Attention.at_loss` after
    its pooling): `(at(f_s) - at(f_t)).pow(2).mean()`.  Channel counts may differ; N and H*W must match.
    Computed in fp32 (fp64 stays fp64), returned in the student's dtype.  The reference of the fused
    `sk.at_loss`, and what `--no-fused` runs."""
    _check_at_pair(f_student, f_teacher)
    dtype = f_student.dtype
    work = torch.float64 if dtype == torch.float64 else torch.float32
    a_s, a_t = attention_map(f_student.to(work)), attention_map(f_teacher.to(work))
    return (a_s - a_t).pow(2).mean().to(dtype)


def at_loss_fused(f_student, f_teacher):
    from .. import functional

    return functional.at_loss(f_student, f_teacher)


def at_pool_pair(f_student, f_teacher):
    """Pool the larger map (adaptive average) to the smaller one's H x W, as mdistiller / RepDistiller do
    before the attention loss (they pool to a square of the smaller H; this takes (min H, min W))."""
    hs, ht = tuple(f_student.shape[2:]), tuple(f_teacher.shape[2:])
    if hs != ht:
        size = tuple(min(a, b) for a, b in zip(hs, ht))
        if hs != size:
            f_student = F.adaptive_avg_pool2d(f_student, size)
        if ht != size:
            f_teacher = F.adaptive_avg_pool2d(f_teacher, size)
    return f_student, f_teacher


# -- relational KD (Park et al. 2019) -----------------------------------------------------------------
def _pdist(e, eps=1e-12):
    """RepDistiller's RKDLoss.pdist(e, squared=False): Euclidean distances, diagonal 0."""
    e_square = e.pow(2).sum(dim=1)
    prod = e @ e.t()
    res = (e_square.unsqueeze(1) + e_square.unsqueeze(0) - 2 * prod).clamp(min=eps).sqrt()
    res = res.clone()
    res[range(len(e)), range(len(e))] = 0
    return res


def _rkd_angles(e, eps=1e-12):
    """All angle cosines cos[a, b, c] = <n(x_b - x_a), n(x_c - x_a)> (n = F.normalize, so a zero difference
    gives 0), as a flat B^3 vector in RepDistiller's order, from the B x B Gram matrix: never the B x B x D
    tensor of differences.  (x_b - x_a).(x_c - x_a) = G_bc - G_ab - G_ac + G_aa.  The features are centred
    first (translation leaves every difference unchanged and the Gram entries smaller)."""
    e = e - e.mean(0, keepdim=True)
    g = e @ e.t()
    diag = g.diagonal()
    sq = (diag.unsqueeze(0) - 2 * g + diag.unsqueeze(1)).clamp(min=0)  # |x_b - x_a|^2 at [a, b]
    inv = sq.clamp(min=eps * eps).rsqrt()  # 1 / max(|x_b - x_a|, eps), F.normalize's divisor
    # x_a - x_a is exactly 0, and so is the difference of two equal samples, where the Gram form leaves
    # rounding noise: a squared distance below the rounding level of the Gram entries counts as 0 (then
    # F.normalize gives the zero vector and the cosine 0, as RepDistiller's construction does).
    tol = 4 * math.sqrt(e.shape[1]) * torch.finfo(e.dtype).eps * (diag.unsqueeze(0) + diag.unsqueeze(1))
    inv = torch.where(sq > tol, inv, torch.zeros_like(inv))
    num = g.unsqueeze(0) - g.unsqueeze(2) - g.unsqueeze(1) + diag.view(-1, 1, 1)  # [a, b, c]
    return (num * inv.unsqueeze(2) * inv.unsqueeze(1)).reshape(-1)


def rkd_loss_eager(f_student, f_teacher, *, distance_weight=25.0, angle_weight=50.0):
    """RepDistiller's RKDLoss (`distiller_zoo/RKD.py`): distance_weight * smooth_l1(d_s / mean d_s,
    d_t / mean d_t) + angle_weight * smooth_l1(angles_s, angles_t), on features flattened to [B, D]; the
    teacher side without gradient.  Always fp32 (fp64 stays fp64) with autocast off, returned in fp32/fp64.
    The angle term comes from the Gram matrix (`_rkd_angles`), equal to RepDistiller's B x B x D
    construction (tested in fp64).  RKD costs O(B^2 D + B^3): eager PyTorch is right for it."""
    if f_student.dim() < 2 or f_teacher.dim() < 2:
        raise ValueError(f"rkd_loss: features must be [B, ...], got {tuple(f_student.shape)} and "
                         f"{tuple(f_teacher.shape)}")
    if f_student.shape[0] != f_teacher.shape[0]:
        raise ValueError(f"rkd_loss: f_student and f_teacher must have the same batch size, got "
                         f"{f_student.shape[0]} and {f_teacher.shape[0]}")
    if f_student.shape[0] < 2:
        raise ValueError("rkd_loss: needs a batch of at least 2 samples (distances between samples)")
    work = torch.float64 if f_student.dtype == torch.float64 else torch.float32
    with torch.autocast(f_student.device.type, enabled=False):
        s = f_student.reshape(f_student.shape[0], -1).to(work)
        t = f_teacher.reshape(f_teacher.shape[0], -1).to(work)
        with torch.no_grad():
            t_d = _pdist(t)
            t_d = t_d / t_d[t_d > 0].mean()
            t_angle = _rkd_angles(t)
        d = _pdist(s)
        d = d / d[d > 0].mean()
        loss_d = F.smooth_l1_loss(d, t_d)
        loss_a = F.smooth_l1_loss(_rkd_angles(s), t_angle)
        return distance_weight * loss_d + angle_weight * loss_a


def fused_op_available(name):
    """Whether this build has the fused op `shufflekern.functional.<name>` (kd_loss, dkd_loss, at_loss)."""
    from .. import functional

    return hasattr(functional, name)
