"""Triton kernels of shuffle_conv1x1 (index math as csrc/shuffle_conv1x1.h).

Pixels p = n*H*W + hw are the GEMM rows; an element (n, c, hw) of x lives at n*s_n + c*s_c + hw*s_hw, which
covers NCHW and channels_last alike.  Conv group k (program_id 2) reads shuffled channel c' = k*Cg + j, i.e.
x channel src(c') = (c' % sg)*Cs + c' // sg, so the shuffle is only the gather of the A tile:
    y[p, k*Mg + m]   = sum_j x[p, src(k*Cg + j)] * W[k*Mg + m, j]  (+ b)
    gx[p, src(k*Cg + j)] = sum_m gy[p, k*Mg + m] * W[k*Mg + m, j]
    gW[k*Mg + m, j]  = sum_p gy[p, k*Mg + m] * x[p, src(k*Cg + j)]
All three accumulate in float32 with tl.dot.  The launchers trust their arguments: shufflekern/ops.py checks
them (shufflekern._validate) and the dtype (float32, float16, bfloat16: shufflekern/_backend.py) first.
"""
import torch
import triton
import triton.language as tl

from .._backend import OPS
from .._validate import suggest_memory_format

# What the launchers take (declared with the op's registration in shufflekern/ops.py).
_DTYPES = OPS["shuffle_conv1x1"].triton


@triton.jit
def _pixel_offsets(offs_p, HW, s_n, s_hw):
    n = offs_p // HW
    return n * s_n + (offs_p - n * HW) * s_hw


@triton.jit
def _src_channel(k, offs_j, CG, SG, CS):
    c = k * CG + offs_j
    return (c % SG) * CS + c // SG


