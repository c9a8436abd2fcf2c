"""Trainer: a teacher or vanilla student (cross-entropy) or teacher -> student distillation.

    from shufflekern.distill import TrainConfig, Trainer, load_data, build_model
    data = load_data("digits")
    teacher = Trainer(TrainConfig(epochs=15, out_dir="runs/t"), build_model("resnet8x4", 10), data).fit_model()
    student = build_model("shufflenet_v2", 10, width_mult=0.5)
    metrics = Trainer(TrainConfig(epochs=15, out_dir="runs/s"), student, data, teacher=teacher).fit()

(`Trainer(model, data, epochs=..., ...)`, the former keyword form, still works: it builds the TrainConfig.)

Exactness of `resume=True`: the checkpoint written after every epoch holds everything that influences
later epochs (weights, optimiser, scheduler, grad scaler, hint adapter, the torch/numpy/python/CUDA RNG
states), and data order and augmentation are functions of (seed, epoch, index) (see data.py), so a
resumed run computes the same floating-point operations as an uninterrupted one.

Under torchrun (WORLD_SIZE > 1) call `setup_distributed(device)` (dist.py) first, as the CLI does: the
Trainer joins no process group itself.  The student (+ hint adapter) is wrapped in DistributedDataParallel,
the teacher is not; `batch_size` is the global batch, split evenly over the ranks; rank 0 alone prints
and writes files.  With `sync_bn=True`, BatchNorm statistics span all ranks, so N ranks compute the same
training step as one process with the same global batch (up to float summation order).
"""
import math
import os
import pickle
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from . import dist as D
from .config import TrainConfig
from .losses import (HintLoss, at_loss_eager, at_loss_fused, at_pool_pair, dkd_loss_eager, dkd_loss_fused,
                     fused_op_available, kd_loss_eager, kd_loss_fused, rkd_loss_eager)
from .models import feature_stages, penultimate_module
from .report import atomic_torch_save, write_metrics

__all__ = ["Trainer", "TrainConfig", "NonFiniteLossError", "load_checkpoint", "load_checkpoint_model", "CHECKPOINT_FORMAT",
           "METHODS", "parse_methods", "dkd_warmup_epochs"]

CHECKPOINT_FORMAT = "shufflekern-distill-1"

METHODS = ("kd", "dkd", "at", "rkd", "fitnet")
_FUSED_OP = {"kd": "kd_loss", "dkd": "dkd_loss", "at": "at_loss"}  # rkd, fitnet: eager by design


def parse_methods(methods):
    """("kd", "at") from "kd,at", ["kd", "at"] or ("kd", "at"); ValueError naming a bad entry."""
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",")]
    try:
        methods = tuple(methods)
    except TypeError:
        raise ValueError(f"methods must be a comma list or a sequence of {', '.join(METHODS)}, "
                         f"got {methods!r}") from None
    if not methods:
        raise ValueError(f"methods must name at least one of {', '.join(METHODS)}")
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown distillation method {m!r}; choose from {', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods lists a method twice: {','.join(methods)}")
    return methods


def dkd_warmup_epochs(dkd_warmup, epochs):
    """The DKD warm-up length: as given, or (None) mdistiller's 20 of 240 epochs scaled to this run,
    min(20, max(1, round(epochs / 12))), so that a short run is not spent mostly warming up.  Note that a
    warm-up of 1 epoch is none: the factor min(epoch / warmup, 1) (1-based epochs, as mdistiller) is 1 from
    the first epoch, so runs of up to 17 epochs get the DKD term at full weight from the first step."""
    if dkd_warmup is None:
        return min(20, max(1, round(epochs / 12)))
    return dkd_warmup


class NonFiniteLossError(FloatingPointError):
    pass


class _WarmupCosine:
    """LR factor: linear warm-up over `warmup` steps, then cosine decay to 0 at `total` steps."""

    def __init__(self, total, warmup):
        self.total, self.warmup = max(1, total), warmup

    def __call__(self, step):
        if step < self.warmup:
            return (step + 1) / self.warmup
        p = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


class _Constant:
    def __call__(self, step):
        return 1.0


class _StageTap:
    """Forward hook that keeps the output of one stage."""

    def __init__(self, module):
        self.out = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, _m, _inp, out):
        self.out = out


