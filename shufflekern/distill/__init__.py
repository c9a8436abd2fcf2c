"""Knowledge distillation workflow: train a teacher, distil it into a ShuffleNet student (KD, DKD, attention
transfer, RKD, FitNets hints; `distill --method`).

See trainer.py for the Python API and cli.py for `python -m shufflekern train|distill`.
"""
from .config import TrainConfig
from .data import DATASETS, DataSplits, ImageData, load_data
from .losses import HintLoss, at_loss_eager, dkd_loss_eager, kd_loss_eager, rkd_loss_eager
from .models import CifarResNet, CifarVGG, MobileNetV2, build_model, feature_stages, model_names, penultimate_module
from .trainer import NonFiniteLossError, Trainer, load_checkpoint_model

__all__ = ["Trainer", "TrainConfig", "NonFiniteLossError", "load_checkpoint_model", "load_data", "DataSplits", "ImageData",
           "DATASETS", "build_model", "model_names", "feature_stages", "penultimate_module", "CifarResNet",
           "CifarVGG", "MobileNetV2", "HintLoss", "kd_loss_eager", "dkd_loss_eager", "at_loss_eager", "rkd_loss_eager"]
