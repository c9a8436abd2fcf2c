"""`python -m shufflekern train ...` and `python -m shufflekern distill ...`.

    python -m shufflekern train --model resnet8x4 --epochs 15 --out runs/teacher
    python -m shufflekern train --model shufflenet_v2 --width-mult 0.5 --out runs/vanilla
    python -m shufflekern distill --teacher runs/teacher/best.pt --student shufflenet_v2 --width-mult 0.5 \\
        --out runs/kd
    python -m shufflekern train --model vgg13 --out runs/vgg13
    python -m shufflekern distill --teacher runs/vgg13/best.pt --student mobilenetv2 --method dkd --out runs/dkd
    python -m shufflekern distill --teacher runs/vgg13/best.pt --student mobilenetv2 --method kd,at --out runs/kdat

Multi-process: `torchrun --nproc_per_node=2 -m shufflekern distill ...` (--batch-size stays global).
"""
import argparse
import os
import random
import sys

import numpy as np
import torch

from .data import DATASETS, load_data
from .models import build_model, is_student_name, model_names

__all__ = ["train_main", "distill_main"]


def _common(p, default_epochs):
    g = p.add_argument_group("data")
    g.add_argument("--data", default="digits", choices=DATASETS,
                   help="digits (embedded, default), cifar10/cifar100 (from --data-dir), imagefolder")
    g.add_argument("--data-dir", default=None,
                   help="cifar: the folder holding cifar-10-batches-py/ or cifar-100-python/; "
                        "imagefolder: the folder holding train/<class>/ and val/<class>/")
    g.add_argument("--image-size", type=int, default=32, help="imagefolder: resize + centre crop to this")
    g.add_argument("--limit-train", type=int, default=None, metavar="N", help="use the first N train images")
    g.add_argument("--limit-val", type=int, default=None, metavar="N", help="use the first N val images")
    g.add_argument("--num-workers", type=int, default=0)
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=default_epochs)
    o.add_argument("--batch-size", type=int, default=64, help="global batch (split over torchrun ranks)")
    o.add_argument("--lr", type=float, default=0.05)
    o.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    o.add_argument("--momentum", type=float, default=0.9)
    o.add_argument("--weight-decay", type=float, default=5e-4)
    o.add_argument("--scheduler", choices=("cosine", "constant"), default="cosine")
    o.add_argument("--warmup-epochs", type=int, default=0)
    o.add_argument("--clip-grad", type=float, default=None, metavar="NORM", help="clip the grad norm")
    o.add_argument("--amp", nargs="?", const=True, default=False, choices=("bf16", "fp16"),
                   help="autocast: bf16 on CPU, fp16 on CUDA (or name the dtype)")
    o.add_argument("--sync-bn", action="store_true",
                   help="BatchNorm statistics over all torchrun ranks (= the single-process result)")
    r = p.add_argument_group("run")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda if available)")
    r.add_argument("--out", default=None, metavar="DIR", help="checkpoints and metrics (default runs/<name>)")
    r.add_argument("--resume", action="store_true", help="continue from OUT/last.pt if it exists")
    r.add_argument("--no-progress", action="store_true", help="no tqdm bar (the per-epoch line stays)")
    r.add_argument("--tune-malloc", action=argparse.BooleanOptionalAction, default=True,
                   help="sk.tune_malloc(): glibc keeps freed CPU memory instead of faulting it in again every step "
                        "(default on; the process keeps its peak memory)")


def _model_args(p, flag, default):
    p.add_argument(flag, default=default, metavar="NAME", help=f"one of: {', '.join(model_names())}")
    p.add_argument("--width-mult", type=float, default=0.5, help="ShuffleNet width multiplier")
    p.add_argument("--groups", type=int, default=3, help="ShuffleNetV1 groups")
    p.add_argument("--fused-layers", action=argparse.BooleanOptionalAction, default=True,
                   help="ShuffleNet student on the fused shuffle/pointwise kernels")


