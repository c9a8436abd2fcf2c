"""Triton kernels of batch_norm_act (the maths of csrc/cpu/vec/batch_norm_act.cpp):

    z = x * scale + shift [+ residual],  y = relu(z) (or z),  scale = w / sqrt(var + eps),  shift = b - mean * scale

x is addressed as [P, C] positions x channels with P = N*H*W: element (p, c) at n*sN + c*sC + q*sQ (n = p // HW,
q = p % HW), which covers NCHW (sQ = 1) and channels_last (sC = 1) alike.  The per-channel sums are taken
over tiles of BLOCK_P positions (shifted by the first position's value, as the C++ kernel does), written
as [tiles, C] partials and added in float64 by torch: no atomics, the same result every run.  Tiles
compute in float32 (float64 for float64 inputs).  Per-channel
coefficients are computed by torch (float64, then the input dtype) the same way in forward and backward,
so the backward's recomputed ReLU mask is the forward's.  The launchers trust their arguments:
shufflekern/ops.py checks them (shufflekern._validate) first.
"""
import torch
import triton
import triton.language as tl

from .._validate import suggest_memory_format

BLOCK_P, BLOCK_C = 64, 32


@triton.jit
def _offsets(p, c, HW, sN, sC, sQ):
    n = p // HW
    q = p - n * HW
    return n[:, None].to(tl.int64) * sN + c[None, :].to(tl.int64) * sC + q[:, None].to(tl.int64) * sQ


@triton.jit
def _tile(P, C, HW, sN, sC, sQ, BP: tl.constexpr, BC: tl.constexpr):
    p = tl.program_id(0) * BP + tl.arange(0, BP)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    mask = (p[:, None] < P) & (c[None, :] < C)
    return _offsets(p, c, HW, sN, sC, sQ), c, mask


@triton.jit
def _stats_kernel(x_ptr, k_ptr, part_ptr, P, C, HW, sN, sC, sQ, BP: tl.constexpr, BC: tl.constexpr):
    # part[0, tile, c] = sum (x - k), part[1, tile, c] = sum (x - k)^2 over this tile's positions
    off, c, mask = _tile(P, C, HW, sN, sC, sQ, BP, BC)
    acc_t = k_ptr.dtype.element_ty
    k = tl.load(k_ptr + c, mask=c < C, other=0.0)
    d = tl.where(mask, tl.load(x_ptr + off, mask=mask, other=0.0).to(acc_t) - k[None, :], 0.0)
    row = tl.program_id(0) * C + c
    tiles = tl.num_programs(0)
    tl.store(part_ptr + row, tl.sum(d, axis=0), mask=c < C)
    tl.store(part_ptr + tiles * C + row, tl.sum(d * d, axis=0), mask=c < C)


@triton.jit
def _pre_act(x_ptr, r_ptr, scale_ptr, shift_ptr, off, c, mask, C, HAS_R: tl.constexpr):
    acc_t = scale_ptr.dtype.element_ty
    sc = tl.load(scale_ptr + c, mask=c < C, other=0.0)
    sh = tl.load(shift_ptr + c, mask=c < C, other=0.0)
    z = tl.load(x_ptr + off, mask=mask, other=0.0).to(acc_t) * sc[None, :] + sh[None, :]
    if HAS_R:
        z += tl.load(r_ptr + off, mask=mask, other=0.0).to(acc_t)
    return z


