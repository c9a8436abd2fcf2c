"""`python -m shufflekern prune ...` and `python -m shufflekern quantize ...`.

    python -m shufflekern prune --student runs/kd/best.pt --ratio 0.5 --teacher runs/t/best.pt \\
        --epochs 2 --out runs/pruned
    python -m shufflekern quantize --model runs/pruned/model.pt --out runs/int8 [--calib 512] [--half bf16]

Every file written to --out is written to a temporary name and renamed; a bad argument or checkpoint
stops before anything is written.
"""
import argparse
import io
import json
import os
import time

import torch

__all__ = ["prune_main", "quantize_main"]

BATCH = 16  # the latency batch of the targets


def _load(flag, path):
    from ..distill.trainer import load_checkpoint_model
    try:
        return load_checkpoint_model(path)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {flag}: {e}") from None


def _example(data, n):
    return torch.stack([data.val[i][0] for i in range(min(n, len(data.val)))])


def _accuracy(fn, data, batch=BATCH):
    """Top-1 (%) of `fn` on the validation set in fixed batches of `batch` (the last one padded), so that a
    compiled fn sees one shape."""
    correct = total = 0
    with torch.inference_mode():
        for s in range(0, len(data.val), batch):
            items = [data.val[i] for i in range(s, min(s + batch, len(data.val)))]
            x, y = torch.stack([t[0] for t in items]), torch.stack([t[1] for t in items])
            n = len(y)
            if n < batch:
                x = torch.cat([x, x[-1:].expand(batch - n, *x.shape[1:])])
            correct += int((fn(x)[:n].float().argmax(1) == y).sum())
            total += n
    return 100.0 * correct / total


def _state_mb(model):
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return len(buf.getvalue()) / 2 ** 20


def _isa():
    try:
        from .. import _info
        return _info.info().get("cpu_isa") or torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover
        return torch.backends.cpu.get_cpu_capability()