def _check(p, args):
    for name in ("epochs", "batch_size", "image_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.batch_size < 2:
        p.error(f"--batch-size must be >= 2 (BatchNorm needs 2 samples per batch), got {args.batch_size}")
    if not args.lr > 0:
        p.error(f"--lr must be > 0, got {args.lr}")
    if args.clip_grad is not None and not args.clip_grad > 0:
        p.error(f"--clip-grad must be > 0, got {args.clip_grad}")
    for name in ("limit_train", "limit_val"):
        v = getattr(args, name)
        if v is not None and v < 2:
            p.error(f"--{name.replace('_', '-')} must be >= 2, got {v}")
    if args.data == "digits" and args.data_dir is not None:
        p.error("--data-dir is not used with --data digits (embedded); pick --data cifar10/cifar100/imagefolder")
    if getattr(args, "width_mult", 1.0) <= 0:
        p.error(f"--width-mult must be > 0, got {args.width_mult}")


def _device(name):
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise SystemExit(f"error: --device {name!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {name}: no CUDA device is available here")
    if dev.type == "cuda" and dev.index is None and "LOCAL_RANK" in os.environ:
        dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return str(dev)


def _seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_config(args, *, device, out_dir, meta, record, kd):
    """The TrainConfig of parsed `train` / `distill` arguments (kd: the distillation flags apply)."""
    from .config import TrainConfig
    extra = {}
    if kd:
        extra = dict(temperature=args.temperature, alpha=args.alpha, hint_weight=args.hint_weight,
                     hint_stage=args.hint_stage, fused=args.fused, methods=tuple(args.method),
                     dkd_alpha=args.dkd_alpha, dkd_beta=args.dkd_beta, dkd_warmup=args.dkd_warmup,
                     at_weight=args.at_weight, rkd_distance_weight=args.rkd_distance_weight,
                     rkd_angle_weight=args.rkd_angle_weight)
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                       momentum=args.momentum, weight_decay=args.weight_decay, scheduler=args.scheduler,
                       warmup_epochs=args.warmup_epochs, amp=args.amp, clip_grad=args.clip_grad, device=device,
                       out_dir=out_dir, seed=args.seed, num_workers=args.num_workers, sync_bn=args.sync_bn,
                       progress=not args.no_progress, resume=args.resume, meta=meta, record=record, **extra)


def _run(p, args, *, model_name, teacher_path):
    from . import dist as D
    from .trainer import NonFiniteLossError, Trainer, load_checkpoint_model

    _check(p, args)
    if args.tune_malloc:
        from .._malloc import tune_malloc
        tune_malloc()  # False where the allocator is not glibc's: nothing to tune, the run goes on
    device = _device(args.device)
    created = D.setup_distributed(device)  # torchrun: join the process group (the Trainer does not)
    try:
        try:
            data = load_data(args.data, args.data_dir, seed=args.seed, image_size=args.image_size,
                             limit_train=args.limit_train, limit_val=args.limit_val)
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"error: {e}") from None
        teacher = None
        if teacher_path is not None:
            try:
                teacher, tmeta = load_checkpoint_model(teacher_path)
            except (FileNotFoundError, ValueError) as e:
                raise SystemExit(f"error: --teacher: {e}") from None
            if tmeta["num_classes"] != data.num_classes:
                raise SystemExit(f"error: --teacher {teacher_path} predicts {tmeta['num_classes']} classes "
                                 f"but --data {args.data} has {data.num_classes}")
        kwargs = {}
        if is_student_name(model_name):
            kwargs = {"width_mult": args.width_mult, "fused": args.fused_layers, "small_input": True}
            if model_name == "shufflenet_v1":
                kwargs["groups"] = args.groups
        _seed(args.seed)
        try:
            model = build_model(model_name, data.num_classes, **kwargs)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
        cmd = "distill" if teacher is not None else "train"
        out = args.out or os.path.join("runs", f"{cmd}-{model_name}-{args.data}-s{args.seed}")
        config = {k: v for k, v in vars(args).items()}
        config["cmd"], config["device"] = cmd, device
        meta = {"arch": model_name, "num_classes": data.num_classes, "model_kwargs": kwargs, "data": args.data}
        cfg = train_config(args, device=device, out_dir=out, meta=meta, record=config, kd=teacher is not None)
        try:
            trainer = Trainer(cfg, model, data, teacher=teacher)
        except (ValueError, RuntimeError) as e:
            raise SystemExit(f"error: {e}") from None
        if trainer.is_main:
            print(f"{cmd}: {model_name} on {args.data} ({len(data.train)} train / {len(data.val)} val), "
                  f"{args.epochs} epochs, batch {args.batch_size}, device {device}, world {trainer.world}"
                  f" -> {out}", flush=True)
        try:
            m = trainer.fit()
        except NonFiniteLossError as e:
            raise SystemExit(f"error: {e}") from None
        except ValueError as e:  # e.g. a resume checkpoint from a different run
            raise SystemExit(f"error: {e}") from None
        if trainer.is_main:
            print(f"done: final_acc {m['final_acc']:.2f}%  best_acc {m['best_acc']:.2f}% "
                  f"(epoch {m['best_epoch']})  -> {out}/metrics.json, {out}/best.pt", flush=True)
        if created:
            # Every rank past its last collective before any rank tears its gloo pairs down: one CI run saw
            # rank 1 abort ("terminate called without an active exception") at the end of a 2-process run.
            import torch.distributed as tdist
            tdist.barrier()
        return 0
    finally:
        if created:
            import torch.distributed as tdist
            tdist.destroy_process_group()


