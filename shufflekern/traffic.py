"""Modeled GPU memory traffic of the C++/CUDA kernels (``python -m shufflekern traffic``).

No GPU runs here, so the kernels' memory behaviour is counted, not timed: each op runs on CPU tensors under
the CUDA emulator (``sk.backend("emulated")``) with its memory-traffic model on (csrc/emu/emu.h): for every
warp, the j-th load (or store) of each lane to one buffer is one request, and the request moves every
distinct 32-byte sector its lanes touch; it asks for its distinct elements (a broadcast counts once).  Per (op, case, mode) this gives

  bytes_requested   what the threads asked for
  bytes_moved       sectors x 32, what the memory system would move (L1/L2 hits are not modelled: a re-read
                    counts again)
  sector_efficiency requested / moved (1.0: every sector fully used)
  bytes_min         every input read once and every output written once, except where the maths needs a
                    second pass over data that cannot stay on chip (the case is then labelled):
                    - kd_loss: a row whose student and teacher rows do not fit the kernel's 160 KiB shared-memory
                      budget is read twice ("rows read twice");
                    - batch_norm_act in training: the statistics (forward) or the sums (backward) must be
                      complete before any output, so what the second pass needs (forward: x; backward: x and
                      dL/dz) stays on chip between the passes if the tile one streaming multiprocessor holds
                      fits BN_CACHE_BUDGET (224 KiB: an H100's 227 KiB of shared memory a block, less room for
                      the per-channel coefficients).  The tile is one channel over N*H*W in NCHW; in
                      channels_last the channels of one 32-byte sector (8 fp32) over N*H*W when a pixel's
                      channels are whole sectors, else every channel (partial sectors would be moved by two
                      blocks).  Otherwise ("read twice") the second pass re-reads x (forward), or x and dL/dz
                      (backward: grad_residual when there is a residual, else grad_y re-masked).  A cluster of
                      SMs sharing a tile through distributed shared memory is not counted: a kernel could do
                      better than this minimum there.
  eager_bytes       the sum, over the ATen ops that the eager PyTorch composition dispatches (views excluded),
                    of their input + output bytes: an optimistic eager, as if every ATen kernel were ideal
  dram_bytes        the same launches with an L2 (an H100's 50 MB): a buffer the launch only reads moves each of its
                    distinct sectors once if it fits the L2 (weights re-read by every block, a tile read twice),
                    else every request's sectors; a buffer it writes moves each written sector once (and every
                    request's sectors it reads); each launch starts cold.  The planners' trade shows here: blocks
                    re-reading the weights cost request-level bytes (bytes_moved) but hardly DRAM bytes
  eager_over_dram   eager_bytes / dram_bytes: eager's ATen ops each read and write their tensors once, which is what
                    reaches DRAM for them too, so this compares like with like where a kernel re-reads data from
                    the L2 (weights re-read by every pixel tile, a group's activations re-read by its grad_W tiles)
  blocks            thread blocks of the op's launches (the largest launch), against the H100's 132 SMs
  h100_us           bytes_moved / 3.35 TB/s, the HBM3 bandwidth of an H100 SXM (NVIDIA's H100 datasheet): a
                    lower bound on the kernel time where memory decides it, not a measurement

Large launches are sampled (``--sample-blocks``: that many blocks, evenly spread, scaled up to the grid), as
the blocks of these kernels do the same work on different data.
"""
import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from . import _C
from ._backend import backend

H100_BYTES_PER_S = 3.35e12
SMEM_BUDGET = 160 * 1024  # the KD kernel's shared-memory budget for cached rows (csrc/cuda/kd_loss.cu)
BN_CACHE_BUDGET = 224 * 1024  # batch_norm_act's cached tile (kCacheBudget in csrc/cuda/batch_norm_act.cu)


def _nbytes(t):
    return t.numel() * t.element_size()


# ---- the emulated kernels --------------------------------------------------------------------------------

def emulated_traffic(fn, sample_blocks=0):
    """Runs fn() under the emulated backend with the traffic model on; returns (result, per-launch dicts)."""
    _C.emu_traffic_log()  # drop anything recorded before
    _C.emu_set_traffic(True, sample_blocks)
    try:
        with backend("emulated"):
            out = fn()
    finally:
        _C.emu_set_traffic(False, 0)
    log = [{k: (v if k == "kernel" else int(v)) for k, v in e.items()} for e in _C.emu_traffic_log()]
    return out, log


