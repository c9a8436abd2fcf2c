"""Triton kernel of channel_shuffle (index math as csrc/channel_shuffle.h).  The launcher trusts its
arguments: shufflekern/ops.py checks them and the dtype (no complex: shufflekern/_backend.py) first."""
import torch
import triton
import triton.language as tl

from .._validate import suggest_memory_format


@triton.jit
def _channel_shuffle_kernel(in_ptr, out_ptr, total, C, inner, groups, cpg, BLOCK: tl.constexpr):
    # out element i sits at (row, pos) with row = image*C + channel (NCHW, inner = H*W) or
    # pixel*C + channel (channels_last, inner = 1); it reads channel (ch % groups)*cpg + ch // groups.
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    pos = offs % inner
    row = offs // inner
    ch = row % C
    src = (row - ch + (ch % groups) * cpg + ch // groups) * inner + pos
    tl.store(out_ptr + offs, tl.load(in_ptr + src, mask=mask), mask=mask)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    fmt = suggest_memory_format(x)
    x = x.contiguous(memory_format=fmt)
    out = torch.empty_like(x, memory_format=fmt)
    total = x.numel()
    if total == 0:
        return out
    n, c, h, w = x.shape
    inner = 1 if fmt == torch.channels_last else h * w
    # bool has no Triton pointer type, and Triton's fp8 types are not supported on every GPU (float8_e4m3fn
    # does not compile for sm_80): a shuffle only moves bytes, so move 1-byte elements as uint8.
    src, dst = (x.view(torch.uint8), out.view(torch.uint8)) if x.element_size() == 1 else (x, out)
    block = 1024
    _channel_shuffle_kernel[(triton.cdiv(total, block),)](src, dst, total, c, inner, groups, c // groups,
                                                          BLOCK=block)
    return out
