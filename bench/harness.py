"""The one benchmark harness: every bench_<op>.py case times its providers through `measure`.

pytest-benchmark runs each case (pedantic mode: explicit warm-up and rounds); this module adds the modes
(fwd / bwd / fwd+bwd), the 20/80% quantiles, peak memory and the labels that the report
(`python -m shufflekern bench`, bench/report.py) turns into the long CSV, the table and the plots.

The figures the report uses are timed with the providers of a case interleaved round by round: the
machines this runs on are shared and noisy (the same case moves by +-25% between runs), so timing each
provider in its own block of rounds let a slow spell land on one provider (channel_shuffle NCHW fwd+bwd
read 0.70x native in one run and 0.93x in the next, with the kernels at parity when interleaved).  Each
provider's test registers its callable; when the next case begins (or the session ends) the case's
providers are timed together, in alternating order (ABCD, DCBA, ...), over the sum of their time budgets,
and those samples replace each provider's medians and quantiles (`interleaved` = how many providers shared
the rounds).  In a round each provider runs twice, the second call timed (as scripts/models_interleaved.py
does), so that its operands are as warm as in back-to-back rounds rather than evicted by the other providers'
calls (cold operands are a different benchmark).
"""
import ctypes
import gc
import os
import statistics
import sys
import time

import torch

MODES = ("fwd", "bwd", "fwd+bwd")
# `python -m shufflekern bench --device cuda` puts every case's inputs (and the models) on that device.
DEVICE = torch.device(os.environ.get("SHUFFLEKERN_BENCH_DEVICE", "cpu"))
_compiled = {}
_warmed = set()


def compiled(key, fn):
    """torch.compile(fn), built once per key (compilation happens in the warm-up, not the timing)."""
    if key not in _compiled:
        _compiled[key] = torch.compile(fn, dynamic=False)
    return _compiled[key]


# ---- peak memory (CPU: resident-set high-water mark; CUDA: the caching allocator's peak) --------------
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
_libc = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None


def _steady_malloc():
    """glibc's settled state for a loop of large tensors: blocks up to 32 MiB come from the heap, which
    is not trimmed below 64 MiB.  (Its dynamic thresholds converge there; fixing them keeps every case,
    and the memory measurement below, from moving them under the other cases' feet.)"""
    if _libc is not None:
        _libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
        _libc.mallopt(M_TRIM_THRESHOLD, 64 << 20)


_steady_malloc()


def _rss_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return None


def peak_memory_bytes(target, setup, device):
    """Extra bytes at the peak of one call of target(*setup()) over what was live before it."""
    args = setup() if setup else ()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        target(*args)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    if _libc is None:
        return None
    # While measuring, every allocation of 64 KiB or more gets its own mmap and is returned on free, so
    # the resident set tracks live tensors (the heap would otherwise reuse freed blocks and hide the peak).
    _libc.mallopt(M_MMAP_THRESHOLD, 1 << 16)
    _libc.malloc_trim(0)
    try:
        base = _rss_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        target(*args)
        peak = _rss_bytes("VmHWM")
    finally:
        _steady_malloc()
    return max(0, peak - base)
    return max(0, _rss_bytes("VmHWM") - base)


# ---- the measurement ----------------------------------------------------------------------------------
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _callables(mode, fn, inputs, grad_inputs):
    """(target, setup) for pedantic timing: target(*setup()) is the timed work."""
    if mode == "fwd":
        ins = [t.detach() for t in inputs]

        def fwd():
            with torch.no_grad():
                return fn(*ins)
        return fwd, None

    leaves = [t.detach().requires_grad_(bool(g)) for t, g in zip(inputs, grad_inputs)]
    grad_out = {}

    def forward():
        for t in leaves:
            t.grad = None  # no accumulation pass: every round writes fresh gradients
        return fn(*leaves)

    def backward(out):
        if out.dim() == 0:
            out.backward()
        else:
            g = grad_out.get("g")
            if g is None or g.shape != out.shape:
                g = grad_out["g"] = torch.ones_like(out)
            out.backward(g)

    if mode == "fwd+bwd":
        return (lambda: backward(forward())), None
    return backward, (lambda: (forward(),))


