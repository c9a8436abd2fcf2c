"""Functional API: validates arguments (shufflekern._validate), asks the backend policy
(shufflekern._backend) which op runs the input, calls it.  Exact semantics: docs/semantics.md."""
from typing import Optional

import torch
from torch import Tensor

from . import ops  # noqa: F401  (registers the fake kernels, dtypes and Triton twins)
from ._backend import select
from ._validate import check_channel_shuffle, check_int, check_kd, check_shuffle_conv1x1
from ._validate import check_at_loss, check_dkd

__all__ = ["channel_shuffle", "shuffle_conv1x1", "kd_kl_div", "kd_loss", "dkd_loss", "at_loss"]


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """`torch.channel_shuffle(x, groups)` for a 4-D x in either memory format, differentiable.

    The output keeps x's memory format (x.suggest_memory_format()).  The backward is the inverse
    shuffle (groups' = C / groups).
    """
    if type(x) is not torch.Tensor or type(groups) is not int:
        check_channel_shuffle(x, groups)  # friendlier TypeErrors; plain calls get the C++ op's ValueErrors
    return select("channel_shuffle", x.device, x.dtype)(x, groups)


def shuffle_conv1x1(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, groups: int = 1,
                    shuffle_groups: Optional[int] = None) -> Tensor:
    """`F.conv2d(torch.channel_shuffle(x, sg), weight, bias, groups=groups)` in one kernel, differentiable.

    `sg = groups if shuffle_groups is None else shuffle_groups`; weight is `[C_out, C_in/groups, 1, 1]`
    (stride 1, no padding).  The shuffle is folded into the convolution's indexing: no shuffled copy of x
    is made.  The output keeps x's memory format (x.suggest_memory_format()).  dtypes: CPU float32, float64,
    bfloat16; CUDA float32, float64, float16, bfloat16 (C++/CUDA kernels; Triton: no float64); the 16-bit
    types accumulate in float32.  Another dtype raises a TypeError naming x and what each backend takes.
    """
    check_int("shuffle_conv1x1", "groups", groups, 1)
    sg = groups if shuffle_groups is None else shuffle_groups
    check_shuffle_conv1x1(x, weight, bias, groups, sg)
    return select("shuffle_conv1x1", x.device, x.dtype)(x, weight, bias, groups, sg)


def _kd(op, student_logits, teacher_logits, target, temperature, alpha, reduction, ignore_index):
    temperature, alpha, code = check_kd(op, student_logits, teacher_logits, target, temperature, alpha,
                                        reduction, ignore_index)
    grad = torch.is_grad_enabled()
    loss, _, _ = select("kd_loss_forward", student_logits.device, student_logits.dtype)(
        student_logits, teacher_logits, target, temperature, alpha, ignore_index, code,
        grad and student_logits.requires_grad, grad and teacher_logits.requires_grad)
    return loss


def kd_kl_div(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0,
              reduction: str = "batchmean") -> Tensor:
    """`T² · KL(softmax(t/T) ‖ softmax(s/T))` over the last (class) dimension; leading dims are rows.

    Eager equivalent: `F.kl_div(F.log_softmax(s/T, -1), F.log_softmax(t/T, -1), log_target=True,
    reduction=...) * T**2`, except that `batchmean` divides by the number of rows R = prod(leading dims)
    (torch.nn.KLDivLoss divides by size(0) only).  `mean` divides by R·C, `sum` sums, `none` returns the
    per-row loss of shape `s.shape[:-1]`.  Teacher probabilities that are exactly 0 (logit -inf)
    contribute 0.  Differentiable w.r.t. both logits (the teacher's gradient is computed only when it
    requires grad).  bf16/fp16 are computed in fp32 and returned in the input dtype.
    """
    return _kd("kd_kl_div", student_logits, teacher_logits, None, temperature, 1.0, reduction, -100)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, target: Optional[Tensor], *,
            temperature: float = 4.0, alpha: float = 0.9, reduction: str = "batchmean",
            ignore_index: int = -100) -> Tensor:
    """`alpha · kd_kl_div(s, t, T) + (1 − alpha) · cross_entropy(s, target)` (CE at temperature 1).

    target holds class indices of shape `s.shape[:-1]` (int64 or int32).  A row whose target is
    `ignore_index` counts in neither term (and is 0 under `none`); `batchmean` and the CE part of `mean`
    divide by the counted rows, the KL part of `mean` by counted rows × C.  If every row is ignored the
    loss is 0.  A target outside [0, C) that is not ignore_index raises: ValueError for CPU tensors (checked
    on the host); for CUDA tensors (and under sk.backend("emulated")) the kernel checks it without a host
    sync, as a device-side assertion: a RuntimeError naming it, which on a real GPU also leaves the CUDA
    context unusable (PyTorch's usual device-assert behaviour; the Triton backend checks on the host).
    """
    if target is None:
        raise TypeError("kd_loss: target must be a tensor of class indices; use sk.kd_kl_div for the KL term alone")
    return _kd("kd_loss", student_logits, teacher_logits, target, temperature, alpha, reduction, ignore_index)