def summarize(log):
    """Totals of a list of launches, sampled launches scaled up to their whole grid."""
    tot = {"requested": 0.0, "moved": 0.0, "dram": 0.0, "blocks": 0, "kernels": []}
    for e in log:
        scale = e["blocks"] / max(e["blocks_run"], 1)
        tot["requested"] += scale * (e["load_bytes"] + e["store_bytes"])
        tot["moved"] += scale * 32 * (e["load_sectors"] + e["store_sectors"])
        tot["dram"] += e.get("dram_bytes", 0)  # scaled by the emulator
        tot["blocks"] = max(tot["blocks"], e["blocks"])
        if e["kernel"] not in tot["kernels"]:
            tot["kernels"].append(e["kernel"])
    return tot


# ---- eager PyTorch's bytes -------------------------------------------------------------------------------

class EagerBytes(TorchDispatchMode):
    """Counts input + output bytes of every ATen op dispatched inside it; views (outputs that alias an input
    without writing it) cost nothing."""

    def __init__(self):
        super().__init__()
        self.bytes = 0
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        returns = func._schema.returns
        if returns and all(r.alias_info is not None and not r.alias_info.is_write for r in returns):
            return out
        seen = set()

        def add(t):
            if isinstance(t, torch.Tensor) and id(t) not in seen:
                seen.add(id(t))
                self.bytes += _nbytes(t)
        for a in list(args) + list(kwargs.values()):
            for t in (a if isinstance(a, (list, tuple)) else [a]):
                add(t)
        for t in (out if isinstance(out, (list, tuple)) else [out]):
            add(t)
        self.ops.append(str(func))
        return out


def eager_bytes(fn):
    with EagerBytes() as m:
        fn()
    return m.bytes


# ---- the cases ---------------------------------------------------------------------------------------------

FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def _leaf(t):
    return t.detach().clone().requires_grad_(True)