def measure(benchmark, *, op, provider, mode, shape, dtype, fn, inputs, layout="", grad_inputs=None,
            budget_s=0.6, memory=True, extra=None, min_rounds=7, max_rounds=2000):
    """Time `fn(*inputs)` in `mode` with pytest-benchmark and label the result for the report.

    fn returns the op's output; fwd+bwd/bwd call backward on it (a scalar directly, else with ones).
    grad_inputs says which inputs require grad (default: the floating-point ones).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if grad_inputs is None:
        grad_inputs = [t.is_floating_point() for t in inputs]
    dtype_name = str(dtype).replace("torch.", "")
    group = (op, mode, shape, layout, dtype_name)
    if _pending and _pending[0]["group"] != group:
        flush()  # the previous case's providers, before this case's warm-up (and compilation)
    # `python -m shufflekern bench` splits the time budget over its passes.
    scale = float(os.environ.get("SHUFFLEKERN_BENCH_BUDGET_SCALE", "1"))
    budget_s *= scale
    min_rounds = max(3, round(min_rounds * scale))
    inputs = [t.to(DEVICE) for t in inputs]  # keeps each tensor's memory format
    if _pending:
        inputs = _shared_inputs(_pending[0]["inputs"], inputs)
    device = inputs[0].device
    target, setup = _callables(mode, fn, inputs, grad_inputs)

    def call():
        args = setup() if setup else ()
        _sync(device)
        t0 = time.perf_counter()
        target(*args)
        _sync(device)
        return time.perf_counter() - t0

    # Warm-up (compiles, caches, page faults), then size the rounds to the time budget.  Two warm-up calls
    # (the first compiles / faults pages in, the second settles the allocator), only in the first of the
    # passes that `python -m shufflekern bench` makes (this module outlives them).
    case = (op, provider, mode, shape, layout, str(dtype))
    if case not in _warmed:
        _warmed.add(case)
        for _ in range(2):
            call()
    one = call()
    rounds = int(min(max_rounds, max(min_rounds, budget_s / max(one, 1e-7))))

    def timed(*args):
        target(*args)
        _sync(device)

    # pytest-benchmark's own rounds (its table; a fallback if a case has a single provider): few, since the
    # interleaved rounds below take the time budget.
    benchmark.pedantic(timed, setup=setup, rounds=min(rounds, min_rounds), iterations=1, warmup_rounds=0)
    info = benchmark.extra_info
    info.update(op=op, provider=provider, mode=mode, shape=shape, layout=layout,
                dtype=dtype_name, **_stats(benchmark.stats.stats.data))
    if memory and os.environ.get("SHUFFLEKERN_BENCH_SKIP_MEMORY") != "1":  # (measured in the first pass only)
        info["peak_bytes"] = peak_memory_bytes(target, setup, device)
    if extra:
        info.update(extra)
    _pending.append(dict(group=group, inputs=inputs, call=call, one=one, budget=budget_s, info=info,
                         min_rounds=min_rounds, max_rounds=max_rounds))
    return info


def _shared_inputs(first, inputs):
    """The first provider's tensors when `inputs` hold the same values in the same layout, else `inputs`.

    A case's providers then read the same memory: each provider's test builds its own (seeded, equal)
    inputs, and where the allocator happened to put them moved a provider's time by itself (channel_shuffle
    NCHW fwd, one op, no page faults: 0.13-0.42 ms per process, and a provider 0.64 vs 0.85 ms against
    another in the same process for the same kernel).  Every provider's timed call follows an untimed one,
    so sharing does not warm the input for one provider more than for another."""
    if len(first) != len(inputs):
        return inputs
    for a, b in zip(first, inputs):
        if (a.device != b.device or a.dtype != b.dtype or a.shape != b.shape or a.stride() != b.stride()
                or not torch.equal(a, b)):
            return inputs
    return list(first)


def _stats(data):
    data = sorted(data)
    q = statistics.quantiles(data, n=10, method="inclusive") if len(data) > 1 else [data[0]] * 9
    return dict(median_s=statistics.median(data), q20_s=q[1], q80_s=q[7], rounds=len(data))


_pending = []  # the current case's providers: measured, waiting to be timed together


def flush():
    """Time the pending case's providers interleaved (ABCD, DCBA, ...) over the sum of their budgets and
    put those samples in their results.  bench/conftest.py calls it at the end of the session too."""
    members = list(_pending)
    _pending.clear()
    if len(members) < 2:
        return
    per_round = 2 * sum(max(m["one"], 1e-7) for m in members)
    budget = sum(m["budget"] for m in members)
    rounds = int(min(min(m["max_rounds"] for m in members),
                     max(max(m["min_rounds"] for m in members), budget / per_round)))
    samples = [[] for _ in members]
    order = list(range(len(members)))
    for r in range(rounds):
        for i in (order if r % 2 == 0 else order[::-1]):
            members[i]["call"]()  # warm (untimed)
            samples[i].append(members[i]["call"]())
    for m, data in zip(members, samples):
        m["info"].update(_stats(data), interleaved=len(members))
