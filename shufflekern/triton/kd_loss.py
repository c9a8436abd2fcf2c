"""Triton kernel of the distillation loss: the formulas of csrc/kd_loss.h, one program per row.

Pass 1 keeps a per-lane online (max, sum) state for x = s/T, y = t/T (with a = sum e^{y-my}(y-x)) and,
for the cross entropy, s at T = 1; the lanes are merged at the end exactly as csrc/kd_loss.h merges
blocks.  Pass 2 writes the gradients.  Exponentials are always taken against a finite shift, so rows
with -inf entries never form -inf - -inf; p == 0 terms are masked, never multiplied out.
"""
import torch
import triton
import triton.language as tl

from .._validate import KD_REDUCTIONS, check_kd_target_range


@triton.jit
def _finite(m):
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _row_start(s_ptr, t_ptr, par_ptr, s_stride, t_stride):
    """The program's row, its logits rows and the launcher's first three scalars (1/T, T, alpha).  Scalars come
    in a tensor of the accumulation dtype: float arguments would be rounded to fp32."""
    row = tl.program_id(0).to(tl.int64)
    inv_t = tl.load(par_ptr + 0)
    temperature = tl.load(par_ptr + 1)
    alpha = tl.load(par_ptr + 2)
    return row, s_ptr + row * s_stride, t_ptr + row * t_stride, inv_t, temperature, alpha


@triton.jit
def _kl_add(mx, zx, my, zy, a, x, y):
    """Adds a block of x = s/T and y = t/T to the per-lane online states: (max, sum) of x and of y, and
    a = sum e^{y-my}(y-x)."""
    nmx = tl.maximum(mx, x)
    fx = _finite(nmx)
    zx = zx * tl.exp(mx - fx) + tl.exp(x - fx)
    nmy = tl.maximum(my, y)
    fy = _finite(nmy)
    ey = tl.exp(y - fy)
    a = a * tl.exp(my - fy) + tl.where(ey == 0, 0.0, ey * (y - x))
    zy = zy * tl.exp(my - fy) + ey
    return nmx, zx, nmy, zy, a


@triton.jit
def _kl_merge(mx, zx, my, zy, a):
    """The lanes' states merged (kd_merge of csrc/kd_loss.h): Mx, Zx, My, Zy, A."""
    Mx = tl.max(mx, axis=0)
    Zx = tl.sum(zx * tl.exp(mx - _finite(Mx)), axis=0)
    My = tl.max(my, axis=0)
    wy = tl.exp(my - _finite(My))
    return Mx, Zx, My, tl.sum(zy * wy, axis=0), tl.sum(a * wy, axis=0)