# -- prune -------------------------------------------------------------------------------------------------
def prune_main(argv=None):
    from ..distill.cli import _check, _common, _device, _seed
    from ..distill.data import load_data
    from ..distill.models import is_student_name
    from ..distill.report import atomic_torch_save, write_metrics
    from ..distill.trainer import CHECKPOINT_FORMAT, NonFiniteLossError, Trainer
    from ..distill.config import TrainConfig
    from ..distill.dist import setup_distributed
    from . import measure, prune

    p = argparse.ArgumentParser(
        prog="python -m shufflekern prune",
        description="Shuffle-aware structured pruning of a ShuffleNet student (a train/distill checkpoint), "
                    "then fine-tuning: KD from --teacher, cross-entropy without one.")
    p.add_argument("--student", required=True, metavar="CKPT", help="OUT/best.pt of a train/distill run")
    p.add_argument("--ratio", required=True, type=float, metavar="R",
                   help="fraction of the prunable channels to remove, in (0, 1)")
    p.add_argument("--teacher", default=None, metavar="CKPT", help="fine-tune with KD from this teacher")
    p.add_argument("--method", choices=("structured", "unstructured"), default="structured",
                   help="structured: remove channels (a smaller dense model, default); unstructured: global "
                        "L1 magnitude masks (torch.nn.utils.prune): zeros only, no speed-up")
    k = p.add_argument_group("distillation (with --teacher)")
    k.add_argument("--temperature", type=float, default=4.0)
    k.add_argument("--alpha", type=float, default=0.9)
    p.add_argument("--bn-recalib", type=int, default=512, metavar="N",
                   help="re-estimate the BatchNorm statistics on N training images right after pruning, before "
                        "fine-tuning (0: keep the unpruned model's statistics)")
    p.add_argument("--latency-rounds", type=int, default=15, help="rounds of the interleaved timing")
    _common(p, default_epochs=2)
    args = p.parse_args(argv)
    if not 0.0 < args.ratio < 1.0:
        p.error(f"--ratio must be in (0, 1) (the fraction of prunable channels removed), got {args.ratio}")
    epochs = args.epochs
    if epochs < 0:
        p.error(f"--epochs must be >= 0 (0: no fine-tuning), got {epochs}")
    if args.bn_recalib < 0:
        p.error(f"--bn-recalib must be >= 0 (0: no recalibration), got {args.bn_recalib}")
    args.epochs = max(1, epochs)
    _check(p, args)
    args.epochs = epochs
    device = _device(args.device)

    student, smeta = _load("--student", args.student)
    if not is_student_name(smeta.get("arch", "")):
        raise SystemExit(f"error: --student {args.student} holds a {smeta.get('arch')!r}, not a ShuffleNet "
                         "student (shufflenet_v1 / shufflenet_v2): only their channels are pruned here")
    try:
        data = load_data(args.data, args.data_dir, seed=args.seed, image_size=args.image_size,
                         limit_train=args.limit_train, limit_val=args.limit_val)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    if smeta["num_classes"] != data.num_classes:
        raise SystemExit(f"error: --student predicts {smeta['num_classes']} classes but --data {args.data} "
                         f"has {data.num_classes}")
    teacher = None
    if args.teacher is not None:
        teacher, tmeta = _load("--teacher", args.teacher)
        if tmeta["num_classes"] != data.num_classes:
            raise SystemExit(f"error: --teacher predicts {tmeta['num_classes']} classes but --data {args.data} "
                             f"has {data.num_classes}")
    out = args.out or os.path.join("runs", f"prune-{smeta['arch']}-r{args.ratio:g}-{args.data}-s{args.seed}")

    student.eval()
    x1 = _example(data, 1)
    before = {"params": measure.count_params(student), "mflops": measure.count_mflops(student, x1.shape),
              "acc": _accuracy(student, data)}
    _seed(args.seed)
    kwargs = dict(smeta.get("model_kwargs", {}))
    if args.method == "structured":
        try:
            model, plan = prune.prune_structured(student, args.ratio)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
        kwargs["mid_channels"] = prune.mid_channels(model)
    else:
        import copy
        model = prune.prune_unstructured(copy.deepcopy(student), args.ratio)
    acc_pruned = _accuracy(model.eval(), data)
    acc_recalib = None
    if args.bn_recalib:
        order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(args.seed))
        order = order[:args.bn_recalib].tolist()
        prune.recalibrate_bn(model, [torch.stack([data.train[i][0] for i in order[s:s + 64]])
                                     for s in range(0, len(order), 64)])
        acc_recalib = _accuracy(model.eval(), data)
    print(f"prune ({args.method}, R={args.ratio:g}): {before['params']:,} params, top-1 {before['acc']:.2f}% "
          f"-> {measure.count_params(model):,} params, top-1 {acc_pruned:.2f}% before fine-tuning"
          + (f", {acc_recalib:.2f}% after recalibrating BatchNorm on {len(order)} images"
             if acc_recalib is not None else ""), flush=True)

    meta = {"arch": smeta["arch"], "num_classes": data.num_classes, "model_kwargs": kwargs,
            "data": args.data, "pruned_from": os.path.abspath(args.student), "prune_ratio": args.ratio,
            "prune_method": args.method}
    config = dict(vars(args), cmd="prune", device=device)
    history = []
    if epochs > 0:
        kd = {}
        if teacher is not None:
            kd = dict(temperature=args.temperature, alpha=args.alpha)
        cfg = TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                          momentum=args.momentum, weight_decay=args.weight_decay, scheduler=args.scheduler,
                          warmup_epochs=args.warmup_epochs, amp=args.amp, clip_grad=args.clip_grad,
                          device=device, out_dir=None, seed=args.seed, num_workers=args.num_workers,
                          progress=not args.no_progress, meta=meta, record=config, **kd)
        setup_distributed(device)  # torchrun: join the process group (the Trainer does not)
        try:
            trainer = Trainer(cfg, model, data, teacher=teacher)
            m = trainer.fit()
        except (ValueError, RuntimeError, NonFiniteLossError) as e:
            raise SystemExit(f"error: {e}") from None
        model, history = trainer.model.cpu(), m["history"]
    if args.method == "unstructured":
        prune.finalize_unstructured(model)
    model.eval()
    student.cpu().eval()
    final_acc = _accuracy(model, data)

    # Latency: the student as loaded vs the pruned one, same form (fused or not), interleaved.
    xb = _example(data, BATCH)
    lat = measure.interleaved_latency({
        "before_bs16": lambda: student(xb), "after_bs16": lambda: model(xb),
        "before_bs1": lambda: student(x1), "after_bs1": lambda: model(x1)}, rounds=args.latency_rounds)
    metrics = {
        "method": args.method, "ratio": args.ratio, "importance": "bn_gamma" if args.method == "structured" else "l1",
        "params_before": before["params"], "params_after": measure.count_params(model),
        "nonzero_params_after": measure.count_nonzero(model),
        "mflops_before": before["mflops"], "mflops_after": measure.count_mflops(model, x1.shape),
        "acc_before": before["acc"], "acc_after_prune": acc_pruned, "acc_after_bn_recalib": acc_recalib,
        "bn_recalib_images": min(args.bn_recalib, len(data.train)), "final_acc": final_acc,
        "latency_before_ms": lat["before_bs16"], "latency_after_ms": lat["after_bs16"],
        "latency_before_bs1_ms": lat["before_bs1"], "latency_after_bs1_ms": lat["after_bs1"],
        "speedup_bs16": lat["before_bs16"] / lat["after_bs16"], "latency_batch": BATCH,
        "latency_threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "fine_tune": {"epochs": epochs, "teacher": args.teacher, "loss": "kd" if teacher is not None else "ce"},
        "mid_channels": kwargs.get("mid_channels"), "history": history, "config": config}
    metrics["params_ratio"] = metrics["params_after"] / metrics["params_before"]
    ckpt = {"format": CHECKPOINT_FORMAT, "epoch": epochs, "model": model.state_dict(), "meta": meta,
            "config": config, "best_acc": final_acc}
    atomic_torch_save(ckpt, os.path.join(out, "model.pt"))
    write_metrics(out, metrics)
    print(f"done: {metrics['params_after']:,} params ({metrics['params_ratio']:.2f}x), "
          f"{metrics['mflops_before']:.1f} -> {metrics['mflops_after']:.1f} MFLOPs, top-1 {final_acc:.2f}%, "
          f"bs{BATCH} latency {lat['before_bs16']:.2f} -> {lat['after_bs16']:.2f} ms "
          f"({metrics['speedup_bs16']:.2f}x) -> {out}/model.pt, {out}/metrics.json", flush=True)
    return 0


