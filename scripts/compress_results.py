"""The README compression table on `digits`: teacher; KD student (ShuffleNetV2 1.0x); structured pruning at
R = 0.25 / 0.5 + 2 epochs of KD fine-tuning; unstructured masks at R = 0.5 (for contrast); INT8 of the
student and of the R = 0.5 model.  Top-1 mean ± std over seeds; params, MFLOPs, size and CPU latency
(bs 1 and 16) of seed 0's models, all timed interleaved in one process at the end.

    PYTHONPATH=. python scripts/compress_results.py            # ~20-30 min on 2 shared CPU cores
    PYTHONPATH=. python scripts/compress_results.py --quick    # smoke run (1 seed, 1 epoch each)

Every model comes from the package's own commands (train, distill, prune, quantize), run in-process
with the flags printed in the output.  Writes --md (default docs/results_compress.md) and .json beside it.
"""
import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import shufflekern as sk
from shufflekern.__main__ import main as cli
from shufflekern.compress import count_mflops, count_nonzero, count_params, interleaved_latency
from shufflekern.compress.quantize import compile_int8, load_program, quantize_int8
from shufflekern.distill import load_checkpoint_model, load_data


REUSE = False


def run(argv, log):
    log.append("python -m shufflekern " + " ".join(argv))
    out = argv[argv.index("--out") + 1]
    if REUSE and os.path.isfile(os.path.join(out, "metrics.json")):
        print(">> (reused)", log[-1], flush=True)
        return
    print(">>", log[-1], flush=True)
    code = cli(argv)
    if code:
        raise SystemExit(f"command failed ({code}): {log[-1]}")


def metrics(d):
    with open(os.path.join(d, "metrics.json")) as f:
        return json.load(f)