@triton.jit
def _shuffle_conv1x1_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, P, HW, CG, MG, SG, CS,
                                sx_n, sx_c, sx_hw, sy_n, sy_c, sy_hw,
                                HAS_BIAS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_M: tl.constexpr,
                                BLOCK_K: tl.constexpr, UPCAST: tl.constexpr):
    k = tl.program_id(2)
    offs_p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_p = offs_p < P
    mask_m = offs_m < MG
    x_rows = _pixel_offsets(offs_p, HW, sx_n, sx_hw)
    acc = tl.zeros((BLOCK_P, BLOCK_M), dtype=tl.float32)
    for j0 in range(0, CG, BLOCK_K):
        offs_j = j0 + tl.arange(0, BLOCK_K)
        mask_j = offs_j < CG
        src = _src_channel(k, offs_j, CG, SG, CS).to(tl.int64)
        a = tl.load(x_ptr + x_rows[:, None] + src[None, :] * sx_c, mask=mask_p[:, None] & mask_j[None, :], other=0.0)
        w = tl.load(w_ptr + (k * MG + offs_m)[None, :].to(tl.int64) * CG + offs_j[:, None],
                    mask=mask_j[:, None] & mask_m[None, :], other=0.0)
        if UPCAST:
            a, w = a.to(tl.float32), w.to(tl.float32)
        acc = tl.dot(a, w, acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + k * MG + offs_m, mask=mask_m, other=0.0).to(tl.float32)[None, :]
    y_rows = _pixel_offsets(offs_p, HW, sy_n, sy_hw)
    y_cols = (k * MG + offs_m).to(tl.int64) * sy_c
    tl.store(y_ptr + y_rows[:, None] + y_cols[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=mask_p[:, None] & mask_m[None, :])


@triton.jit
def _shuffle_conv1x1_grad_input_kernel(gy_ptr, w_ptr, gx_ptr, P, HW, CG, MG, SG, CS,
                                       sg_n, sg_c, sg_hw, sx_n, sx_c, sx_hw,
                                       BLOCK_P: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_M: tl.constexpr,
                                       UPCAST: tl.constexpr):
    k = tl.program_id(2)
    offs_p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_j = tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J)
    mask_p = offs_p < P
    mask_j = offs_j < CG
    g_rows = _pixel_offsets(offs_p, HW, sg_n, sg_hw)
    acc = tl.zeros((BLOCK_P, BLOCK_J), dtype=tl.float32)
    for m0 in range(0, MG, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < MG
        ch = (k * MG + offs_m).to(tl.int64)
        g = tl.load(gy_ptr + g_rows[:, None] + ch[None, :] * sg_c, mask=mask_p[:, None] & mask_m[None, :], other=0.0)
        w = tl.load(w_ptr + ch[:, None] * CG + offs_j[None, :], mask=mask_m[:, None] & mask_j[None, :], other=0.0)
        if UPCAST:
            g, w = g.to(tl.float32), w.to(tl.float32)
        acc = tl.dot(g, w, acc)
    src = _src_channel(k, offs_j, CG, SG, CS).to(tl.int64)
    x_rows = _pixel_offsets(offs_p, HW, sx_n, sx_hw)
    tl.store(gx_ptr + x_rows[:, None] + src[None, :] * sx_c, acc.to(gx_ptr.dtype.element_ty),
             mask=mask_p[:, None] & mask_j[None, :])


@triton.jit
def _shuffle_conv1x1_grad_weight_kernel(gy_ptr, x_ptr, gw_ptr, P, HW, CG, MG, SG, CS,
                                        sg_n, sg_c, sg_hw, sx_n, sx_c, sx_hw,
                                        BLOCK_M: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_P: tl.constexpr,
                                        UPCAST: tl.constexpr):
    k = tl.program_id(2)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_j = tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J)
    mask_m = offs_m < MG
    mask_j = offs_j < CG
    ch = (k * MG + offs_m).to(tl.int64)
    src = _src_channel(k, offs_j, CG, SG, CS).to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_J), dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P).to(tl.int64)
        mask_p = offs_p < P
        g = tl.load(gy_ptr + ch[:, None] * sg_c + _pixel_offsets(offs_p, HW, sg_n, sg_hw)[None, :],
                    mask=mask_m[:, None] & mask_p[None, :], other=0.0)
        a = tl.load(x_ptr + _pixel_offsets(offs_p, HW, sx_n, sx_hw)[:, None] + src[None, :] * sx_c,
                    mask=mask_p[:, None] & mask_j[None, :], other=0.0)
        if UPCAST:
            g, a = g.to(tl.float32), a.to(tl.float32)
        acc = tl.dot(g, a, acc)
    tl.store(gw_ptr + ch[:, None] * CG + offs_j[None, :], acc.to(gw_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_j[None, :])


def _upcast(t):
    # The interpreter's tl.dot returns garbage for bf16 operands (numpy has no bf16), so on CPU tensors the
    # tiles are widened to fp32 first; on a GPU bf16 tiles go to the tensor cores as they are.
    return t.dtype == torch.bfloat16 and t.device.type == "cpu"


def _block(n, cap):
    # tl.dot needs every block dimension >= 16.
    return max(16, min(cap, triton.next_power_of_2(max(n, 1))))


def shuffle_conv1x1(x, weight, bias, groups, shuffle_groups):
    fmt = suggest_memory_format(x)
    x = x.contiguous(memory_format=fmt)
    weight = weight.contiguous()
    n, c, h, w_ = x.shape
    c_out = weight.shape[0]
    y = torch.empty((n, c_out, h, w_), dtype=x.dtype, device=x.device, memory_format=fmt)
    if y.numel() == 0:
        return y
    if c == 0:
        return y.zero_() if bias is None else y.copy_(bias.view(1, -1, 1, 1).expand_as(y))
    cg, mg = c // groups, c_out // groups
    p = n * h * w_
    bp, bm, bk = 64, _block(mg, 64), _block(cg, 32)
    grid = (triton.cdiv(p, bp), triton.cdiv(mg, bm), groups)
    _shuffle_conv1x1_fwd_kernel[grid](
        x, weight, bias if bias is not None else weight, y, p, h * w_, cg, mg, shuffle_groups, c // shuffle_groups,
        x.stride(0), x.stride(1), x.stride(3), y.stride(0), y.stride(1), y.stride(3),
        HAS_BIAS=bias is not None, BLOCK_P=bp, BLOCK_M=bm, BLOCK_K=bk, UPCAST=_upcast(x))
    return y


def shuffle_conv1x1_grad_input(grad_out, weight, groups, shuffle_groups):
    fmt = suggest_memory_format(grad_out)
    gy = grad_out.contiguous(memory_format=fmt)
    weight = weight.contiguous()
    n, c_out, h, w_ = gy.shape
    c = weight.shape[1] * groups
    gx = torch.empty((n, c, h, w_), dtype=gy.dtype, device=gy.device, memory_format=fmt)
    if gx.numel() == 0:
        return gx
    if c_out == 0:
        return gx.zero_()
    cg, mg = c // groups, c_out // groups
    p = n * h * w_
    bp, bj, bm = 64, _block(cg, 64), _block(mg, 32)
    grid = (triton.cdiv(p, bp), triton.cdiv(cg, bj), groups)
    _shuffle_conv1x1_grad_input_kernel[grid](
        gy, weight, gx, p, h * w_, cg, mg, shuffle_groups, c // shuffle_groups,
        gy.stride(0), gy.stride(1), gy.stride(3), gx.stride(0), gx.stride(1), gx.stride(3),
        BLOCK_P=bp, BLOCK_J=bj, BLOCK_M=bm, UPCAST=_upcast(gy))
    return gx


def shuffle_conv1x1_grad_weight(grad_out, x, groups, shuffle_groups):
    fmt = suggest_memory_format(x)
    x = x.contiguous(memory_format=fmt)
    gy = grad_out.contiguous(memory_format=fmt)
    n, c, h, w_ = x.shape
    c_out = gy.shape[1]
    cg, mg = c // groups, c_out // groups
    p = n * h * w_
    # Accumulated in float32 and returned in x's dtype.
    gw = torch.empty((c_out, cg, 1, 1), dtype=torch.float32, device=x.device)
    if gw.numel() == 0 or p == 0:
        return gw.zero_().to(x.dtype)
    bm, bj, bp = _block(mg, 32), _block(cg, 32), 64
    grid = (triton.cdiv(mg, bm), triton.cdiv(cg, bj), groups)
    _shuffle_conv1x1_grad_weight_kernel[grid](
        gy, x, gw, p, h * w_, cg, mg, shuffle_groups, c // shuffle_groups,
        gy.stride(0), gy.stride(1), gy.stride(3), x.stride(0), x.stride(1), x.stride(3),
        BLOCK_M=bm, BLOCK_J=bj, BLOCK_P=bp, UPCAST=_upcast(x))
    return gw.to(x.dtype)


def shuffle_conv1x1_backward(grad_out, x, weight, groups, shuffle_groups, output_mask):
    """The autograd's op: the two backward kernels above (grad_out in x's memory format) and a sum for the bias;
    0-element tensors where output_mask is False."""
    gy = grad_out.contiguous(memory_format=suggest_memory_format(x))
    return (shuffle_conv1x1_grad_input(gy, weight, groups, shuffle_groups) if output_mask[0] else x.new_empty(0),
            shuffle_conv1x1_grad_weight(gy, x, groups, shuffle_groups) if output_mask[1] else weight.new_empty(0),
            gy.sum((0, 2, 3)) if output_mask[2] else weight.new_empty(0))