# -- quantize ----------------------------------------------------------------------------------------------
def quantize_main(argv=None):
    from ..distill.data import DATASETS, load_data
    from ..distill.report import atomic_write_bytes
    from . import measure
    from . import quantize as Q
    from .prune import is_fused

    p = argparse.ArgumentParser(
        prog="python -m shufflekern quantize",
        description="INT8 post-training static quantization (PT2E, torchao's X86InductorQuantizer) of a "
                    "train/distill/prune checkpoint, lowered with torch.compile; accuracy, latency, size.")
    p.add_argument("--model", required=True, metavar="CKPT")
    p.add_argument("--out", default=None, metavar="DIR", help="model_int8.pt2 and metrics.json")
    p.add_argument("--calib", type=int, default=512, metavar="N", help="calibration images (training set)")
    p.add_argument("--half", choices=("bf16", "fp16"), default=None,
                   help="also time and score a half-precision copy (where the CPU supports it)")
    p.add_argument("--data", default="digits", choices=DATASETS)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--limit-val", type=int, default=None, metavar="N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latency-rounds", type=int, default=15)
    p.add_argument("--no-compile-fp32", action="store_true", help="skip timing torch.compile of the fp32 model")
    p.add_argument("--no-shuffle-aware", action="store_true",
                   help="torchao's X86InductorQuantizer as it is (the ShuffleNet units' cat / shuffle / chunk "
                        "stay fp32 between dequantize and quantize; slower) instead of the shuffle-aware one")
    p.add_argument("--no-progress", action="store_true", help="accepted for symmetry (no bar here)")
    args = p.parse_args(argv)
    if args.calib < 1:
        p.error(f"--calib must be >= 1, got {args.calib}")
    if args.half:
        hd = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.half]
        if not Q.half_supported(hd):
            raise SystemExit(f"error: --half {args.half}: this CPU ({torch.backends.cpu.get_cpu_capability()}) "
                             f"has no native {args.half} support in oneDNN")
    try:
        Q.require_torchao()
    except RuntimeError as e:
        raise SystemExit(f"error: {e}") from None
    model, meta = _load("--model", args.model)
    try:
        data = load_data(args.data, args.data_dir, seed=args.seed, image_size=args.image_size,
                         limit_val=args.limit_val)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    if meta["num_classes"] != data.num_classes:
        raise SystemExit(f"error: --model predicts {meta['num_classes']} classes but --data {args.data} "
                         f"has {data.num_classes}")
    out = args.out or os.path.join("runs", f"quantize-{meta['arch']}-{args.data}")
    model.eval()
    from ..fuse import unfuse
    eager = unfuse(model).eval()
    xb, x1 = _example(data, BATCH), _example(data, 1)

    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(data.train), generator=g)[:args.calib].tolist()
    calib = [torch.stack([data.train[i][0] for i in order[s:s + 32]]) for s in range(0, len(order), 32)]
    qmodel = Q.quantize_int8(model, calib, xb, shuffle_aware=not args.no_shuffle_aware)
    ep = Q.export_program(qmodel, xb)
    int8_tensor_bytes = sum(t.numel() * t.element_size() for t in list(ep.state_dict.values())
                            + list(ep.constants.values()) if isinstance(t, torch.Tensor))
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    int8_bytes = buf.getvalue()
    q16 = Q.compile_int8(qmodel, xb)
    q1 = Q.compile_int8(qmodel, x1)
    print(f"quantize: calibrated on {len(order)} images, converted and compiled in "
          f"{time.perf_counter() - t0:.0f}s", flush=True)

    # fp32_loaded: the model as the checkpoint builds it (fused ShuffleNet units for a student), NCHW.
    fns16 = {"fp32_loaded": lambda: model(xb), "int8": lambda: q16(xb)}
    if is_fused(model):
        fns16["fp32_unfused"] = lambda: eager(xb)
    if not args.no_compile_fp32:
        with torch.no_grad():
            cmodel = torch.compile(model)
            cmodel(xb)
        fns16["fp32_compiled"] = lambda: cmodel(xb)
    half = None
    if args.half:
        half = Q.to_half(model, hd)
        xh = xb.to(hd)
        with torch.no_grad():
            chalf = torch.compile(half)
            chalf(xh)
        fns16[f"{args.half}_compiled"] = lambda: chalf(xh)
    lat16 = measure.interleaved_latency(fns16, rounds=args.latency_rounds)
    lat1 = measure.interleaved_latency({"fp32_loaded": lambda: model(x1), "int8": lambda: q1(x1)},
                                       rounds=args.latency_rounds)
    metrics = {
        "acc_fp32": _accuracy(model, data), "acc_int8": _accuracy(q16, data),
        "latency_fp32_ms": lat16["fp32_loaded"], "latency_int8_ms": lat16["int8"],
        "latency_fp32_bs1_ms": lat1["fp32_loaded"], "latency_int8_bs1_ms": lat1["int8"],
        "latency_bs16_ms": lat16, "latency_batch": BATCH,
        "speedup_int8_vs_fp32": lat16["fp32_loaded"] / lat16["int8"],
        "size_fp32_mb": _state_mb(eager), "size_int8_mb": len(int8_bytes) / 2 ** 20,
        "tensors_fp32_mb": sum(t.numel() * t.element_size() for t in eager.state_dict().values()) / 2 ** 20,
        "tensors_int8_mb": int8_tensor_bytes / 2 ** 20,
        "params": measure.count_params(eager), "mflops": measure.count_mflops(eager, x1.shape),
        "calib_images": len(order), "shuffle_aware": not args.no_shuffle_aware, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "torchao": __import__("torchao").__version__, "model": os.path.abspath(args.model), "meta": meta,
        "config": dict(vars(args), cmd="quantize"), "history": []}
    if args.half:
        metrics[f"acc_{args.half}"] = _accuracy(lambda x: chalf(x.to(hd)), data)
        metrics[f"latency_{args.half}_ms"] = lat16[f"{args.half}_compiled"]
    fastest = min(lat16, key=lat16.get)
    metrics["fastest_bs16"] = fastest
    atomic_write_bytes(os.path.join(out, "model_int8.pt2"), int8_bytes)
    atomic_write_bytes(os.path.join(out, "metrics.json"), (json.dumps(metrics, indent=2) + "\n").encode())
    print(f"done: top-1 fp32 {metrics['acc_fp32']:.2f}% int8 {metrics['acc_int8']:.2f}%; bs{BATCH} latency (ms) "
          + ", ".join(f"{k} {v:.2f}" for k, v in lat16.items())
          + f"; fastest {fastest}; int8 program {metrics['size_int8_mb']:.2f} MB -> {out}/model_int8.pt2, "
          f"{out}/metrics.json", flush=True)
    return 0
