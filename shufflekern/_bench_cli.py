"""`python -m shufflekern bench`: runs the pytest-benchmark cases under bench/ and renders the report."""
import argparse
import os
import shutil
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "bench")


class _Progress:
    """pytest plugin: one tqdm bar over the cases instead of pytest's own terminal output."""

    def __init__(self, desc="bench"):
        self.desc = desc
        self.bar = None
        self.failed = []

    def pytest_collection_finish(self, session):
        from tqdm import tqdm
        self.bar = tqdm(total=len(session.items), desc=self.desc, unit="case", dynamic_ncols=True)

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.failed.append(report)
            sys.stderr.write(f"\nFAILED {report.nodeid}\n{report.longreprtext}\n")
        if report.when == "teardown" and self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(report.nodeid.split("[")[-1].rstrip("]")[:60])

    def pytest_sessionfinish(self, session):
        if self.bar is not None:
            self.bar.close()


def main(argv):
    ap = argparse.ArgumentParser(prog="python -m shufflekern bench",
                                 description="Kernel and model benchmarks vs eager PyTorch and torch.compile.")
    ap.add_argument("--full", action="store_true", help="also run the large cases")
    ap.add_argument("--ops", default=None,
                    help="comma-separated bench files to run (e.g. channel_shuffle,kd_loss,dkd_loss); default: all")
    ap.add_argument("-k", dest="keyword", default=None, help="pytest -k expression to select cases")
    ap.add_argument("--out", default=None, help="results directory (default: bench/results/<timestamp>, and the report becomes bench/results/latest.*)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: all cores)")
    ap.add_argument("--tune-malloc", action="store_true",
                    help="sk.tune_malloc() in the bench processes (every provider alike): glibc keeps freed "
                         "memory instead of faulting it in again")
    ap.add_argument("--passes", type=int, default=3,
                    help="run every case this many times, in alternating order, each with 1/passes of the time "
                         "budget; the report takes the median over the passes (default 3)")
    ap.add_argument("--device", default="cpu",
                    help="device of the inputs (and models): cpu (default) or cuda[:N]; every provider runs there")
    a = ap.parse_args(argv)
    try:
        device = torch.device(a.device)
    except RuntimeError as e:
        sys.exit(f"shufflekern bench: bad --device {a.device!r}: {e}")
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("shufflekern bench: --device cuda but torch sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        sys.exit(f"shufflekern bench: --device must be cpu or cuda[:N], got {a.device!r}")
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    os.environ["SHUFFLEKERN_BENCH_DEVICE"] = str(device)
    from shufflekern.testing import isolate_inductor_cache_per_isa
    isolate_inductor_cache_per_isa()  # one torch.compile cache per ATEN_CPU_CAPABILITY
    if a.tune_malloc:
        from shufflekern import malloc_state, tune_malloc
        if not tune_malloc():
            sys.exit(f"shufflekern bench: --tune-malloc: {malloc_state()['detail']}")
    if not os.path.isdir(BENCH):
        sys.exit(f"shufflekern bench: the benchmark cases live in the source tree ({BENCH} not found); "
                 "run it from a clone of the repository")
    import pytest

    from shufflekern import __version__
    sys.path.insert(0, BENCH)
    import report

    if a.threads:
        torch.set_num_threads(a.threads)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = a.out or os.path.join(BENCH, "results", stamp)
    os.makedirs(out, exist_ok=True)
    if a.passes < 1:
        sys.exit("shufflekern bench: --passes must be >= 1")
    targets = ([os.path.join(BENCH, f"bench_{op.strip()}.py") for op in a.ops.split(",")] if a.ops else [BENCH])
    json_paths, failed = [], []
    t0 = time.time()
    os.environ["SHUFFLEKERN_BENCH_BUDGET_SCALE"] = str(1.0 / a.passes)
    for i in range(a.passes):
        json_path = os.path.join(out, f"pytest-benchmark-pass{i + 1}.json")
        args = targets + ["-p", "no:terminal", f"--benchmark-json={json_path}", "-c", os.path.join(BENCH, "pytest.ini")]
        if a.full:
            args.append("--full")
        if a.keyword:
            args += ["-k", a.keyword]
        os.environ["SHUFFLEKERN_BENCH_REVERSE"] = str(i % 2)
        os.environ["SHUFFLEKERN_BENCH_SKIP_MEMORY"] = "1" if i else "0"
        progress = _Progress(f"pass {i + 1}/{a.passes}")
        rc = pytest.main(args, plugins=[progress])
        failed += progress.failed
        if not os.path.exists(json_path):
            sys.exit(f"shufflekern bench: pytest exited with {rc} and wrote no results")
        if rc not in (0, 5) and not progress.failed:
            failed.append(f"pytest exit code {rc}")
        json_paths.append(json_path)
    try:
        import triton
        tv = f" triton {triton.__version__}"
    except ImportError:
        tv = ""
    versions = f"shufflekern {__version__} torch {torch.__version__}{tv} threads {torch.get_num_threads()}"
    versions += f" passes {a.passes}"
    if device.type == "cpu":
        from shufflekern import _C
        versions += f" cpu_isa {_C.runtime_cpu_isa()}"  # the kernels' ISA (ATEN_CPU_CAPABILITY honoured)
        if a.tune_malloc:
            versions += " malloc tuned (sk.tune_malloc)"
    if device.type == "cuda":
        versions += f" device {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    text, csv_path, pngs = report.render(json_paths, out, versions)
    print(text)
    print(f"{len(failed)} failed; {time.time() - t0:.0f} s; results: {csv_path}; plots: {', '.join(pngs)}")
    if a.out is None:  # the default results directory: this run becomes bench/results/latest.*
        for name in ("results.csv", "table.md"):
            shutil.copyfile(os.path.join(out, name), os.path.join(BENCH, "results", "latest." + name.split(".")[1]))
    return 1 if failed else 0