class _InputTap:
    """Forward pre-hook that keeps the input of a module (the penultimate features, at the classifier)."""

    def __init__(self, module):
        self.out = None
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, _m, inp):
        self.out = inp[0]


class _Student(nn.Module):
    """Student + optional hint adapter as one module, so that DDP sees (and syncs) both.  stage_taps /
    pen_tap keep the student's stage outputs (attention transfer) and penultimate features (RKD)."""

    def __init__(self, student, hint=None, hint_stage=-1, stages=False, penultimate=False):
        super().__init__()
        self.student, self.hint = student, hint
        self.tap = _StageTap(feature_stages(student)[hint_stage]) if hint is not None else None
        self.stage_taps = [_StageTap(m) for m in feature_stages(student)] if stages else None
        self.pen_tap = _InputTap(penultimate_module(student)) if penultimate else None

    def forward(self, x, teacher_feature=None):
        logits = self.student(x)
        if self.hint is None or teacher_feature is None:
            return logits, None
        return logits, self.hint(self.tap.out, teacher_feature)


def _rng_state():
    # numpy's state as (name, keys as an int64 tensor, pos, has_gauss, cached_gaussian): plain data, so the
    # checkpoint loads with torch.load(weights_only=True) (an ndarray would need numpy's unpickler).
    name, keys, pos, has_gauss, cached = np.random.get_state()
    s = {"torch": torch.get_rng_state(), "python": random.getstate(),
         "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def _set_rng_state(s):
    torch.set_rng_state(s["torch"])
    name, keys, pos, has_gauss, cached = s["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(s["python"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def load_checkpoint(path, map_location="cpu"):
    """torch.load(path, weights_only=True): a checkpoint is data (tensors, numbers, strings, containers),
    never code.  A file whose pickle names anything else (a function to call on load, a class) is refused
    with ValueError before any of it runs."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist (train one with "
                                "`python -m shufflekern train --out DIR`, then pass DIR/best.pt)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        # weights_only names the global (a function or class) it would have had to import: a refusal.
        # Anything else (an unknown opcode, ...) is a file that is not a pickle at all.
        first = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported class" in ln), None)
        if first is None:
            raise ValueError(f"{path!r} is not a readable checkpoint: {lines[-1] if lines else e}") from None
        raise ValueError(
            f"refusing to load {path!r}: it holds objects other than tensors and plain data, which could run "
            f"code on load (torch.load weights_only=True said: {first}). shufflekern checkpoints are data "
            "only; only a file from an older shufflekern or from elsewhere has such objects") from None
    except Exception as e:
        raise ValueError(f"{path!r} is not a readable checkpoint: {e}") from e


def load_checkpoint_model(path, build=None, map_location="cpu"):
    """Rebuild the model stored in a trainer checkpoint (e.g. a teacher for `distill --teacher`).
    Loads with weights_only=True (see load_checkpoint)."""
    ckpt = load_checkpoint(path, map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or not ckpt.get("meta"):
        raise ValueError(f"{path!r} is not a shufflekern trainer checkpoint (expected format "
                         f"{CHECKPOINT_FORMAT!r} with model metadata)")
    meta = ckpt["meta"]
    if build is None:
        from .models import build_model as build
    model = build(meta["arch"], meta["num_classes"], **meta.get("model_kwargs", {}))
    model.load_state_dict(ckpt["model"])
    return model, meta


class Trainer:
    """Train `model` with CE (teacher=None) or distil `teacher` into it, as `config` (a TrainConfig) says.

    Trainer(config, model, data, teacher=None, log=None); the former form Trainer(model, data, **kwargs)
    builds the config from the keywords (TrainConfig.from_kwargs).
    data: a DataSplits (from load_data) or a (train_dataset, val_dataset) pair of map-style datasets
        yielding (image, label); a train dataset with `set_epoch` gets it called each epoch.
    optimizer: "sgd" (momentum, Nesterov), "adamw", or a callable params -> torch.optim.Optimizer.
    scheduler: "cosine" (per-step, with `warmup_epochs` linear warm-up), "constant", or a callable
        (optimizer, steps_per_epoch, epochs) -> LR scheduler stepped once per training step.
    temperature, alpha: Hinton KD (only with a teacher); fused=False runs the eager-PyTorch loss.
    methods (with a teacher): "kd", "dkd", "at", "rkd", "fitnet" or a list of them (see TrainConfig);
        fused=True runs sk.kd_loss / sk.dkd_loss / sk.at_loss (a RuntimeError if the build lacks one),
        fused=False their eager references; RKD is always eager.  Attention transfer pairs the first
        min(#student, #teacher) entries of feature_stages as RepDistiller zips feat[1:-1].
    hint_weight > 0: add hint_weight * MSE(adapter(student stage), teacher stage) on stage `hint_stage`
        (index into feature_stages, -1 = last) through a learned 1x1 conv adapter.
    amp: False, True (bf16 on CPU, fp16 on CUDA), "bf16" or "fp16".   clip_grad: max grad norm or None.
    out_dir: where last.pt / best.pt / metrics.* go (None: write nothing).  resume: continue from
        out_dir/last.pt if it exists.   meta: model description stored in checkpoints (arch, num_classes,
        model_kwargs) so that `load_checkpoint_model` can rebuild it.
    """

    def __init__(self, config, model=None, data=None, /, *args, teacher=None, log=None, **kwargs):
        if not isinstance(config, TrainConfig):  # the former keyword form: Trainer(model, data, **kwargs)
            if args:
                raise TypeError("Trainer(model, data, ...) takes its settings as keywords")
            config, model, data = TrainConfig.from_kwargs(**kwargs), config, model
        elif args or kwargs:
            raise TypeError("Trainer(config, model, data, *, teacher=None, log=None): the settings belong "
                            f"in the TrainConfig, got {', '.join(kwargs) or 'extra positional arguments'}")
        if model is None or data is None:
            raise TypeError("Trainer needs a model and data")
        c = self.cfg = config
        epochs, batch_size, lr, hint_weight, hint_stage = c.epochs, c.batch_size, c.lr, c.hint_weight, c.hint_stage
        self.device = torch.device(c.device)
        D.require_setup()
        self.rank, self.world = D.rank(), D.world_size()
        self.is_main = self.rank == 0
        self._check_args(epochs, batch_size, lr, c.temperature, c.alpha, hint_weight, c.clip_grad)
        methods = parse_methods(c.methods)
        if hint_weight > 0 and "fitnet" not in methods:
            methods += ("fitnet",)  # the hint before the method list existed: hint_weight > 0 adds it
        if "fitnet" in methods and not hint_weight > 0:
            raise ValueError("method 'fitnet' needs hint_weight > 0 (RepDistiller uses 100)")
        self._check_method_args(c)
        self.methods = methods if teacher is not None else ()
        if teacher is not None and c.fused:
            for m in self.methods:
                if m in _FUSED_OP and not fused_op_available(_FUSED_OP[m]):
                    raise RuntimeError(f"fused=True needs sk.{_FUSED_OP[m]} for method {m!r}, which this "
                                       "shufflekern build lacks; use fused=False (--no-fused) for the eager loss")
        self.dkd_warmup = dkd_warmup_epochs(c.dkd_warmup, epochs)
        self.epochs, self.batch_size, self.seed = epochs, batch_size, c.seed
        self.temperature, self.alpha, self.fused = c.temperature, c.alpha, c.fused
        self.hint_weight, self.clip_grad, self.out_dir = hint_weight, c.clip_grad, c.out_dir
        self.progress, self.resume, self.meta = c.progress, c.resume, c.meta
        self.config = dict(c.record or {})
        self.log = log or (lambda msg: print(msg, flush=True))
        self.amp_dtype = self._amp_dtype(c.amp)

        train, val = (data.train, data.val) if hasattr(data, "train") else data
        self.train_set, self.val_set = train, val
        per_rank = batch_size // self.world
        self.sampler = DistributedSampler(train, num_replicas=self.world, rank=self.rank, shuffle=True,
                                          seed=c.seed)
        if len(self.sampler) < per_rank:
            raise ValueError(f"batch_size {batch_size} is larger than the training set "
                             f"({len(train)} samples{' over %d ranks' % self.world if self.world > 1 else ''})")
        pin = self.device.type == "cuda"
        # drop_last: equal batches on every rank (so DDP's average is the global-batch mean), and no
        # batch of 1, which BatchNorm rejects.
        self.train_loader = DataLoader(train, batch_size=per_rank, sampler=self.sampler, drop_last=True,
                                       num_workers=c.num_workers, pin_memory=pin)
        # Validation: a strided shard per rank without padding, so the summed counts are exact.
        val_shard = Subset(val, range(self.rank, len(val), self.world)) if self.world > 1 else val
        self.val_loader = DataLoader(val_shard, batch_size=max(per_rank, 128), shuffle=False,
                                     num_workers=c.num_workers, pin_memory=pin)

        self.model = model.to(self.device)
        if c.sync_bn and self.world > 1:
            D.convert_sync_batchnorm(self.model)
        self.teacher = teacher.to(self.device).eval() if teacher is not None else None
        if self.teacher is not None:
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        hint = None
        if hint_weight > 0:
            if self.teacher is None:
                raise ValueError("hint_weight > 0 needs a teacher")
            hint, self.teacher_tap = self._make_hint(hint_stage)
        self.teacher_stage_taps = self.teacher_pen_tap = None
        if "at" in self.methods:
            self.teacher_stage_taps = [_StageTap(m) for m in feature_stages(self.teacher)]
        if "rkd" in self.methods:
            self.teacher_pen_tap = _InputTap(penultimate_module(self.teacher))
        self.net = _Student(self.model, hint, hint_stage, stages="at" in self.methods,
                            penultimate="rkd" in self.methods).to(self.device)
        if "at" in self.methods:
            n_s, n_t = len(self.net.stage_taps), len(self.teacher_stage_taps)
            # RepDistiller zips the stage lists (the first min(n_s, n_t) pairs)
            self.at_pairs = min(n_s, n_t)
        self.ddp = None
        if self.world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None)

        params = [p for p in self.net.parameters() if p.requires_grad]
        self.optimizer = self._make_optimizer(c.optimizer, params, lr, c.momentum, c.weight_decay)
        self.steps_per_epoch = len(self.train_loader)
        self.scheduler = self._make_scheduler(c.scheduler, c.warmup_epochs)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.history, self.best_acc, self.best_epoch, self.start_epoch = [], -1.0, 0, 0
        self.sync_checks = 0  # epochs at which the DDP replicas were verified bit-identical

    # -- setup helpers ---------------------------------------------------------------------------
    @staticmethod
    def _check_method_args(c):
        for name in ("dkd_alpha", "dkd_beta", "at_weight", "rkd_distance_weight", "rkd_angle_weight"):
            v = getattr(c, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        w = c.dkd_warmup
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 0):
            raise ValueError(f"dkd_warmup must be None or an int >= 0, got {w!r}")

    @staticmethod
    def _check_args(epochs, batch_size, lr, temperature, alpha, hint_weight, clip_grad):
        def bad(name, value, want):
            raise ValueError(f"{name} must be {want}, got {value!r}")
        if not isinstance(epochs, int) or epochs < 1:
            bad("epochs", epochs, "an int >= 1")
        if not isinstance(batch_size, int) or batch_size < 2:
            bad("batch_size", batch_size, "an int >= 2 (BatchNorm needs 2 samples)")
        if D.world_size() > 1 and (batch_size % D.world_size() or batch_size // D.world_size() < 2):
            bad("batch_size", batch_size, f"a multiple of the world size {D.world_size()} with >= 2 per rank")
        if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
            bad("lr", lr, "a finite number > 0")
        if not (temperature > 0 and math.isfinite(temperature)):
            bad("temperature", temperature, "a finite number > 0")
        if not 0.0 <= alpha <= 1.0:
            bad("alpha", alpha, "in [0, 1]")
        if not (hint_weight >= 0 and math.isfinite(hint_weight)):
            bad("hint_weight", hint_weight, "a finite number >= 0")
        if clip_grad is not None and not clip_grad > 0:
            bad("clip_grad", clip_grad, "a number > 0 or None")

    def _amp_dtype(self, amp):
        if amp in (False, None, "none", "off"):
            return None
        if amp is True:
            return torch.bfloat16 if self.device.type == "cpu" else torch.float16
        table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                 "float16": torch.float16}
        if amp not in table:
            raise ValueError(f"amp must be False, True, 'bf16' or 'fp16', got {amp!r}")
        return table[amp]

    def _make_hint(self, hint_stage):
        s_stages, t_stages = feature_stages(self.model), feature_stages(self.teacher)
        try:
            s_stage, t_stage = s_stages[hint_stage], t_stages[hint_stage]
        except IndexError:
            raise ValueError(f"hint_stage {hint_stage} is out of range: the student has {len(s_stages)} "
                             f"stages, the teacher {len(t_stages)}") from None
        # One dry run on a real sample tells the channel counts.
        x = self.val_set[0][0].unsqueeze(0).to(self.device)
        s_tap, t_tap = _StageTap(s_stage), _StageTap(t_stage)
        was_training = self.model.training
        with torch.no_grad():
            self.model.eval()
            self.model(x)
            self.teacher(x)
        self.model.train(was_training)
        s_tap.handle.remove()
        return HintLoss(s_tap.out.shape[1], t_tap.out.shape[1]), t_tap

    def _make_optimizer(self, optimizer, params, lr, momentum, weight_decay):
        if callable(optimizer):
            return optimizer(params)
        if optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                   nesterov=momentum > 0)
        if optimizer == "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        raise ValueError(f"optimizer must be 'sgd', 'adamw' or a callable, got {optimizer!r}")

    def _make_scheduler(self, scheduler, warmup_epochs):
        if callable(scheduler):
            return scheduler(self.optimizer, self.steps_per_epoch, self.epochs)
        if scheduler == "cosine":
            f = _WarmupCosine(self.epochs * self.steps_per_epoch, warmup_epochs * self.steps_per_epoch)
        elif scheduler == "constant":
            f = _Constant()
        else:
            raise ValueError(f"scheduler must be 'cosine', 'constant' or a callable, got {scheduler!r}")
        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, f)

    # -- checkpoints -----------------------------------------------------------------------------
    def _state(self, epoch):
        return {"format": CHECKPOINT_FORMAT, "epoch": epoch, "model": self.model.state_dict(),
                "hint": self.net.hint.state_dict() if self.net.hint is not None else None,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": _rng_state(), "history": self.history,
                "best_acc": self.best_acc, "best_epoch": self.best_epoch, "meta": self.meta,
                "config": self.config, "epochs": self.epochs, "world_size": self.world}

    def _save(self, epoch, improved):
        """Checkpoint first, then the metrics files: each write is atomic, and a run killed in between
        resumes from the checkpoint, whose history is the authority."""
        state = self._state(epoch)
        atomic_torch_save(state, os.path.join(self.out_dir, "last.pt"))
        if improved:
            best = {k: state[k] for k in ("format", "epoch", "model", "meta", "config", "best_acc")}
            atomic_torch_save(best, os.path.join(self.out_dir, "best.pt"))
        write_metrics(self.out_dir, self.metrics())

    def _load(self, path):
        ckpt = load_checkpoint(path, map_location=self.device)
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a shufflekern trainer checkpoint")
        if ckpt.get("epochs") != self.epochs:
            raise ValueError(f"resume: {path} was written by a run of {ckpt.get('epochs')} epochs, this "
                             f"one has {self.epochs} (the LR schedule would differ); use the same --epochs")
        self.model.load_state_dict(ckpt["model"])
        if (ckpt["hint"] is None) != (self.net.hint is None):
            raise ValueError(f"resume: {path} and this run disagree on whether the hint loss is used")
        if self.net.hint is not None:
            self.net.hint.load_state_dict(ckpt["hint"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"])
        self.history, self.best_acc = list(ckpt["history"]), ckpt["best_acc"]
        self.best_epoch, self.start_epoch = ckpt["best_epoch"], ckpt["epoch"]

    # -- the loop --------------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def dkd_factor(self, epoch):
        """mdistiller's warm-up of the DKD term: min(epoch / warmup, 1) with 1-based epochs."""
        return 1.0 if self.dkd_warmup == 0 else min((epoch + 1) / self.dkd_warmup, 1.0)

    def _loss(self, x, y, epoch=0):
        """(loss, {term: weighted value}) — the terms add up to the loss."""
        t_logits = t_feat = None
        if self.teacher is not None:
            with torch.no_grad():
                t_logits = self.teacher(x)
            if self.net.hint is not None:
                t_feat = self.teacher_tap.out
        logits, hint = (self.ddp or self.net)(x, t_feat)
        if self.teacher is None:
            loss = F.cross_entropy(logits.float(), y)
            return loss, {}
        terms = {}
        if "kd" in self.methods:  # Hinton: alpha * KD + (1 - alpha) * CE in one op
            kd = kd_loss_fused if self.fused else kd_loss_eager
            terms["kd"] = kd(logits, t_logits, y, temperature=self.temperature, alpha=self.alpha).float()
        else:  # RepDistiller (gamma = 1) and mdistiller (CE_WEIGHT = 1) add plain CE
            terms["ce"] = F.cross_entropy(logits.float(), y)
        if "dkd" in self.methods:
            dkd = dkd_loss_fused if self.fused else dkd_loss_eager
            terms["dkd"] = self.dkd_factor(epoch) * dkd(
                logits, t_logits, y, temperature=self.temperature, alpha=self.cfg.dkd_alpha,
                beta=self.cfg.dkd_beta).float()
        if "at" in self.methods:
            at = at_loss_fused if self.fused else at_loss_eager
            total = 0.0
            for s_tap, t_tap in list(zip(self.net.stage_taps, self.teacher_stage_taps))[:self.at_pairs]:
                fs, ft = at_pool_pair(s_tap.out, t_tap.out)
                total = total + at(fs, ft).float()
            terms["at"] = self.cfg.at_weight * total
        if "rkd" in self.methods:
            terms["rkd"] = rkd_loss_eager(self.net.pen_tap.out, self.teacher_pen_tap.out,
                                          distance_weight=self.cfg.rkd_distance_weight,
                                          angle_weight=self.cfg.rkd_angle_weight)
        if hint is not None:
            terms["fitnet"] = self.hint_weight * hint.float()
        loss = sum(terms.values())
        return loss, terms

    def _step(self, x, y, epoch, step):
        with self._autocast():
            loss, terms = self._loss(x, y, epoch)
        # The mean over ranks both for the log and for the NaN check, so that every rank stops together.
        names = list(terms)
        packed = torch.stack([loss.detach().float()] + [terms[k].detach().float() for k in names])
        packed = D.all_reduce_sum(packed.clone()) / self.world
        value = packed[:1]
        self._last_terms = dict(zip(names, packed[1:].tolist()))
        if not torch.isfinite(value).all():
            last = (f"the last good checkpoint is {os.path.join(self.out_dir, 'last.pt')} (epoch {epoch})"
                    if self.out_dir and epoch > 0 else "no checkpoint was written yet")
            raise NonFiniteLossError(
                f"training loss became {value.item()} at epoch {epoch + 1}, step {step + 1}/"
                f"{self.steps_per_epoch}: stopping instead of training on garbage; {last}. Try a lower "
                f"--lr, --clip-grad, or without --amp.")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.net.parameters(), self.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return value.item()

    @torch.no_grad()
    def evaluate(self, model=None):
        """(top-1 accuracy in %, mean CE) of `model` (default: the student) on the validation set."""
        model = self.model if model is None else model
        was_training = model.training
        model.eval()
        sums = torch.zeros(3, dtype=torch.float64)
        for x, y in self.val_loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self._autocast():
                logits = model(x).float()
            sums += torch.tensor([(logits.argmax(1) == y).sum().item(),
                                  F.cross_entropy(logits, y, reduction="sum").item(), len(y)],
                                 dtype=torch.float64)
        D.all_reduce_sum(sums)
        model.train(was_training)
        return 100.0 * sums[0].item() / sums[2].item(), sums[1].item() / sums[2].item()

    def _train_epoch(self, epoch):
        self.net.train()
        self.sampler.set_epoch(epoch)
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        bar = None
        if self.progress and self.is_main:
            from tqdm.auto import tqdm
            bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch",
                       leave=False, dynamic_ncols=True)
        total, n, t0 = 0.0, 0, time.perf_counter()
        self.epoch_terms = {}
        for step, (x, y) in enumerate(self.train_loader):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            total += self._step(x, y, epoch, step)
            n += 1
            for k, v in self._last_terms.items():
                self.epoch_terms[k] = self.epoch_terms.get(k, 0.0) + v
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{total / n:.4f}",
                                img_s=f"{n * self.batch_size / (time.perf_counter() - t0):.0f}")
        if bar is not None:
            bar.close()
        self.epoch_terms = {k: v / max(n, 1) for k, v in self.epoch_terms.items()}
        return total / max(n, 1), n * self.batch_size / (time.perf_counter() - t0)

    def metrics(self):
        return {"final_acc": self.history[-1]["val_acc"] if self.history else None,
                "best_acc": self.best_acc if self.history else None, "best_epoch": self.best_epoch,
                "epochs": self.epochs, "world_size": self.world, "replica_sync_checks": self.sync_checks,
                "history": self.history,
                "config": self.config}

    def fit(self):
        """Train for the remaining epochs; returns the metrics dict (also written to out_dir)."""
        last = os.path.join(self.out_dir, "last.pt") if self.out_dir else None
        if self.resume:
            if last is None:
                raise ValueError("resume=True needs out_dir (the checkpoint lives in out_dir/last.pt)")
            if os.path.isfile(last):
                self._load(last)
                if self.is_main:
                    self.log(f"resumed from {last} after epoch {self.start_epoch}/{self.epochs}")
            elif self.is_main:
                self.log(f"resume: no checkpoint at {last} yet, starting from scratch")
        for epoch in range(self.start_epoch, self.epochs):
            t0 = time.perf_counter()
            train_loss, img_s = self._train_epoch(epoch)
            D.broadcast_buffers(self.model)
            if self.world > 1:
                D.assert_in_sync(self.net, f"after epoch {epoch + 1}")
                self.sync_checks += 1
            val_acc, val_loss = self.evaluate()
            improved = val_acc > self.best_acc
            if improved:
                self.best_acc, self.best_epoch = val_acc, epoch + 1
            self.history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss,
                                 "val_acc": val_acc, "lr": self.optimizer.param_groups[0]["lr"],
                                 "seconds": time.perf_counter() - t0, "images_per_s": img_s})
            if self.epoch_terms:  # distillation: the mean of each weighted loss term (they add up)
                self.history[-1]["train_terms"] = self.epoch_terms
            if self.is_main:
                self.log(f"epoch {epoch + 1}/{self.epochs}  train_loss {train_loss:.4f}  val_loss "
                         f"{val_loss:.4f}  val_acc {val_acc:.2f}%  ({img_s:.0f} img/s, "
                         f"{self.history[-1]['seconds']:.1f}s)")
                if self.out_dir:
                    self._save(epoch + 1, improved)
        return self.metrics()

    def fit_model(self):
        """fit(), then return the trained model (unwrapped)."""
        self.fit()
        return self.model
