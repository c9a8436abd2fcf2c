"""Triton kernels of at_loss (attention transfer): the maths of csrc/at_loss.h.

    q = f.pow(2).mean(1) as [N, H*W];  a = q / max(||q||, eps) per sample;  loss = mean((a_s - a_t)^2)

A map is addressed as [P, C] pixels x channels with P = N*H*W: element (p, c) at n*sN + c*sC + q*sQ
(n = p // HW, q = p % HW), which covers NCHW (sQ = 1) and channels_last (sC = 1) alike.
  forward:   _sq_mean_kernel (each map read once: q in the accumulation type, float32 or float64)
             -> _sample_loss_kernel (a program a sample: norms, then sum (a_s - a_t)^2, stored in float64)
             -> _loss_total_kernel (one program: the samples' terms / (N P), in a fixed order)
  backward:  _grad_q_kernel (a program a sample: d loss / d q of both maps; grad read from its tensor)
             -> _grad_map_kernel (each map asked for read once, its gradient written once)
No atomics: the same result every run.  The launchers trust their arguments: shufflekern/ops.py checks them
(shufflekern._validate.check_at_loss*) first.
"""
import torch
import triton
import triton.language as tl

from .._validate import at_acc_dtype, suggest_memory_format

BLOCK_P, BLOCK_C = 64, 32  # map tiles (pixels x channels)
BLOCK = 256                # per-sample kernels: pixels a step


@triton.jit
def _tile_offsets(p, c, HW, sN, sC, sQ):
    n = p // HW
    q = p - n * HW
    return n[:, None].to(tl.int64) * sN + c[None, :].to(tl.int64) * sC + q[:, None].to(tl.int64) * sQ


@triton.jit
def _sq_mean_kernel(f_ptr, q_ptr, P, C, HW, sN, sC, sQ, BP: tl.constexpr, BC: tl.constexpr):
    # q[p] = (1 / C) sum_c f[p, c]^2 for this program's BP pixels
    acc_t = q_ptr.dtype.element_ty
    p = tl.program_id(0) * BP + tl.arange(0, BP)
    pm = p < P
    acc = tl.zeros([BP], acc_t)
    for c0 in range(0, C, BC):
        c = c0 + tl.arange(0, BC)
        mask = pm[:, None] & (c[None, :] < C)
        x = tl.load(f_ptr + _tile_offsets(p, c, HW, sN, sC, sQ), mask=mask, other=0.0).to(acc_t)
        acc += tl.sum(x * x, axis=1)
    tl.store(q_ptr + p, acc / C, mask=pm)


@triton.jit
def _norm(ss):
    # F.normalize's max(||q||, eps) and whether the gradient goes through the norm (||q|| >= eps); eps in the
    # accumulation type (a float argument would be rounded to float32)
    n = tl.sqrt(ss)
    eps = tl.full((), 1e-12, ss.dtype)
    return tl.where(n >= eps, n, eps), n >= eps


@triton.jit
def _sample_norms(qs_row, qt_row, P, B: tl.constexpr):
    acc_t = qs_row.dtype.element_ty
    ss = tl.zeros([B], acc_t)
    st = tl.zeros([B], acc_t)
    for p0 in range(0, P, B):
        p = p0 + tl.arange(0, B)
        a = tl.load(qs_row + p, mask=p < P, other=0.0)
        b = tl.load(qt_row + p, mask=p < P, other=0.0)
        ss += a * a
        st += b * b
    ms, fs = _norm(tl.sum(ss, axis=0))
    mt, ft = _norm(tl.sum(st, axis=0))
    return ms, fs, mt, ft


@triton.jit
def _sample_loss_kernel(qs_ptr, qt_ptr, per_ptr, P, B: tl.constexpr):
    # per[n] = sum_p (a_s - a_t)^2 of sample n, in float64
    n = tl.program_id(0).to(tl.int64)
    qs_row = qs_ptr + n * P
    qt_row = qt_ptr + n * P
    ms, _, mt, _ = _sample_norms(qs_row, qt_row, P, B)
    e2 = tl.zeros([B], tl.float64)
    for p0 in range(0, P, B):
        p = p0 + tl.arange(0, B)
        e = tl.load(qs_row + p, mask=p < P, other=0.0) / ms - tl.load(qt_row + p, mask=p < P, other=0.0) / mt
        e2 += (e * e).to(tl.float64)
    tl.store(per_ptr + n, tl.sum(e2, axis=0))


@triton.jit
def _loss_total_kernel(per_ptr, loss_ptr, N, NP, B: tl.constexpr):
    s = tl.zeros([B], tl.float64)
    for n0 in range(0, N, B):
        n = n0 + tl.arange(0, B)
        s += tl.load(per_ptr + n, mask=n < N, other=0.0)
    total = tl.sum(s, axis=0) / NP
    if loss_ptr.dtype.element_ty != tl.float64:
        total = total.to(tl.float32)  # float64 -> 16-bit goes through float32
    tl.store(loss_ptr, total.to(loss_ptr.dtype.element_ty))