def ms(xs):
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def state_mb(model):
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return len(buf.getvalue()) / 2 ** 20


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--teacher", default="resnet8")
    p.add_argument("--teacher-epochs", type=int, default=6)
    p.add_argument("--student-epochs", type=int, default=4)
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                   help="torch threads: the first for the commands and the table's latency columns; the final "
                        "interleaved timing is repeated (models recompiled) at each")
    p.add_argument("--rounds", type=int, default=20, help="rounds of the final interleaved timing")
    p.add_argument("--workdir", default=None, help="keep the runs here (default: a temp dir)")
    p.add_argument("--reuse", action="store_true", help="skip a command whose --out already has metrics.json")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--md", default="docs/results_compress.md")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.teacher_epochs, args.student_epochs, args.finetune_epochs = [0], 1, 1, 1
        args.rounds = 3
    global REUSE
    REUSE = args.reuse
    torch.set_num_threads(args.threads[0])
    t_start = time.perf_counter()
    work = args.workdir or tempfile.mkdtemp(prefix="sk-compress-")
    log, runs = [], {}
    common = ["--no-progress", "--batch-size", "64"]
    for s in args.seeds:
        d = lambda name: os.path.join(work, f"s{s}", name)  # noqa: E731
        seed = ["--seed", str(s)]
        run(["train", "--model", args.teacher, "--epochs", str(args.teacher_epochs), "--lr", "0.1",
             "--out", d("teacher"), *seed, *common], log)
        teacher = d("teacher") + "/best.pt"
        run(["distill", "--teacher", teacher, "--student", "shufflenet_v2", "--width-mult", str(args.width_mult),
             "--epochs", str(args.student_epochs), "--lr", "0.05", "--out", d("student"), *seed, *common], log)
        student = d("student") + "/best.pt"
        for r in ("0.25", "0.5"):
            run(["prune", "--student", student, "--teacher", teacher, "--ratio", r, "--epochs",
                 str(args.finetune_epochs), "--lr", "0.02", "--out", d(f"prune{r}"), *seed, *common], log)
        first = s == args.seeds[0]
        if first:  # for contrast only: masks cost the same time, one seed shows it
            run(["prune", "--student", student, "--teacher", teacher, "--ratio", "0.5", "--method", "unstructured",
                 "--epochs", str(args.finetune_epochs), "--lr", "0.02", "--out", d("mask0.5"), *seed, *common], log)
        extra = [] if first else ["--no-compile-fp32", "--latency-rounds", "5"]
        if s == args.seeds[0] and torch.ops.mkldnn._is_mkldnn_bf16_supported():
            extra += ["--half", "bf16"]
        run(["quantize", "--model", student, "--out", d("int8"), "--seed", str(s), *extra], log)
        run(["quantize", "--model", d("prune0.5") + "/model.pt", "--out", d("prune0.5-int8"), "--seed", str(s),
             "--no-compile-fp32", "--latency-rounds", "5"], log)
        runs[s] = {k: metrics(d(k)) for k in ("teacher", "student", "prune0.25", "prune0.5", "mask0.5", "int8",
                                             "prune0.5-int8") if os.path.isdir(d(k))}

    # -- one interleaved timing of seed 0's models, at each thread count -----------------------------------
    s0 = os.path.join(work, f"s{args.seeds[0]}")
    data = load_data("digits", seed=0)
    xb = torch.stack([data.val[i][0] for i in range(16)])
    x1 = xb[:1]
    models = {}
    teacher, _ = load_checkpoint_model(f"{s0}/teacher/best.pt")
    models["teacher"] = teacher.eval()
    student, _ = load_checkpoint_model(f"{s0}/student/best.pt")
    models["student"] = student.eval()
    for k in ("prune0.25", "prune0.5", "mask0.5"):
        models[k] = load_checkpoint_model(f"{s0}/{k}/model.pt")[0].eval()
    unfused = sk.unfuse(student).eval()
    # for contrast: torchao's X86InductorQuantizer as it is (cat / shuffle / chunk in fp32 in stride-1 units),
    # calibrated as the quantize command calibrates (its --calib 512 images, --seed 0)
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(args.seeds[0]))[:512].tolist()
    calib = [torch.stack([data.train[i][0] for i in order[s:s + 32]]) for s in range(0, len(order), 32)]
    stock = quantize_int8(student, calib, xb, shuffle_aware=False)
    acc_stock = _acc(stock, data)
    progs = {k: load_program(f"{s0}/{k}/model_int8.pt2").module() for k in ("int8", "prune0.5-int8")}
    progs["int8 stock"] = stock
    timings = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        torch._dynamo.reset()  # Inductor's C++ kernels are compiled for the thread count of the moment
        with torch.no_grad():
            compiled = torch.compile(student)
            compiled(xb), compiled(x1)
        fns16 = {k: (lambda m=m: m(xb)) for k, m in models.items()}
        fns1 = {k: (lambda m=m: m(x1)) for k, m in models.items()}
        fns16["student (torch.compile)"], fns1["student (torch.compile)"] = lambda: compiled(xb), lambda: compiled(x1)
        fns16["student unfused (eager NCHW)"] = lambda: unfused(xb)
        fns1["student unfused (eager NCHW)"] = lambda: unfused(x1)
        for k, prog in progs.items():
            c16, c1 = compile_int8(prog, xb), compile_int8(prog, x1)
            fns16[k], fns1[k] = (lambda c=c16: c(xb)), (lambda c=c1: c(x1))
        timings[threads] = (interleaved_latency(fns16, rounds=args.rounds), interleaved_latency(fns1, rounds=args.rounds))
        print(f"timing ({threads} thread(s)): bs16", {k: round(v, 2) for k, v in timings[threads][0].items()}, flush=True)
    torch.set_num_threads(args.threads[0])
    lat16, lat1 = timings[args.threads[0]]

    def accs(key, field="final_acc"):
        return [runs[s][key][field] for s in args.seeds if key in runs[s]]

    x_shape = (1, 3, 32, 32)
    rows = []

    def row(label, key, acc, model=None, size=None, params=None, mflops=None, lat_key=None):
        m, sd = ms(acc)
        rows.append({"model": label, "params": params if params is not None else count_params(model),
                     "mflops": mflops if mflops is not None else count_mflops(model, x_shape),
                     "size_mb": size if size is not None else state_mb(model),
                     "lat1_ms": lat1.get(lat_key or key), "lat16_ms": lat16[lat_key or key],
                     "top1": m, "top1_std": sd, "per_seed": acc})

    row(f"teacher: {args.teacher}", "teacher", accs("teacher"), teacher)
    row(f"KD student: shufflenet_v2 {args.width_mult}x (fused, as loaded)", "student", accs("student"), student)
    row("  same, torch.compile", "student (torch.compile)", accs("student"), student)
    row("  same, unfused eager", "student unfused (eager NCHW)", accs("student"), student)
    for r in ("0.25", "0.5"):
        row(f"structured prune R={r} + {args.finetune_epochs} ep KD", f"prune{r}", accs(f"prune{r}"),
            models[f"prune{r}"])
    mk = models["mask0.5"]
    row(f"unstructured masks 50% + {args.finetune_epochs} ep KD ({count_nonzero(mk):,} nonzero; seed 0 only)", "mask0.5",
        accs("mask0.5"), mk)
    for k, label, base in (("int8", "INT8 (PT2E, shuffle-aware X86InductorQuantizer) of the KD student", student),
                           ("prune0.5-int8", "INT8 of structured R=0.5", models["prune0.5"])):
        q = runs[args.seeds[0]][k]
        row(label, k, accs(k, "acc_int8"), params=count_params(base), mflops=count_mflops(base, x_shape),
            size=q["size_int8_mb"])
    row("INT8 of the KD student, stock X86InductorQuantizer (seed 0 only)", "int8 stock", [acc_stock], params=count_params(student),
        mflops=count_mflops(student, x_shape), size=q0_size(runs, args))
    q0 = runs[args.seeds[0]]["int8"]
    p0 = runs[args.seeds[0]]["prune0.5"]
    result = {"rows": rows, "runs": runs, "commands": log, "lat16": lat16, "lat1": lat1,
              "timings": {str(t): {"bs16": a, "bs1": b} for t, (a, b) in timings.items()},
              "quantize_seed0": q0, "threads": args.threads, "seconds": time.perf_counter() - t_start,
              "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "cpu": _cpu_name()}
    os.makedirs(os.path.dirname(os.path.abspath(args.md)), exist_ok=True)
    with open(os.path.splitext(args.md)[0] + ".json", "w") as f:
        json.dump(result, f, indent=2)
    md = _markdown(result, args, p0, q0)
    with open(args.md, "w") as f:
        f.write(md)
    print(md)


def q0_size(runs, args):
    """The stock INT8 program is not saved; its tensors are the same int8 weights as the shuffle-aware one."""
    return runs[args.seeds[0]]["int8"]["size_int8_mb"]


def _acc(fn, data):
    x = torch.stack([data.val[i][0] for i in range(len(data.val))])
    with torch.no_grad():
        return 100.0 * (fn(x).argmax(1) == data.val.labels).float().mean().item()


def _cpu_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "")
        flags = next((ln.split(":", 1)[1].split() for ln in out.splitlines() if ln.startswith("Flags")), [])
        isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8") if f in flags]
        return f"{name} ({', '.join(isa)})"
    except OSError:  # pragma: no cover
        return platform.processor()


