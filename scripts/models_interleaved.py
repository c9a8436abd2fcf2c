"""End-to-end ShuffleNet speed with the providers interleaved step by step (the fused models' speed targets).

`python -m shufflekern bench --ops models` also interleaves a case's providers (bench/harness.py), but one
case at a time and within pytest; this script builds every provider of a model once and then runs them in
alternating order (ABCD, DCBA, ...) for every case asked, so that a slow spell of a shared, noisy machine
(sequential ratios of the same models moved by ±25% between runs here) hits all alike; the medians and
ratios it prints come from one run.  Providers as in bench/bench_models.py: the fused model (`sk.fuse`; inference: BatchNorm folded) and
the eager model, each in NCHW and channels_last; `--compile` adds torch.compile of the eager model and of the
fused model (compile_fused), both channels_last.  After the table it prints each provider's median minor page
faults a timed call (glibc re-faulting freed activations: one reason a provider's time moves between processes),
and the fused-vs-eager ratio paired round by round (median, quartiles, range of the per-round ratios of the two
providers the table's ratio compares).  The table's ratio is of medians over the rounds; with this machine's
round-to-round noise, 8 rounds leave it some ±10-15% between runs, 24 rounds about ±6%.

    PYTHONPATH=. python scripts/models_interleaved.py [--steps 12] [--settle 3] [--models v1_g3,v2] [--compile]
        [--cases infer16,train16] [--formats nchw,cl] [--threads N] [--tune-malloc]
"""
import argparse
import statistics
import time

try:
    import resource  # minor page faults of each timed call (Unix)
except ImportError:  # pragma: no cover
    resource = None

import torch
import torch.nn.functional as F
import torchvision

import shufflekern as sk

MODELS = {
    "v1_g3": lambda: sk.models.shufflenet_v1(3, 1.0, fused=False),
    "v1_g8": lambda: sk.models.shufflenet_v1(8, 1.0, fused=False),
    "v2": lambda: torchvision.models.shufflenet_v2_x1_0(),
}
FORMATS = {"nchw": torch.contiguous_format, "cl": torch.channels_last}


def _minor_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource is not None else 0