@triton.jit
def _grad_q_kernel(qs_ptr, qt_ptr, grad_ptr, gqs_ptr, gqt_ptr, P, NP,
                   HAS_S: tl.constexpr, HAS_T: tl.constexpr, B: tl.constexpr):
    # g_s = k (e - [full_s] a_s d_s) / m_s,  g_t = -k (e - [full_t] a_t d_t) / m_t  (csrc/at_loss.h)
    n = tl.program_id(0).to(tl.int64)
    qs_row = qs_ptr + n * P
    qt_row = qt_ptr + n * P
    acc_t = qs_ptr.dtype.element_ty
    ms, fs, mt, ft = _sample_norms(qs_row, qt_row, P, B)
    ds = tl.zeros([B], acc_t)
    dt = tl.zeros([B], acc_t)
    for p0 in range(0, P, B):
        p = p0 + tl.arange(0, B)
        a_s = tl.load(qs_row + p, mask=p < P, other=0.0) / ms
        a_t = tl.load(qt_row + p, mask=p < P, other=0.0) / mt
        ds += a_s * (a_s - a_t)
        dt += a_t * (a_s - a_t)
    d_s = tl.where(fs, tl.sum(ds, axis=0), 0.0)
    d_t = tl.where(ft, tl.sum(dt, axis=0), 0.0)
    k = 2.0 * tl.load(grad_ptr).to(acc_t) / NP
    for p0 in range(0, P, B):
        p = p0 + tl.arange(0, B)
        pm = p < P
        a_s = tl.load(qs_row + p, mask=pm, other=0.0) / ms
        a_t = tl.load(qt_row + p, mask=pm, other=0.0) / mt
        e = a_s - a_t
        if HAS_S:
            tl.store(gqs_ptr + n * P + p, k * (e - a_s * d_s) / ms, mask=pm)
        if HAS_T:
            tl.store(gqt_ptr + n * P + p, -k * (e - a_t * d_t) / mt, mask=pm)


@triton.jit
def _grad_map_kernel(f_ptr, gq_ptr, out_ptr, P, C, HW, sN, sC, sQ, BP: tl.constexpr, BC: tl.constexpr):
    # grad[p, c] = (2 / C) f[p, c] gq[p]
    acc_t = gq_ptr.dtype.element_ty
    p = tl.program_id(0) * BP + tl.arange(0, BP)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    pm = p < P
    mask = pm[:, None] & (c[None, :] < C)
    off = _tile_offsets(p, c, HW, sN, sC, sQ)
    k = tl.load(gq_ptr + p, mask=pm, other=0.0) * 2.0 / C
    x = tl.load(f_ptr + off, mask=mask, other=0.0).to(acc_t)
    tl.store(out_ptr + off, (x * k[:, None]).to(out_ptr.dtype.element_ty), mask=mask)


def _geometry(f):
    n, c, h, w = f.shape
    fmt = suggest_memory_format(f)
    f = f.contiguous(memory_format=fmt)
    sn, sc, _, sw = f.stride()
    return f, fmt, (n * h * w, c, h * w, sn, sc, sw)


def at_loss(f_student, f_teacher):
    """(loss, q_student, q_teacher): the 0-dim loss in the maps' dtype and each map's q as [N, H*W]."""
    n, _, h, w = f_student.shape
    acc = at_acc_dtype(f_student.dtype)
    qs = torch.empty((n, h * w), dtype=acc, device=f_student.device)
    qt = torch.empty_like(qs)
    for f, q in ((f_student, qs), (f_teacher, qt)):
        f, _, geo = _geometry(f)
        _sq_mean_kernel[(triton.cdiv(geo[0], BLOCK_P),)](f, q, *geo, BP=BLOCK_P, BC=BLOCK_C)
    per = torch.empty(n, dtype=torch.float64, device=f_student.device)
    _sample_loss_kernel[(n,)](qs, qt, per, h * w, B=BLOCK)
    loss = torch.empty((), dtype=f_student.dtype, device=f_student.device)
    _loss_total_kernel[(1,)](per, loss, n, n * h * w, B=BLOCK)
    return loss, qs, qt


def at_loss_backward(grad, f_student, f_teacher, q_student, q_teacher, output_mask):
    """(grad of f_student, grad of f_teacher), each in its map's memory format; those output_mask does not ask
    for are 0-element tensors, as from the C++ op."""
    out = [f_student.new_empty(0), f_teacher.new_empty(0)]
    if not (output_mask[0] or output_mask[1]):
        return tuple(out)
    n, _, h, w = f_student.shape
    qs, qt = q_student.contiguous(), q_teacher.contiguous()
    g = grad.reshape(1).to(qs.dtype)
    gq = [torch.empty_like(qs) if output_mask[0] else None, torch.empty_like(qt) if output_mask[1] else None]
    _grad_q_kernel[(n,)](qs, qt, g, gq[0] if gq[0] is not None else qs, gq[1] if gq[1] is not None else qt,
                         h * w, n * h * w, HAS_S=bool(output_mask[0]), HAS_T=bool(output_mask[1]), B=BLOCK)
    for i, f in enumerate((f_student, f_teacher)):
        if not output_mask[i]:
            continue
        f, fmt, geo = _geometry(f)
        out[i] = torch.empty_like(f, memory_format=fmt)
        grid = (triton.cdiv(geo[0], BLOCK_P), triton.cdiv(geo[1], BLOCK_C))
        _grad_map_kernel[grid](f, gq[i], out[i], *geo, BP=BLOCK_P, BC=BLOCK_C)
    return tuple(out)