@triton.jit
def _kd_loss_kernel(s_ptr, t_ptr, tgt_ptr, gs_ptr, gt_ptr, loss_ptr, par_ptr, C, s_stride, t_stride, ignore_index,
                    HAS_TARGET: tl.constexpr, CE: tl.constexpr, CE_SEP: tl.constexpr,
                    GRAD_S: tl.constexpr, GRAD_T: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    row, s_row, t_row, inv_t, temperature, alpha = _row_start(s_ptr, t_ptr, par_ptr, s_stride, t_stride)
    kl_scale = tl.load(par_ptr + 3)
    ce_scale = tl.load(par_ptr + 4)
    lanes = tl.arange(0, BLOCK)
    ninf = tl.full([BLOCK], float("-inf"), ACC)
    zero = tl.zeros([BLOCK], ACC)
    mx, zx, my, zy, a, m1, z1 = ninf, zero, ninf, zero, zero, ninf, zero
    for off in range(0, C, BLOCK):
        cols = off + lanes
        mask = cols < C
        s = tl.load(s_row + cols, mask=mask, other=float("-inf")).to(ACC)
        t = tl.load(t_row + cols, mask=mask, other=float("-inf")).to(ACC)
        mx, zx, my, zy, a = _kl_add(mx, zx, my, zy, a, s * inv_t, t * inv_t)
        if CE_SEP:
            nm1 = tl.maximum(m1, s)
            f1 = _finite(nm1)
            z1 = z1 * tl.exp(m1 - f1) + tl.exp(s - f1)
            m1 = nm1
    Mx, Zx, My, Zy, A = _kl_merge(mx, zx, my, zy, a)
    kl = A / Zy - (My - Mx) - tl.log(Zy) + tl.log(Zx)
    loss = alpha * kl_scale * temperature * temperature * kl
    ck = alpha * kl_scale * temperature
    cc = 0.0
    tgt = -1
    if HAS_TARGET:
        tgt = tl.load(tgt_ptr + row)
        # CUDA: the launcher does not read the target on the host (no sync); a bad one is NaN, asserted with TRITON_DEBUG=1
        tl.device_assert((tgt == ignore_index) | ((tgt >= 0) & (tgt < C)), "kd_loss: target out of range")
    if CE:
        if CE_SEP:
            M1 = tl.max(m1, axis=0)
            Z1 = tl.sum(z1 * tl.exp(m1 - _finite(M1)), axis=0)
        else:
            M1 = Mx
            Z1 = Zx
        in_range = (tgt >= 0) & (tgt < C)
        s_tgt = tl.load(s_row + tl.where(in_range, tgt, 0)).to(ACC)
        s_tgt = tl.where(in_range, s_tgt, float("nan"))
        cc = (1 - alpha) * ce_scale
        loss += cc * (M1 + tl.log(Z1) - s_tgt)
    if HAS_TARGET:
        loss = tl.where(tgt == ignore_index, 0.0, tl.where((tgt >= 0) & (tgt < C), loss, float("nan")))
    tl.store(loss_ptr + row, loss)
    if GRAD_S or GRAD_T:
        K = My + tl.log(Zy) - Mx - tl.log(Zx) + kl
        g_row = row * C
        for off in range(0, C, BLOCK):
            cols = off + lanes
            mask = cols < C
            s = tl.load(s_row + cols, mask=mask, other=0.0).to(ACC)
            t = tl.load(t_row + cols, mask=mask, other=0.0).to(ACC)
            x = s * inv_t
            y = t * inv_t
            p = tl.exp(y - My) / Zy
            if GRAD_S:
                d = ck * (tl.exp(x - Mx) / Zx - p)
                if CE:
                    onehot = tl.where(cols == tgt, 1.0, 0.0)
                    d += cc * (tl.exp(s - M1) / Z1 - onehot)
                if HAS_TARGET:
                    d = tl.where(tgt != ignore_index, d, 0.0)
                tl.store(gs_ptr + g_row + cols, d.to(gs_ptr.dtype.element_ty), mask=mask)
            if GRAD_T:
                r = tl.where(p == 0, 0.0, ck * p * (y - x - K))
                if HAS_TARGET:
                    r = tl.where(tgt != ignore_index, r, 0.0)
                tl.store(gt_ptr + g_row + cols, r.to(gt_ptr.dtype.element_ty), mask=mask)


def _rows(x):
    r = x.reshape(-1, x.shape[-1])
    return r.contiguous() if r.shape[1] > 1 and r.stride(1) != 1 else r


def _outputs(student, teacher, R, acc, grad_student, grad_teacher):
    """The row losses (in acc) and the wanted gradients (dense; 0 elements when not wanted) a kernel writes."""
    row_loss = torch.empty(R, dtype=acc, device=student.device)
    gs = torch.empty_like(student, memory_format=torch.contiguous_format) if grad_student else student.new_empty(0)
    gt = torch.empty_like(teacher, memory_format=torch.contiguous_format) if grad_teacher else teacher.new_empty(0)
    return row_loss, gs, gt


def _reduce(row_loss, student, reduction):
    """The op's loss from the row losses (already scaled by the reduction's divisor)."""
    if reduction == KD_REDUCTIONS["none"]:
        return row_loss.to(student.dtype).reshape(student.shape[:-1])
    return row_loss.sum(dtype=torch.float64).to(student.dtype)


def kd_loss_forward(student, teacher, target, temperature, alpha, ignore_index, reduction, grad_student,
                    grad_teacher):
    """(loss, grad_student, grad_teacher) as the C++ op computes them (see csrc/cpu/kd_loss.cpp).  The
    arguments were checked by shufflekern/ops.py.  No host synchronisation on CUDA: the count of the rows that
    count and the scales it gives stay on the device.  The target's values are checked on the host for CPU
    tensors (the interpreter); on CUDA an out-of-range target gives a NaN loss (and a device-side assert
    under TRITON_DEBUG=1), where the native CUDA kernel reports a device-side assert."""
    temperature, alpha = float(temperature), float(alpha)
    C = student.shape[-1]
    s, t = _rows(student), _rows(teacher)
    R = s.shape[0]
    acc = torch.float64 if student.dtype == torch.float64 else torch.float32
    tgt = s  # placeholder pointer when there is no target
    if target is not None:
        tgt = target.reshape(-1).to(torch.int64).contiguous()
        if tgt.device.type == "cpu":
            check_kd_target_range(tgt, C, ignore_index, op="kd_loss_forward")
        n = (tgt != ignore_index).sum().clamp_min(1).to(acc)
    else:
        n = torch.full((), float(max(R, 1)), dtype=acc, device=student.device)
    one = torch.ones((), dtype=acc, device=student.device)
    kl_scale, ce_scale = {KD_REDUCTIONS["mean"]: (1.0 / (n * C), 1.0 / n),
                          KD_REDUCTIONS["batchmean"]: (1.0 / n, 1.0 / n)}.get(reduction, (one, one))
    row_loss, gs, gt = _outputs(student, teacher, R, acc, grad_student, grad_teacher)
    if R > 0:
        ce = target is not None and alpha != 1.0
        # fills and a stack: no host-to-device copy, no synchronisation
        params = torch.stack([one * (1.0 / temperature), one * temperature, one * alpha, kl_scale, ce_scale])
        _kd_loss_kernel[(R,)](
            s, t, tgt, gs, gt, row_loss, params, C, s.stride(0), t.stride(0), ignore_index,
            HAS_TARGET=target is not None, CE=ce, CE_SEP=ce and temperature != 1.0, GRAD_S=grad_student,
            GRAD_T=grad_teacher, ACC=tl.float64 if acc == torch.float64 else tl.float32,
            BLOCK=min(triton.next_power_of_2(C), 1024))
    return _reduce(row_loss, student, reduction), gs, gt