def _conv_cases():
    from .functional import shuffle_conv1x1
    for g, c_in, c_out, hw in [(3, 240, 60, 28), (3, 60, 240, 28), (3, 480, 120, 14), (3, 120, 480, 14),
                               (3, 960, 240, 7)]:
        for layout, fmt in FORMATS.items():
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(8, c_in, hw, hw, generator=gen).contiguous(memory_format=fmt)
            w = torch.randn(c_out, c_in // g, 1, 1, generator=gen)
            y_bytes = 8 * c_out * hw * hw * 4
            case = f"8x{c_in}x{hw}x{hw}->{c_out} g={g} {layout} fp32"

            def ours_fwd(x=x, w=w, g=g):
                return shuffle_conv1x1(x, w, groups=g)

            def eager_fwd(x=x, w=w, g=g):
                return F.conv2d(torch.channel_shuffle(x, g), w, groups=g)

            gy = torch.randn(8, c_out, hw, hw, generator=gen).contiguous(memory_format=fmt)
            yield ("shuffle_conv1x1", case, "fwd", ours_fwd, eager_fwd, _nbytes(x) + _nbytes(w) + y_bytes)

            def ours_bwd(x=x, w=w, g=g, gy=gy):
                xs, ws = _leaf(x), _leaf(w)
                y = shuffle_conv1x1(xs, ws, groups=g)
                return torch.autograd.grad(y, (xs, ws), gy)

            def eager_bwd(x=x, w=w, g=g, gy=gy):
                return _eager_backward(lambda xs, ws: F.conv2d(torch.channel_shuffle(xs, g), ws, groups=g), (x, w), gy)

            # grad_out, x, w read once; grad_x, grad_w written once
            yield ("shuffle_conv1x1", case, "bwd", ours_bwd, eager_bwd,
                   _nbytes(gy) + _nbytes(x) + 2 * _nbytes(w) + _nbytes(x))


def _eager_backward(f, inputs, grad):
    """The eager backward's bytes only: the forward runs outside the counting mode."""
    leaves = [_leaf(t) for t in inputs]
    out = f(*leaves)
    with EagerBytes() as m:
        torch.autograd.grad(out, leaves, grad)
    return m.bytes


def _shuffle_cases():
    from .functional import channel_shuffle
    for n, c, h, w, g in [(16, 116, 28, 28, 2), (16, 240, 28, 28, 3)]:
        for layout, fmt in FORMATS.items():
            x = torch.randn(n, c, h, w).contiguous(memory_format=fmt)
            case = f"{n}x{c}x{h}x{w} g={g} {layout} fp32"

            def view_transpose(t, g=g):
                n_, c_, h_, w_ = t.shape
                return t.view(n_, g, c_ // g, h_, w_).transpose(1, 2).contiguous().view(n_, c_, h_, w_)
            yield ("channel_shuffle", case, "fwd", lambda x=x, g=g: channel_shuffle(x, g),
                   lambda x=x, f=view_transpose: f(x), 2 * _nbytes(x))
            gy = torch.randn_like(x)

            def ours_bwd(x=x, g=g, gy=gy):
                xs = _leaf(x)
                return torch.autograd.grad(channel_shuffle(xs, g), xs, gy)
            yield ("channel_shuffle", case, "bwd", ours_bwd,
                   lambda x=x, gy=gy, f=view_transpose: _eager_backward(f, (x,), gy), 2 * _nbytes(x))


def _kd_cases():
    from .functional import kd_loss
    for rows, classes in [(8192, 10), (256, 1000), (1024, 32000)]:
        for dtype in (torch.float32, torch.bfloat16):
            gen = torch.Generator().manual_seed(0)
            s = (torch.randn(rows, classes, generator=gen) * 3).to(dtype)
            t = (torch.randn(rows, classes, generator=gen) * 3).to(dtype)
            y = torch.randint(0, classes, (rows,), generator=gen)
            esize = s.element_size()
            passes = 1 if 2 * classes * esize <= SMEM_BUDGET else 2
            case = f"{rows}x{classes} {str(dtype).replace('torch.', '')}" + (" (rows read twice)" if passes == 2 else "")

            def ours(s=s, t=t, y=y):
                ss = _leaf(s)
                loss = kd_loss(ss, t, y, temperature=4.0, alpha=0.9)
                return loss

            def eager(s=s, t=t, y=y):
                ss = _leaf(s)
                T = 4.0
                kl = F.kl_div(F.log_softmax(ss.float() / T, -1), F.log_softmax(t.float() / T, -1), log_target=True,
                              reduction="batchmean") * T * T
                loss = 0.9 * kl + 0.1 * F.cross_entropy(ss.float(), y)
                return torch.autograd.grad(loss.to(s.dtype), ss)

            # the op: loss and the student's gradient in one pass (what a training step asks for)
            yield ("kd_loss", case, "fwd", lambda f=ours: f(), eager,
                   passes * (_nbytes(s) + _nbytes(t)) + _nbytes(y) + _nbytes(s))


def bn_tile_fits(layout, n, c, hw, esize, tensors):
    """Whether `tensors` activation-sized arrays of a batch_norm_act tile fit on chip (see bytes_min)."""
    if layout == "nchw":
        ct = 1
    else:
        ct = 32 // esize if (c * esize) % 32 == 0 else c
    return tensors * ct * n * hw * hw * esize <= BN_CACHE_BUDGET


def _bn_cases():
    op = torch.ops.shufflekern.batch_norm_act
    for c, hw, res in [(240, 28, True), (480, 14, True), (60, 28, False)]:
        for layout, fmt in FORMATS.items():
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(8, c, hw, hw, generator=gen).contiguous(memory_format=fmt)
            r = torch.randn(8, c, hw, hw, generator=gen).contiguous(memory_format=fmt) if res else None
            w, b = torch.ones(c), torch.zeros(c)
            case = f"8x{c}x{hw}x{hw}{' +residual' if res else ''} relu {layout} fp32 train"
            fits_fwd = bn_tile_fits(layout, 8, c, hw, 4, 1)
            fits_bwd = bn_tile_fits(layout, 8, c, hw, 4, 2)

            def ours(x=x, r=r, w=w, b=b):
                return op(x, w, b, r, None, None, True, 1e-5, True)

            def eager(x=x, r=r, w=w, b=b):
                z = F.batch_norm(x, None, None, w, b, True, 0.1, 1e-5)
                return F.relu(z + r if r is not None else z)
            xb = _nbytes(x)
            rb = _nbytes(r) if r is not None else 0
            # x [twice], r once, y once
            yield ("batch_norm_act", case + ("" if fits_fwd else " (x read twice)"), "fwd", ours, eager,
                   (1 if fits_fwd else 2) * xb + rb + xb)
            gy = torch.randn_like(x)

            def ours_bwd(x=x, r=r, w=w, b=b, gy=gy):
                leaves = [_leaf(t) for t in (x, w, b) + ((r,) if r is not None else ())]
                y = op(leaves[0], leaves[1], leaves[2], leaves[3] if r is not None else None, None, None, True, 1e-5,
                       True)[0]
                return torch.autograd.grad(y, leaves, gy)

            def eager_bwd(x=x, r=r, w=w, b=b, gy=gy):
                inputs = (x, w, b) + ((r,) if r is not None else ())

                def f(x_, w_, b_, *rr):
                    z = F.batch_norm(x_, None, None, w_, b_, True, 0.1, 1e-5)
                    return F.relu(z + rr[0] if rr else z)
                return _eager_backward(f, inputs, gy)
            # grad_y, x [, r] read once, grad_x [, grad_residual] written once; streamed: x and dL/dz read again
            yield ("batch_norm_act", case + ("" if fits_bwd else " (x, dL/dz read twice)"), "bwd", ours_bwd,
                   eager_bwd, 3 * xb + 2 * rb + (0 if fits_bwd else 2 * xb))


def cases():
    yield from _shuffle_cases()
    yield from _conv_cases()
    yield from _kd_cases()
    yield from _bn_cases()


# ---- the report ----------------------------------------------------------------------------------------------

def report(sample_blocks=48, ops=None, progress=None):
    rows, fwd_launches = [], 0
    for op, case, mode, ours, eager, bytes_min in cases():
        if ops and op not in ops:
            continue
        if progress:
            progress(f"{op} {case} {mode}")
        log = emulated_traffic(ours, sample_blocks)[1]
        if mode == "bwd":
            # ours runs forward and backward: leave out the forward's launches, counted on the fwd row that
            # every case yields just before its bwd row
            log = log[fwd_launches:]
        else:
            fwd_launches = len(log)
        tot = summarize(log)
        eb = eager() if mode == "bwd" else eager_bytes(eager)
        moved, req = tot["moved"], tot["requested"]
        rows.append({
            "op": op, "case": case, "mode": mode,
            "bytes_min": int(bytes_min), "bytes_requested": int(req), "bytes_moved": int(moved),
            "sector_efficiency": round(req / moved, 4) if moved else None,
            "moved_over_min": round(moved / bytes_min, 4) if bytes_min else None,
            "eager_bytes": int(eb), "eager_over_ours": round(eb / moved, 4) if moved else None,
            "dram_bytes": int(tot["dram"]), "dram_over_min": round(tot["dram"] / bytes_min, 4) if bytes_min else None,
            "eager_over_dram": round(eb / tot["dram"], 4) if tot["dram"] else None,
            "blocks": int(tot["blocks"]),
            "h100_us_model": round(moved / H100_BYTES_PER_S * 1e6, 2),
            "eager_h100_us_model": round(eb / H100_BYTES_PER_S * 1e6, 2),
            "kernels": tot["kernels"],
        })
    return rows


def geomean(values):
    values = [v for v in values if v]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def markdown(rows):
    lines = ["| op | case | mode | min MB | moved MB | sector eff. | moved / min | eager MB | eager / ours | "
             "H100 us (model) | DRAM MB (L2 model) | DRAM / min | eager / ours (DRAM) | blocks |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['op']} | {r['case']} | {r['mode']} | {r['bytes_min'] / 1e6:.2f} | "
                     f"{r['bytes_moved'] / 1e6:.2f} | {r['sector_efficiency']:.3f} | {r['moved_over_min']:.3f} | "
                     f"{r['eager_bytes'] / 1e6:.2f} | {r['eager_over_ours']:.2f} | {r['h100_us_model']:.1f} | "
                     f"{r['dram_bytes'] / 1e6:.2f} | {r['dram_over_min']:.3f} | {r['eager_over_dram']:.2f} | "
                     f"{r['blocks']} |")
    lines.append("")
    lines.append("| op | geomean eager / ours | geomean eager / ours (DRAM) | worst sector eff. | worst moved / min | "
                 "worst DRAM / min (L2 model) |")
    lines.append("|---|---|---|---|---|---|")
    for op in dict.fromkeys(r["op"] for r in rows):
        rs = [r for r in rows if r["op"] == op]
        lines.append(f"| {op} | {geomean([r['eager_over_ours'] for r in rs]):.2f} | "
                     f"{geomean([r['eager_over_dram'] for r in rs]):.2f} | "
                     f"{min(r['sector_efficiency'] for r in rs):.3f} | {max(r['moved_over_min'] for r in rs):.3f} | "
                     f"{max(r['dram_over_min'] for r in rs):.3f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m shufflekern traffic",
                                description="Modeled GPU memory traffic of the CUDA kernels (emulator), vs the "
                                            "minimum and vs eager PyTorch's ATen ops. A model, not a measurement.")
    p.add_argument("--json", metavar="PATH", help="write the rows as JSON")
    p.add_argument("--markdown", metavar="PATH", help="write the tables as markdown")
    p.add_argument("--ops", nargs="*", help="only these ops")
    p.add_argument("--sample-blocks", type=int, default=48, help="blocks run a launch (0: all)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    prog = None if a.no_progress else (lambda s: print("..", s, file=sys.stderr, flush=True))
    rows = report(a.sample_blocks, a.ops, prog)
    text = markdown(rows)
    print(text)
    for path, data in ((a.json, json.dumps(rows, indent=1)), (a.markdown, text + "\n")):
        if path:
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.write(data)
            os.replace(tmp, path)
    return 0