# --- dkd_loss (begin) -----------------------------------------------------------------------------------
def dkd_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, *, temperature: float = 4.0,
             alpha: float = 1.0, beta: float = 8.0, reduction: str = "batchmean", ignore_index: int = -100) -> Tensor:
    """Decoupled KD (Zhao et al. 2022) as mdistiller's `dkd_loss` computes it: `alpha · TCKD + beta · NCKD`.

    Per row (class dim last, leading dims are rows), with p = softmax(z/T) and c = target:
    `TCKD = T² · KL([p_t[c], 1 − p_t[c]] ‖ [p_s[c], 1 − p_s[c]])` and
    `NCKD = T² · KL(softmax(t/T) over the classes ≠ c ‖ the same of s/T)`.  Needs C ≥ 2.
    Computed in one pass over each row from online softmax statistics; 1 − p[c] is the non-target
    softmax mass (its own log-sum-exp), never 1 minus a probability, so a confident teacher stays exact.
    Reductions as sk.kd_loss: `batchmean` divides the summed row losses by the number of counted rows
    (mdistiller's division by the batch size when no row is ignored), `mean` by counted rows × C, `sum`
    sums, `none` gives the per-row loss of shape `s.shape[:-1]`.  A row whose target is `ignore_index`
    counts nowhere (0 under `none`); if every row is ignored the loss is 0.  Teacher probabilities that are
    exactly 0 contribute 0; a row whose non-target teacher probabilities are all 0 has NCKD = 0.
    Differentiable w.r.t. both logits (the teacher's gradient is computed only when it requires grad).
    bf16/fp16 are computed in fp32 and returned in the input dtype.  A target outside [0, C) that is not
    ignore_index raises as in sk.kd_loss (ValueError on the host; a device-side assertion, RuntimeError,
    for CUDA tensors and under sk.backend("emulated")).
    """
    temperature, alpha, beta, code = check_dkd("dkd_loss", student_logits, teacher_logits, target, temperature,
                                               alpha, beta, reduction, ignore_index)
    grad = torch.is_grad_enabled()
    loss, _, _ = select("dkd_loss_forward", student_logits.device, student_logits.dtype)(
        student_logits, teacher_logits, target, temperature, alpha, beta, ignore_index, code,
        grad and student_logits.requires_grad, grad and teacher_logits.requires_grad)
    return loss
# --- dkd_loss (end) -------------------------------------------------------------------------------------


# ---- at_loss (issue 14) ------------------------------------------------------------------------------
def at_loss(f_student: Tensor, f_teacher: Tensor) -> Tensor:
    """Attention transfer (Zagoruyko & Komodakis), as RepDistiller's `distiller_zoo/AT.py` computes it (p = 2).

    For maps of shape `[N, C_s, H, W]` and `[N, C_t, H, W]` (channel counts may differ; N, H and W must be
    equal, else a ValueError naming f_teacher):

        a(f) = F.normalize(f.pow(2).mean(1).view(N, -1))      # per sample, over the H*W pixels; eps = 1e-12
        loss = (a(f_student) - a(f_teacher)).pow(2).mean()     # mean over N*H*W

    Returns a 0-dim tensor in the maps' dtype.  F.normalize's eps clamp is kept exactly: a sample whose
    `||f.pow(2).mean(1)||` is below 1e-12 is divided by 1e-12 and gets no gradient through the norm (torch's
    clamp_min).  Differentiable w.r.t. both maps (the teacher's gradient is computed only when it requires
    grad); not twice differentiable.  One fused kernel: each map is read once forward and once backward, its
    gradient written once; f.pow(2) is never materialised.  Sums: the channel mean of squares in float32
    (float64 for float64 maps), the per-sample norms and the loss's sums in float64 on CPU; on CUDA / Triton
    the per-sample norms in float32 (float64 for float64) and the loss's sum over samples in float64.  Both
    memory formats (each map in its own; any strides: copied to the suggested format first).  dtypes: CPU
    float32, float64; CUDA and Triton also float16 and bfloat16.  Empty maps (N, H*W or C = 0) raise.
    """
    check_at_loss(f_student, f_teacher)
    loss, _, _ = select("at_loss", f_student.device, f_student.dtype)(f_student, f_teacher)
    return loss
