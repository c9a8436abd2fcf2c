"""Where one provider of scripts/models_interleaved.py spends its time: torch.profiler over a few calls, ms a call
per op (self CPU time), largest first; `--shapes` splits each op by its input shapes.

    PYTHONPATH=. python scripts/profile_step.py [--model v2] [--kind fused] [--format cl] [--case train16]
        [--calls 3] [--top 25] [--shapes] [--threads N] [--tune-malloc]

The figures are what the profiler attributes to each op in a running step (inputs cold from DRAM, as in
training), not the op's speed alone; the profiler adds a few microseconds to every op.
"""
import argparse

import torch
from models_interleaved import FORMATS, MODELS, provider  # (this script's directory is on sys.path)
from torch.profiler import ProfilerActivity, profile

import shufflekern as sk

CASES = {"infer1": (False, 1), "infer16": (False, 16), "train16": (True, 16)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="v2", choices=sorted(MODELS))
    ap.add_argument("--kind", default="fused", choices=["fused", "eager", "compile", "compile_fused"])
    ap.add_argument("--format", default="cl", choices=sorted(FORMATS))
    ap.add_argument("--case", default="train16", choices=sorted(CASES))
    ap.add_argument("--calls", type=int, default=3, help="profiled calls (after three untimed ones)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--shapes", action="store_true", help="one row per op and input shapes")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tune-malloc", action="store_true", help="sk.tune_malloc() first")
    a = ap.parse_args()
    sk.testing.isolate_inductor_cache_per_isa()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.tune_malloc and not sk.tune_malloc():
        ap.error(f"--tune-malloc: {sk.malloc_state()['detail']}")
    train, batch = CASES[a.case]
    fn = provider(a.model, a.kind, a.format, train, batch)
    for _ in range(3):
        fn()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=a.shapes) as prof:
        for _ in range(a.calls):
            fn()
    events = prof.key_averages(group_by_input_shape=a.shapes)
    rows = sorted(events, key=lambda e: -e.self_cpu_time_total)[:a.top]
    total = sum(e.self_cpu_time_total for e in events) / a.calls / 1e3
    print(f"{a.model} {a.kind} {a.format} {a.case}: {total:.1f} ms a call of op self time, "
          f"{torch.get_num_threads()} threads, kernels {sk._C.runtime_cpu_isa()}, "
          f"malloc: {sk.malloc_state()['detail']}")
    for e in rows:
        shapes = f"  {e.input_shapes}" if a.shapes else ""
        print(f"{e.self_cpu_time_total / a.calls / 1e3:8.2f} ms  x{e.count // a.calls:<4d} {e.key}{shapes}")


if __name__ == "__main__":
    main()