def _markdown(r, args, p0, q0):
    L = ["# Compression results on `digits`", "",
         f"Teacher {args.teacher} ({args.teacher_epochs} epochs), KD student ShuffleNetV2 {args.width_mult}x "
         f"({args.student_epochs} epochs, T=4, alpha=0.9), pruning + {args.finetune_epochs} epochs of KD "
         "fine-tuning from the same teacher, INT8 post-training static quantization (512 calibration images). "
         f"Top-1 on the 360 validation images, mean ± std over seeds {args.seeds}. Params, MFLOPs (multiply-adds "
         "of one 32x32 image), size and latency are seed 0's models; latency: median ms of one forward, CPU, "
         f"{r['threads'][0]} thread, all rows timed interleaved in one process ({args.rounds} rounds) on "
         f"{r['cpu']}; torch {r['torch']}.", "",
         "| model | params | MFLOPs | size (MB) | latency bs1 (ms) | latency bs16 (ms) | top-1 (%) | per seed |",
         "|---|---:|---:|---:|---:|---:|---:|---|"]
    for x in r["rows"]:
        L.append(f"| {x['model']} | {x['params']:,} | {x['mflops']:.1f} | {x['size_mb']:.2f} | "
                 f"{x['lat1_ms']:.2f} | {x['lat16_ms']:.2f} | {x['top1']:.2f} ± {x['top1_std']:.2f} | "
                 + ", ".join(f"{a:.2f}" for a in x["per_seed"]) + " |")
    lat = r["lat16"]
    base = lat["student"]
    L += ["", "Ratios from the interleaved timing (bs 16): "
          f"structured R=0.5 {base / lat['prune0.5']:.2f}x faster than the student as loaded, R=0.25 "
          f"{base / lat['prune0.25']:.2f}x, unstructured masks {base / lat['mask0.5']:.2f}x; INT8 "
          f"{base / lat['int8']:.2f}x vs the fused fp32 student, {lat['student unfused (eager NCHW)'] / lat['int8']:.2f}x "
          f"vs the unfused eager one, {lat['student (torch.compile)'] / lat['int8']:.2f}x vs torch.compile of the "
          f"fused student; INT8 of R=0.5: {base / lat['prune0.5-int8']:.2f}x; stock X86InductorQuantizer INT8 "
          f"{base / lat['int8 stock']:.2f}x. Fastest at bs 16: {min(lat, key=lat.get)}.", "",
          "INT8 (shuffle-aware) speed-up over each fp32 form of the student, per thread count and batch "
          "(each thread count timed interleaved in one pass, models recompiled for it):", "",
          "| threads | batch | fp32 fused eager (as loaded) ms | INT8 ms | vs fused eager | vs unfused eager | "
          "vs torch.compile(fused) | stock INT8 vs fused eager |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t, tb in r["timings"].items():
        for b in ("bs16", "bs1"):
            x = tb[b]
            L.append(f"| {t} | {b[2:]} | {x['student']:.2f} | {x['int8']:.2f} | {x['student'] / x['int8']:.2f}x | "
                     f"{x['student unfused (eager NCHW)'] / x['int8']:.2f}x | "
                     f"{x['student (torch.compile)'] / x['int8']:.2f}x | {x['student'] / x['int8 stock']:.2f}x |")
    L += ["",
          f"Seed 0, the quantize command's own interleaved timing ({q0['threads']} thread(s), bs 16, ms): "
          + ", ".join(f"{k} {v:.2f}" for k, v in q0["latency_bs16_ms"].items())
          + (f"; bf16 top-1 {q0['acc_bf16']:.2f}%" if "acc_bf16" in q0 else "") + ".", "",
          f"Seed 0, the prune R=0.5 command's timing: {p0['latency_before_ms']:.2f} -> "
          f"{p0['latency_after_ms']:.2f} ms (bs 16, {p0['speedup_bs16']:.2f}x), params ratio "
          f"{p0['params_ratio']:.3f}.", "",
          f"Produced by `PYTHONPATH=. python scripts/compress_results.py` in {r['seconds']:.0f} s. Commands run:", "",
          "```"] + r["commands"][:7] + ["```", ""]
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
