"""Size, work and CPU latency of a model: parameter counts, multiply-adds, interleaved timing."""
import os
import statistics
import time

import torch
from torch import nn

__all__ = ["count_params", "count_nonzero", "count_mflops", "interleaved_latency", "file_mb"]


def count_params(model):
    """Parameters (masks' weight_orig count once; buffers do not count)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_nonzero(model):
    return sum(int((p != 0).sum()) for p in model.parameters())


@torch.no_grad()
def count_mflops(model, input_shape):
    """Millions of multiply-adds of one image (the ShuffleNet papers' "MFLOPs"): convolutions and linear
    layers, counted on the unfused model (the fused ops do the same multiply-adds)."""
    from ..fuse import unfuse

    m = unfuse(model).eval()
    total = [0]

    def conv(mod, inp, out):
        k = mod.weight.shape[1] * mod.weight.shape[2] * mod.weight.shape[3]
        total[0] += out.numel() // out.shape[0] * k

    def lin(mod, inp, out):
        total[0] += out.numel() // out.shape[0] * mod.in_features

    hooks = [mod.register_forward_hook(conv if isinstance(mod, nn.Conv2d) else lin)
             for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    try:
        m(torch.zeros(1, *input_shape[1:] if len(input_shape) == 4 else input_shape))
    finally:
        for h in hooks:
            h.remove()
    return total[0] / 1e6


def interleaved_latency(fns, *, rounds=15, iters=5, warmup=3):
    """Median wall time (ms) of one call of each callable in `fns` (name -> fn).

    Interleaved: every round runs each fn `iters` times, in an order that rotates from round to round,
    so that a change of load on a shared machine hits all of them alike; compare them only as ratios
    from the same call."""
    names = list(fns)
    with torch.inference_mode():
        for name in names:
            for _ in range(warmup):
                fns[name]()
        times = {n: [] for n in names}
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                t0 = time.perf_counter()
                for _ in range(iters):
                    fns[name]()
                times[name].append((time.perf_counter() - t0) / iters * 1e3)
    return {n: statistics.median(v) for n, v in times.items()}


def file_mb(path):
    return os.path.getsize(path) / 2 ** 20
