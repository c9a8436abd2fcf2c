"""TrainConfig: everything a Trainer run is configured by (the CLI builds one from its arguments).

    cfg = TrainConfig(epochs=15, lr=0.05, out_dir="runs/kd", temperature=4.0)
    Trainer(cfg, student, data, teacher=teacher).fit()
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    """A training / distillation run (see Trainer for what each does).

    optimizer: "sgd" (momentum, Nesterov), "adamw", or a callable params -> torch.optim.Optimizer.
    scheduler: "cosine" (per-step, `warmup_epochs` linear warm-up), "constant", or a callable
        (optimizer, steps_per_epoch, epochs) -> LR scheduler stepped once per training step.
    methods: the distillation losses (with a teacher), any of "kd", "dkd", "at", "rkd", "fitnet"; their
        sum is the loss, plus CE with weight 1 unless "kd" is one of them (kd_loss has its (1 - alpha) CE):
    temperature, alpha: Hinton KD ("kd") and DKD's temperature; fused=False runs the eager-PyTorch losses.
    dkd_alpha, dkd_beta, dkd_warmup: DKD (mdistiller: 1, 8, 20 epochs of linear warm-up of the DKD term);
        dkd_warmup None: min(20, max(1, round(epochs / 12))) (mdistiller's 20 of 240 epochs, scaled; 1 epoch,
        as in runs of up to 17 epochs, means full weight from the first epoch: no warm-up).
    at_weight: attention transfer, summed over the paired stages (RepDistiller's beta = 1000).
    rkd_distance_weight, rkd_angle_weight: relational KD on the penultimate features (25, 50), weight 1.
    hint_weight > 0: add hint_weight * MSE(adapter(student stage), teacher stage) on stage `hint_stage`
        ("fitnet"; hint_weight > 0 adds it to any method list, as before the method list existed).
    amp: False, True (bf16 on CPU, fp16 on CUDA), "bf16" or "fp16".   clip_grad: max grad norm or None.
    out_dir: where last.pt / best.pt / metrics.* go (None: write nothing).  resume: continue from
        out_dir/last.pt if it exists.
    meta: model description stored in checkpoints (arch, num_classes, model_kwargs), for
        `load_checkpoint_model`.  record: the run's description stored in checkpoints and metrics under
        "config" (the CLI's arguments).
    """
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    optimizer: Union[str, Callable] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    scheduler: Union[str, Callable] = "cosine"
    warmup_epochs: int = 0
    temperature: float = 4.0
    alpha: float = 0.9
    hint_weight: float = 0.0
    methods: tuple = ("kd",)
    dkd_alpha: float = 1.0
    dkd_beta: float = 8.0
    dkd_warmup: Optional[int] = None
    at_weight: float = 1000.0
    rkd_distance_weight: float = 25.0
    rkd_angle_weight: float = 50.0
    hint_stage: int = -1
    fused: bool = True
    amp: Union[bool, str] = False
    clip_grad: Optional[float] = None
    device: Any = "cpu"
    out_dir: Optional[str] = None
    seed: int = 0
    num_workers: int = 0
    sync_bn: bool = False
    progress: bool = True
    resume: bool = False
    meta: Optional[dict] = None
    record: dict = field(default_factory=dict)

    @classmethod
    def from_kwargs(cls, **kwargs):
        """The config of the former keyword API: Trainer(model, data, epochs=..., config={...}) — there
        `config` was the record stored in checkpoints."""
        if "config" in kwargs:
            kwargs["record"] = kwargs.pop("config")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"Trainer: unexpected keyword argument(s) {', '.join(unknown)}")
        if kwargs.get("record") is None:
            kwargs["record"] = {}
        return cls(**kwargs)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)
