"""`make gpu-check`: the first command to run on a machine with a CUDA GPU (aimed at < 5 minutes on one GPU).

  1. build    the extension with its CUDA kernels (SHUFFLEKERN_CUDA=1: a missing nvcc is an error), for the
              archs of TORCH_CUDA_ARCH_LIST plus this GPU's if they do not cover it
  2. tests    the tests marked @pytest.mark.cuda, on the device, each shufflekern op under
              torch.cuda.set_sync_debug_mode("error") (tests/conftest.py: --cuda-sync-debug), so a host
              synchronisation inside an op fails its test
  3. bench    python -m shufflekern bench --device cuda --passes 1 over the op benchmarks (shufflekern vs
              eager and torch.compile, on the device), the table written to bench/results/gpu_check.md

Without a CUDA device it stops with a message and exit code 2.  --dry-run needs no GPU: it prints the steps'
commands, and with --cpu-bench also runs a tiny selection of the bench on the CPU through the same code path
(tests/test_gpu_check.py runs that in CI, so the script cannot rot).
"""
import argparse
import os
import shlex
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_MD = os.path.join(REPO, "bench", "results", "gpu_check.md")
BENCH_OPS = "channel_shuffle,shuffle_conv1x1,kd_loss,batch_norm_act,dkd_loss,at_loss"
# The CPU smoke run of --dry-run --cpu-bench: one small case, no torch.compile (its C++ build takes minutes).
CPU_SMOKE_K = "16x116x28x28-g2 and nchw and fwd- and not compile"


def arch_list(capability, base):
    """TORCH_CUDA_ARCH_LIST covering a GPU of `capability` (major, minor): `base` when one of its archs runs
    on it (same major, minor not above the GPU's: cubins are compatible within a major), else base + its own."""
    archs = [a.strip() for a in base.replace(",", ";").split(";") if a.strip()]
    for a in archs:
        num = a.split("+")[0]
        try:
            major, minor = (int(x) for x in num.split("."))
        except ValueError:
            continue
        if major == capability[0] and minor <= capability[1]:
            return ";".join(archs)
    return ";".join(archs + [f"{capability[0]}.{capability[1]}"])


def steps(python, arch_list_value, bench_args=(), md=OUT_MD, bench_dir=None):
    """[(name, argv, extra env)] of the check."""
    bench_dir = bench_dir or os.path.join(REPO, "bench", "results", "gpu_check")
    return [
        ("build", ["make", "-C", REPO, "build", f"PY={python}"],
         {"SHUFFLEKERN_CUDA": "1", "TORCH_CUDA_ARCH_LIST": arch_list_value}),
        ("tests", [python, "-m", "pytest", os.path.join(REPO, "tests"), "-m", "cuda", "-q",
                   "--cuda-sync-debug=error", "-p", "no:cacheprovider"], {"SHUFFLEKERN_CUDA_SYNC_DEBUG": "error"}),
        ("bench", [python, "-m", "shufflekern", "bench", "--device", "cuda", "--passes", "1", "--ops", BENCH_OPS,
                   "--out", bench_dir, *bench_args], {}),
    ]


def write_table(bench_dir, md, header):
    with open(os.path.join(bench_dir, "table.md")) as f:
        table = f.read()
    os.makedirs(os.path.dirname(md), exist_ok=True)
    with open(md, "w") as f:
        f.write(f"# `make gpu-check`: bench on the device\n\n{header}\n\n{table}")
    return md


def _run(name, argv, env, log):
    print(f"\n=== {name}: {shlex.join(argv)}" + "".join(f"  [{k}={v}]" for k, v in env.items()), flush=True)
    t0 = time.time()
    rc = subprocess.run(argv, cwd=REPO, env=dict(os.environ, **env)).returncode
    dt = time.time() - t0
    log.append((name, rc, dt))
    print(f"=== {name}: exit {rc}, {dt:.0f} s", flush=True)
    return rc


def main(argv=None):
    ap = argparse.ArgumentParser(prog="scripts/gpu_check.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="print the commands; needs no GPU")
    ap.add_argument("--cpu-bench", action="store_true",
                    help="with --dry-run: run a tiny bench selection on the CPU and write its table")
    ap.add_argument("--skip-build", action="store_true", help="use the extension as built")
    ap.add_argument("--md", default=OUT_MD, help=f"the table (default {os.path.relpath(OUT_MD, REPO)})")
    ap.add_argument("--python", default=sys.executable, help="the interpreter with torch (default: this one)")
    ap.add_argument("bench_args", nargs="*", help="extra arguments of `python -m shufflekern bench` (after --)")
    a = ap.parse_args(argv)

    import torch
    has_gpu = torch.cuda.is_available()
    if not has_gpu and not a.dry_run:
        print("gpu-check: no CUDA device (torch.cuda.is_available() is False; torch "
              f"{torch.__version__}, CUDA {torch.version.cuda}). It needs a GPU; `--dry-run` shows what it would "
              "run.", file=sys.stderr)
        return 2
    cap = torch.cuda.get_device_capability() if has_gpu else (9, 0)
    archs = arch_list(cap, os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0"))
    plan = steps(a.python, archs, a.bench_args, a.md)
    if a.skip_build:
        plan = [s for s in plan if s[0] != "build"]

    if a.dry_run:
        for name, cmd, env in plan:
            print(f"{name}: " + " ".join(f"{k}={v}" for k, v in env.items()) + (" " if env else "") + shlex.join(cmd))
        print(f"table: {a.md}")
        if not a.cpu_bench:
            return 0
        # The bench step's code path on the CPU: same CLI, same report, a tiny selection.
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [a.python, "-m", "shufflekern", "bench", "--device", "cpu", "--passes", "1", "--ops",
                   "channel_shuffle", "-k", CPU_SMOKE_K, "--out", tmp]
            log = []
            if _run("bench (cpu smoke)", cmd, {}, log):
                return 1
            write_table(tmp, a.md, "Dry run: the CPU smoke selection (not a GPU measurement).")
        print(f"table: {a.md}")
        return 0

    name = torch.cuda.get_device_name()
    print(f"gpu-check on {name} (sm_{cap[0]}{cap[1]}), torch {torch.__version__}, CUDA {torch.version.cuda}; "
          f"TORCH_CUDA_ARCH_LIST={archs}")
    t0, log = time.time(), []
    failed = []
    for step, cmd, env in plan:
        if _run(step, cmd, env, log):
            failed.append(step)
            if step == "build":
                break  # nothing else can run
    bench_dir = plan[-1][1][plan[-1][1].index("--out") + 1]
    if "bench" not in failed and os.path.exists(os.path.join(bench_dir, "table.md")):
        header = (f"{name} (sm_{cap[0]}{cap[1]}), torch {torch.__version__}, CUDA {torch.version.cuda}, "
                  f"{time.strftime('%Y-%m-%d %H:%M')}. Measured on the device by `make gpu-check` "
                  "(one pass; python -m shufflekern bench --device cuda).")
        print(f"table: {write_table(bench_dir, a.md, header)}")
    total = time.time() - t0
    print("\ngpu-check summary: " + ", ".join(f"{n} {'ok' if rc == 0 else f'FAILED ({rc})'} {dt:.0f} s"
                                               for n, rc, dt in log) + f"; total {total:.0f} s")
    if total > 300:
        print("gpu-check: over the 5-minute aim; `--skip-build` or fewer bench cases (-- -k ...) shorten it")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