@triton.jit
def _apply_kernel(x_ptr, r_ptr, scale_ptr, shift_ptr, y_ptr, P, C, HW, sN, sC, sQ,
                  HAS_R: tl.constexpr, RELU: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr):
    off, c, mask = _tile(P, C, HW, sN, sC, sQ, BP, BC)
    z = _pre_act(x_ptr, r_ptr, scale_ptr, shift_ptr, off, c, mask, C, HAS_R)
    if RELU:
        z = tl.where(z <= 0.0, 0.0, z)  # NaN stays NaN, as torch.relu
    tl.store(y_ptr + off, z.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_z(g_ptr, x_ptr, r_ptr, scale_ptr, shift_ptr, off, c, mask, C, HAS_R: tl.constexpr, RELU: tl.constexpr):
    g = tl.load(g_ptr + off, mask=mask, other=0.0).to(scale_ptr.dtype.element_ty)
    if RELU:
        z = _pre_act(x_ptr, r_ptr, scale_ptr, shift_ptr, off, c, mask, C, HAS_R)
        g = tl.where(z <= 0.0, 0.0, g)
    return g


@triton.jit
def _bwd_sums_kernel(g_ptr, x_ptr, r_ptr, scale_ptr, shift_ptr, mean_ptr, gr_ptr, part_ptr, P, C, HW, sN, sC, sQ,
                     HAS_R: tl.constexpr, RELU: tl.constexpr, WRITE_GR: tl.constexpr,
                     BP: tl.constexpr, BC: tl.constexpr):
    # part[0, tile, c] = sum gz, part[1, tile, c] = sum gz * (x - mean); gz = dL/dz (written to gr if asked)
    off, c, mask = _tile(P, C, HW, sN, sC, sQ, BP, BC)
    gz = tl.where(mask, _grad_z(g_ptr, x_ptr, r_ptr, scale_ptr, shift_ptr, off, c, mask, C, HAS_R, RELU), 0.0)
    if WRITE_GR:
        tl.store(gr_ptr + off, gz.to(gr_ptr.dtype.element_ty), mask=mask)
    mean = tl.load(mean_ptr + c, mask=c < C, other=0.0)
    d = tl.load(x_ptr + off, mask=mask, other=0.0).to(mean_ptr.dtype.element_ty) - mean[None, :]
    row = tl.program_id(0) * C + c
    tiles = tl.num_programs(0)
    tl.store(part_ptr + row, tl.sum(gz, axis=0), mask=c < C)
    tl.store(part_ptr + tiles * C + row, tl.sum(gz * d, axis=0), mask=c < C)


@triton.jit
def _bwd_apply_kernel(g_ptr, x_ptr, scale_ptr, shift_ptr, mean_ptr, ca_ptr, cb_ptr, cd_ptr, gx_ptr,
                      P, C, HW, sN, sC, sQ, RELU: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr):
    # grad_x = A gz + B (x - mean) + D per channel.  With a residual, g is already gz (RELU off): no residual
    # is read here.
    off, c, mask = _tile(P, C, HW, sN, sC, sQ, BP, BC)
    gz = _grad_z(g_ptr, x_ptr, x_ptr, scale_ptr, shift_ptr, off, c, mask, C, False, RELU)
    cm = c < C
    mean = tl.load(mean_ptr + c, mask=cm, other=0.0)
    a = tl.load(ca_ptr + c, mask=cm, other=0.0)
    b = tl.load(cb_ptr + c, mask=cm, other=0.0)
    d0 = tl.load(cd_ptr + c, mask=cm, other=0.0)
    d = tl.load(x_ptr + off, mask=mask, other=0.0).to(mean_ptr.dtype.element_ty) - mean[None, :]
    out = gz * a[None, :] + d * b[None, :] + d0[None, :]
    tl.store(gx_ptr + off, out.to(gx_ptr.dtype.element_ty), mask=mask)


def _geometry(x):
    n, c, h, w = x.shape
    fmt = suggest_memory_format(x)
    x = x.contiguous(memory_format=fmt)
    sn, sc, _, sw = x.stride()
    return x, fmt, (n * h * w, c, h * w, sn, sc, sw)


def _acc_dtype(dtype):
    """What the kernels compute in: float32, or float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _grid(geo):
    return (triton.cdiv(geo[0], BLOCK_P), triton.cdiv(geo[1], BLOCK_C))


def _coefficients(mean, var, weight, bias, eps, dtype):
    """scale, shift (in the kernels' float32 or the input's float64) and invstd (float64), from the stored
    mean and var: the same calls in forward and backward give the same bits."""
    inv = torch.rsqrt(var.double() + eps)
    w = weight.double() if weight is not None else torch.ones_like(inv)
    b = bias.double() if bias is not None else torch.zeros_like(inv)
    cdt = _acc_dtype(dtype)
    return (w * inv).to(cdt), (b - mean.double() * w * inv).to(cdt), inv


def batch_norm_act(x, weight, bias, residual, running_mean, running_var, training, eps, relu):
    x, fmt, geo = _geometry(x)
    r = residual.contiguous(memory_format=fmt) if residual is not None else None
    y = torch.empty_like(x, memory_format=fmt)
    cdt = _acc_dtype(x.dtype)
    if training:
        k = x[0, :, 0, 0].to(cdt).contiguous()
        part = torch.empty((2, _grid(geo)[0], geo[1]), dtype=cdt, device=x.device)
        _stats_kernel[_grid(geo)](x, k, part, *geo, BP=BLOCK_P, BC=BLOCK_C)
        s = part.double().sum(1)
        d = s[0] / geo[0]
        mean = (k.double() + d).to(x.dtype)
        var = (s[1] / geo[0] - d * d).clamp_min(0).to(x.dtype)
        stats = (mean, var)
    else:
        mean, var = running_mean, running_var
        stats = (x.new_empty(0), x.new_empty(0))
    if x.numel():
        scale, shift, _ = _coefficients(mean, var, weight, bias, eps, x.dtype)
        _apply_kernel[_grid(geo)](x, r if r is not None else x, scale, shift, y, *geo, HAS_R=r is not None,
                                  RELU=relu, BP=BLOCK_P, BC=BLOCK_C)
    return y, *stats


def batch_norm_act_backward(grad_y, x, weight, bias, residual, mean, var, training, eps, relu, output_mask):
    """(grad_x, grad_residual, grad_weight, grad_bias); those output_mask does not ask for are 0-element
    tensors, as from the C++ op."""
    x, fmt, geo = _geometry(x)
    g = grad_y.contiguous(memory_format=fmt)
    r = residual.contiguous(memory_format=fmt) if residual is not None else None
    c = geo[1]
    gx = torch.empty_like(x, memory_format=fmt) if output_mask[0] else x.new_empty(0)
    # grad_residual is dL/dz, which grad_x reads back when there is a residual
    gr = torch.empty_like(x, memory_format=fmt) if r is not None and (output_mask[0] or output_mask[1]) else None
    gw = x.new_zeros(c) if output_mask[2] else x.new_empty(0)
    gb = x.new_zeros(c) if output_mask[3] else x.new_empty(0)
    if x.numel() > 0:
        cdt = _acc_dtype(x.dtype)
        scale, shift, inv = _coefficients(mean, var, weight, bias, eps, x.dtype)
        mean_c = mean.to(cdt).contiguous()
        part = torch.empty((2, _grid(geo)[0], c), dtype=cdt, device=x.device)
        _bwd_sums_kernel[_grid(geo)](g, x, r if r is not None else x, scale, shift, mean_c,
                                     gr if gr is not None else x, part, *geo, HAS_R=r is not None, RELU=relu,
                                     WRITE_GR=gr is not None, BP=BLOCK_P, BC=BLOCK_C)
        sg, sgx = part.double().sum(1)
        if output_mask[2]:
            gw = (sgx * inv).to(x.dtype)
        if output_mask[3]:
            gb = sg.to(x.dtype)
        if output_mask[0]:
            w = weight.double() if weight is not None else torch.ones_like(inv)
            m = float(geo[0])
            ca = (w * inv).to(cdt)
            cb = (-w * inv ** 3 * sgx / m if training else torch.zeros_like(inv)).to(cdt)
            cd = (-w * inv * sg / m if training else torch.zeros_like(inv)).to(cdt)
            src, act = (gr, False) if gr is not None else (g, relu)
            _bwd_apply_kernel[_grid(geo)](src, x, scale, shift, mean_c, ca, cb, cd, gx, *geo, RELU=act,
                                          BP=BLOCK_P, BC=BLOCK_C)
    return gx, gr if output_mask[1] else x.new_empty(0), gw, gb