def provider(name, kind, fmt, train, batch):
    torch.manual_seed(0)
    model = MODELS[name]().train(train)
    if kind in ("fused", "compile_fused"):
        model = sk.fuse(model)
    model = model.to(memory_format=FORMATS[fmt])
    fwd = torch.compile(model) if kind in ("compile", "compile_fused") else model
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=FORMATS[fmt])
    if not train:
        def infer():
            with torch.no_grad():
                fwd(x)
        return infer
    target = torch.randint(0, 1000, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(fwd(x), target).backward()
        opt.step()
    return step


def run(name, train, batch, steps, with_compile, settle=1, formats=tuple(FORMATS)):
    kinds = [("fused", f) for f in formats] + [("eager", f) for f in formats]
    if with_compile:
        kinds += [("compile", "cl"), ("compile_fused", "cl")]
    fns = {f"{k}_{f}": provider(name, k, f, train, batch) for k, f in kinds}
    for fn in fns.values():  # warm-up (and compilation)
        fn()
        fn()
    times = {k: [] for k in fns}
    faults = {k: [] for k in fns}
    order = list(fns)
    for i in range(steps):
        for k in (order if i % 2 == 0 else order[::-1]):
            for _ in range(settle - 1):  # untimed: the allocator returns to this provider's steady state
                fns[k]()
            f0 = _minor_faults()
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
            faults[k].append(_minor_faults() - f0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    fused = min(med[f"fused_{f}"] for f in formats)
    eager = min(med[f"eager_{f}"] for f in formats)
    cells = " | ".join(f"{med[k]:.1f}" for k in order)
    vs_compile = ""
    if with_compile:
        vs_compile = (f" | {med['compile_cl'] / fused:.2f}x | {eager / med['compile_fused_cl']:.2f}x"
                      f" | {med['compile_cl'] / med['compile_fused_cl']:.2f}x | {min(med, key=med.get)}")
    kind = "train step" if train else "inference"
    fault_line = (f"- {name} {kind} bs {batch}: " + ", ".join(f"{k} {statistics.median(v):,.0f}"
                                                           for k, v in faults.items())
                  if resource is not None else "")
    # The same comparison paired round by round: the best eager and best fused formats' times of each round
    # (timed within seconds of each other), so a slow spell of the machine hits both sides of a ratio.
    best_f = min((f"fused_{f}" for f in formats), key=med.get)
    best_e = min((f"eager_{f}" for f in formats), key=med.get)
    paired = sorted(e / f for e, f in zip(times[best_e], times[best_f]))
    paired_line = (f"- {name} {kind} bs {batch}: {best_e} / {best_f} per round: median {statistics.median(paired):.2f}x, "
                   f"quartiles {paired[len(paired) // 4]:.2f}x-{paired[(3 * len(paired)) // 4]:.2f}x, "
                   f"range {paired[0]:.2f}x-{paired[-1]:.2f}x")
    return (f"| {name} | {kind} | {batch} | {cells} | {eager / fused:.2f}x{vs_compile} |", order, fault_line,
            paired_line)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12, help="interleaved rounds per provider")
    ap.add_argument("--settle", type=int, default=1,
                    help="calls per provider per round, only the last timed (default 1).  With 1, a provider's "
                         "allocations follow another model's, which costs the eager models (more and larger "
                         "temporaries) extra page faults; 2 or 3 time the steady state a single-model process "
                         "sees, still interleaved")
    ap.add_argument("--models", default="v1_g3,v2", help=f"comma-separated, of {sorted(MODELS)}")
    ap.add_argument("--compile", action="store_true",
                    help="add torch.compile of the eager and of the fused model (slow to build)")
    ap.add_argument("--cases", default="infer16,train16",
                    help="comma-separated, of infer1, infer16, train16 (inference at batch 1 / 16, training "
                         "step at batch 16; default infer16,train16)")
    ap.add_argument("--formats", default="nchw,cl",
                    help="memory formats of the fused and eager providers (default nchw,cl; `cl` alone interleaves "
                         "fewer providers, which changes the cache and allocator state each one starts from)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tune-malloc", action="store_true",
                    help="sk.tune_malloc() first: glibc keeps freed memory instead of faulting it in again every "
                         "step (applies to every provider alike: one process)")
    a = ap.parse_args()
    sk.testing.isolate_inductor_cache_per_isa()  # one torch.compile cache per ATEN_CPU_CAPABILITY
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.tune_malloc and not sk.tune_malloc():
        ap.error(f"--tune-malloc: {sk.malloc_state()['detail']}")
    rows, fault_lines, paired_lines, header = [], [], [], None
    cases = {"infer1": (False, 1), "infer16": (False, 16), "train16": (True, 16)}
    for c in a.cases.split(","):
        if c.strip() not in cases:
            ap.error(f"--cases: unknown case {c!r}, expected some of {sorted(cases)}")
    formats = tuple(f.strip() for f in a.formats.split(","))
    if not formats or any(f not in FORMATS for f in formats) or len(set(formats)) != len(formats):
        ap.error(f"--formats: expected distinct values of {sorted(FORMATS)}, got {a.formats!r}")
    for name in a.models.split(","):
        for train, batch in (cases[c.strip()] for c in a.cases.split(",")):
            row, order, fault_line, paired_line = run(name.strip(), train, batch, a.steps, a.compile, a.settle,
                                                      formats)
            print(row, flush=True)
            rows.append(row)
            fault_lines.append(fault_line)
            paired_lines.append(paired_line)
            header = order
    print(f"\nmedian ms over {a.steps} interleaved rounds (each provider called {a.settle}x a round, the last "
          f"timed), 224x224 fp32, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, shufflekern CPU kernels {sk._C.runtime_cpu_isa()}, malloc: "
          f"{sk.malloc_state()['detail']}; speed-up = best eager format / best fused format"
          + ("; vs compile = torch.compile of eager (channels_last) / best fused; compile_fused = "
             "torch.compile of the fused model (channels_last)" if a.compile else ""))
    print("| model | case | batch | " + " | ".join(f"{k} ms" for k in header) + " | fused vs eager |"
          + (" fused vs compile | compile_fused vs eager | compile_fused vs compile | fastest |" if a.compile else ""))
    print("|---" * (4 + len(header) + (4 if a.compile else 0)) + "|")
    print("\n".join(rows))
    print("\nfused vs eager paired round by round (the table's providers):")
    print("\n".join(paired_lines))
    if any(fault_lines):
        # glibc may trim freed activations and fault them in again every call: a provider's time then depends on
        # its process's allocation history (sk.tune_malloc() stops it); these counts say when that happened.
        print("\nminor page faults a timed call (median over the rounds):")
        print("\n".join(fault_lines))


if __name__ == "__main__":
    main()
