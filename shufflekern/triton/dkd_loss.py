"""Triton kernel of Decoupled KD: the formulas of csrc/dkd_loss.h, one program per row.

Pass 1 keeps a per-lane online (max, sum) state of x = s/T and y = t/T (with a = sum e^{y-my}(y-x)) over
the NON-target classes (the target is masked like a padding lane, so 1 - p[c] is never a subtraction); the
lanes are merged as csrc/kd_loss.h merges blocks, then the target's logits join for the full log-sum-exp.
Pass 2 writes both gradients.  Exponentials are taken against a finite shift; p == 0 terms are masked.
"""
import torch
import triton
import triton.language as tl

from .._validate import KD_REDUCTIONS, check_kd_target_range
from .kd_loss import _kl_add, _kl_merge, _outputs, _reduce, _row_start, _rows


@triton.jit
def _softplus(z):
    """log(1 + e^z) without overflow or cancellation; log1p(v) as log(1 + v) v / ((1 + v) - 1) (Goldberg)."""
    v = tl.exp(-tl.abs(z))
    u = 1.0 + v
    return tl.maximum(z, 0.0) + tl.where(u == 1.0, v, tl.log(u) * v / tl.where(u == 1.0, 1.0, u - 1.0))


@triton.jit
def _dkd_loss_kernel(s_ptr, t_ptr, tgt_ptr, gs_ptr, gt_ptr, loss_ptr, par_ptr, C, s_stride, t_stride, ignore_index,
                     GRAD_S: tl.constexpr, GRAD_T: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    row, s_row, t_row, inv_t, temperature, alpha = _row_start(s_ptr, t_ptr, par_ptr, s_stride, t_stride)
    beta = tl.load(par_ptr + 3)
    w = tl.load(par_ptr + 4)
    tgt = tl.load(tgt_ptr + row)
    valid = tgt != ignore_index
    # CUDA: the launcher does not read the target on the host (no sync); a bad one is NaN, asserted with TRITON_DEBUG=1
    in_range = (tgt >= 0) & (tgt < C)
    tl.device_assert(~valid | in_range, "dkd_loss: target out of range")
    c = tl.where(valid & in_range, tgt, -1)
    lanes = tl.arange(0, BLOCK)
    ninf = tl.full([BLOCK], float("-inf"), ACC)
    zero = tl.zeros([BLOCK], ACC)
    mx, zx, my, zy, a = ninf, zero, ninf, zero, zero
    for off in range(0, C, BLOCK):
        cols = off + lanes
        mask = (cols < C) & (cols != c)
        x = tl.load(s_row + cols, mask=mask, other=float("-inf")).to(ACC) * inv_t
        y = tl.load(t_row + cols, mask=mask, other=float("-inf")).to(ACC) * inv_t
        mx, zx, my, zy, a = _kl_add(mx, zx, my, zy, a, x, y)
    Mx, Zx, My, Zy, A = _kl_merge(mx, zx, my, zy, a)  # the non-target streams
    cc = tl.where(valid, tgt, 0)
    xc = tl.load(s_row + cc).to(ACC) * inv_t
    yc = tl.load(t_row + cc).to(ACC) * inv_t
    # dkd_row_finish of csrc/dkd_loss.h: lu = log(non-target mass / target mass), log p_c = -softplus(lu),
    # log(1 - p_c) = -softplus(-lu).
    lzx = tl.log(Zx)
    lzy = tl.log(Zy)
    lus = Mx + lzx - xc
    lut = My + lzy - yc
    lps = -_softplus(lus)
    lns = -_softplus(-lus)
    lpt = -_softplus(lut)
    lnt = -_softplus(-lut)
    ps = tl.exp(lps)
    pt = tl.exp(lpt)
    ns = tl.exp(lns)
    nt = tl.exp(lnt)
    tckd = tl.where(pt > 0, pt * (lpt - lps), 0.0) + tl.where(nt > 0, nt * (lnt - lns), 0.0)
    has_nt = Zy > 0
    nckd = tl.where(has_nt, A / tl.where(has_nt, Zy, 1.0) - (My - Mx) - lzy + lzx, 0.0)
    loss = w * temperature * temperature * (alpha * tckd + beta * nckd)
    tl.store(loss_ptr + row, tl.where(valid, tl.where(in_range, loss, float("nan")), 0.0))
    if GRAD_S or GRAD_T:
        k = w * temperature
        dp = tl.where(ps + pt > 1, ns - nt, pt - ps)
        pn = pt * nt
        D = tl.where(pn > 0, lus - lut, 0.0)
        bn = tl.where(has_nt, beta, 0.0)
        mxs = tl.where(Zx > 0, Mx, 0.0)
        mys = tl.where(has_nt, My, 0.0)
        izx = tl.where(Zx > 0, 1.0 / tl.where(Zx > 0, Zx, 1.0), 0.0)
        izy = tl.where(has_nt, 1.0 / tl.where(has_nt, Zy, 1.0), 0.0)
        cq = k * (alpha * dp + bn)
        cp = k * bn
        K = tl.where(has_nt, My + lzy - Mx - lzx + nckd, 0.0)
        kt = k * (bn * K + alpha * pn * D)
        gs_c = -k * alpha * dp
        gt_c = k * alpha * pn * D
        g_row = row * C
        for off in range(0, C, BLOCK):
            cols = off + lanes
            mask = cols < C
            x = tl.load(s_row + cols, mask=mask, other=0.0).to(ACC) * inv_t
            y = tl.load(t_row + cols, mask=mask, other=0.0).to(ACC) * inv_t
            p = tl.exp(y - mys) * izy
            if GRAD_S:
                d = cq * (tl.exp(x - mxs) * izx) - cp * p
                d = tl.where(cols == c, gs_c, d)
                d = tl.where(valid, d, 0.0)
                tl.store(gs_ptr + g_row + cols, d.to(gs_ptr.dtype.element_ty), mask=mask)
            if GRAD_T:
                r = tl.where(p == 0, 0.0, p * (cp * (y - x) - kt))
                r = tl.where(cols == c, gt_c, r)
                r = tl.where(valid, r, 0.0)
                tl.store(gt_ptr + g_row + cols, r.to(gt_ptr.dtype.element_ty), mask=mask)


def dkd_loss_forward(student, teacher, target, temperature, alpha, beta, ignore_index, reduction, grad_student,
                     grad_teacher):
    """(loss, grad_student, grad_teacher) as the C++ op computes them (see csrc/cpu/dkd_loss.cpp).  The
    arguments were checked by shufflekern/ops.py.  No host synchronisation on CUDA (as the KD launcher): the
    counted rows and the reduction's scale stay on the device; the target's values are checked on the host for
    CPU tensors only (on CUDA a bad target gives a NaN loss, and a device-side assert under TRITON_DEBUG=1)."""
    temperature, alpha, beta = float(temperature), float(alpha), float(beta)
    C = student.shape[-1]
    s, t = _rows(student), _rows(teacher)
    R = s.shape[0]
    acc = torch.float64 if student.dtype == torch.float64 else torch.float32
    tgt = target.reshape(-1).to(torch.int64).contiguous()
    if tgt.device.type == "cpu":
        check_kd_target_range(tgt, C, ignore_index, op="dkd_loss_forward")
    n = (tgt != ignore_index).sum().clamp_min(1).to(acc)
    one = torch.ones((), dtype=acc, device=student.device)
    w = {KD_REDUCTIONS["mean"]: 1.0 / (n * C), KD_REDUCTIONS["batchmean"]: 1.0 / n}.get(reduction, one)
    row_loss, gs, gt = _outputs(student, teacher, R, acc, grad_student, grad_teacher)
    if R > 0:
        # fills and a stack: no host-to-device copy, no synchronisation
        params = torch.stack([one * (1.0 / temperature), one * temperature, one * alpha, one * beta, w])
        _dkd_loss_kernel[(R,)](
            s, t, tgt, gs, gt, row_loss, params, C, s.stride(0), t.stride(0), ignore_index,
            GRAD_S=grad_student, GRAD_T=grad_teacher, ACC=tl.float64 if acc == torch.float64 else tl.float32,
            BLOCK=min(triton.next_power_of_2(C), 1024))
    return _reduce(row_loss, student, reduction), gs, gt
