"""Knowledge distillation workflow: train a teacher, distil it into a ShuffleNet student.

See trainer.py for the Python API and cli.py for `python -m shufflekern train|distill`.
"""
from .config import TrainConfig
from .data import DATASETS, DataSplits, ImageData, load_data
from .losses import HintLoss, kd_loss_eager
from .models import CifarResNet, build_model, feature_stages, model_names
from .trainer import NonFiniteLossError, Trainer, load_checkpoint_model

__all__ = ["Trainer", "TrainConfig", "NonFiniteLossError", "load_checkpoint_model", "load_data", "DataSplits", "ImageData",
           "DATASETS", "build_model", "model_names", "feature_stages", "CifarResNet", "HintLoss",
           "kd_loss_eager"]