def train_main(argv=None):
    p = argparse.ArgumentParser(prog="python -m shufflekern train",
                                description="Train a teacher or a vanilla student with cross-entropy.")
    _model_args(p, "--model", "resnet8x4")
    _common(p, default_epochs=15)
    args = p.parse_args(argv)
    return _run(p, args, model_name=args.model, teacher_path=None)


def distill_main(argv=None):
    p = argparse.ArgumentParser(prog="python -m shufflekern distill",
                                description="Distil a trained teacher (a `train` checkpoint) into a student.")
    p.add_argument("--teacher", required=True, metavar="CKPT", help="OUT/best.pt of a `train` run")
    _model_args(p, "--student", "shufflenet_v2")
    k = p.add_argument_group("distillation")
    k.add_argument("--method", default="kd", metavar="M[,M...]",
                   help="kd (Hinton), dkd (decoupled KD), at (attention transfer), rkd (relational KD), "
                        "fitnet (hint) or a comma list, e.g. kd,at: the losses add up; CE (weight 1) is "
                        "added unless kd is used (kd has its own (1 - alpha) CE)")
    k.add_argument("--temperature", type=float, default=4.0, help="kd and dkd temperature")
    k.add_argument("--alpha", type=float, default=0.9, help="weight of the KD term (1 - alpha: CE)")
    k.add_argument("--dkd-alpha", type=float, default=1.0, help="DKD: weight of TCKD (mdistiller: 1)")
    k.add_argument("--dkd-beta", type=float, default=8.0, help="DKD: weight of NCKD (mdistiller: 8)")
    k.add_argument("--dkd-warmup", type=int, default=None, metavar="EPOCHS",
                   help="DKD: linear warm-up of the DKD term over this many epochs (mdistiller: 20 of 240; "
                        "default min(20, max(1, round(epochs / 12))); 0 and 1: none, the factor is min(epoch / warmup, 1) "
                        "with 1-based epochs)")
    k.add_argument("--at-weight", type=float, default=1000.0,
                   help="attention transfer weight, summed over the paired stages (RepDistiller: 1000)")
    k.add_argument("--rkd-distance-weight", type=float, default=25.0, help="RKD distance weight (25)")
    k.add_argument("--rkd-angle-weight", type=float, default=50.0, help="RKD angle weight (50)")
    k.add_argument("--hint-weight", type=float, default=None,
                   help="FitNets hint weight (default: 100 with --method fitnet as RepDistiller, else 0 = off;"
                        " > 0 adds the hint to any method)")
    k.add_argument("--hint-stage", type=int, default=-1, help="stage index for the hint (-1: last)")
    k.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True,
                   help="fused sk.kd_loss / sk.dkd_loss / sk.at_loss (default) or the same losses from eager "
                        "PyTorch ops (--no-fused); RKD and the hint are eager either way")
    _common(p, default_epochs=15)
    args = p.parse_args(argv)
    from .trainer import parse_methods
    try:
        args.method = list(parse_methods(args.method))
    except ValueError as e:
        p.error(f"--method: {e}")
    if args.hint_weight is None:
        args.hint_weight = 100.0 if "fitnet" in args.method else 0.0
    elif "fitnet" in args.method and not args.hint_weight > 0:
        p.error(f"--method fitnet needs --hint-weight > 0, got {args.hint_weight}")
    for name in ("dkd_alpha", "dkd_beta", "at_weight", "rkd_distance_weight", "rkd_angle_weight"):
        if not getattr(args, name) >= 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.dkd_warmup is not None and args.dkd_warmup < 0:
        p.error(f"--dkd-warmup must be >= 0, got {args.dkd_warmup}")
    if not args.temperature > 0:
        p.error(f"--temperature must be > 0, got {args.temperature}")
    if not 0 <= args.alpha <= 1:
        p.error(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.hint_weight < 0:
        p.error(f"--hint-weight must be >= 0, got {args.hint_weight}")
    return _run(p, args, model_name=args.student, teacher_path=args.teacher)


if __name__ == "__main__":
    sys.exit(train_main())
