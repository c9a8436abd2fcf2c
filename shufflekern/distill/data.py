"""Datasets: embedded `digits`, CIFAR-10/100 from disk (torchvision's layout, never downloaded),
ImageFolder.

Augmentation (random crop with zero padding, optional horizontal flip) draws its randomness from
(seed, epoch, sample index) alone.  A sample is therefore augmented identically whatever the process
layout (1 or N DDP ranks), the worker count, or whether the run was resumed: this is what makes
`--resume` and the DDP-vs-single-process comparison exact.
"""
import os
import pickle
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["ImageData", "DataSplits", "load_data", "DATASETS"]

DATASETS = ("digits", "cifar10", "cifar100", "imagefolder")

_CIFAR_MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
_CIFAR_STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ImageData(Dataset):
    """Images (uint8 [N, 3, H, W] tensor, or a dataset of such images) + labels, normalised on access.

    With `augment=True`, call `set_epoch(e)` before each epoch (the trainer does).
    """

    def __init__(self, images, labels, mean, std, *, augment=False, pad=4, flip=False, seed=0):
        self.images, self.labels = images, torch.as_tensor(labels, dtype=torch.long)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.augment, self.pad, self.flip, self.seed, self.epoch = augment, pad, flip, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        img = self.images[i]
        if not isinstance(img, torch.Tensor):  # a lazily decoded image (ImageFolder)
            img = img[0]
        x = img.float().div_(255.0)
        if self.augment:
            rng = random.Random(f"{self.seed}/{self.epoch}/{i}")
            if self.pad:
                h, w = x.shape[-2:]
                x = F.pad(x, (self.pad,) * 4)
                top, left = rng.randint(0, 2 * self.pad), rng.randint(0, 2 * self.pad)
                x = x[:, top:top + h, left:left + w]
            if self.flip and rng.random() < 0.5:
                x = x.flip(-1)
        return (x - self.mean) / self.std, self.labels[i]


@dataclass
class DataSplits:
    train: ImageData
    val: ImageData
    num_classes: int
    name: str


def _digits(seed):
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # 8x8 in [0, 16]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(d.target, dtype=torch.long)
    # Fixed split, independent of --seed: 360 validation images, stratified by class.
    g = np.random.default_rng(0)
    val_idx = np.concatenate([g.permutation(np.flatnonzero(d.target == c))[:36] for c in range(10)])
    train_mask = np.ones(len(y), dtype=bool)
    train_mask[val_idx] = False
    tr, va = torch.from_numpy(np.flatnonzero(train_mask)), torch.from_numpy(np.sort(val_idx))
    mean = tuple(x[tr].float().div(255).mean(dim=(0, 2, 3)).tolist())
    std = tuple(x[tr].float().div(255).std(dim=(0, 2, 3)).tolist())
    # Digits are not mirror-symmetric: no horizontal flip.
    train = ImageData(x[tr], y[tr], mean, std, augment=True, pad=4, flip=False, seed=seed)
    val = ImageData(x[va], y[va], mean, std)
    return DataSplits(train, val, 10, "digits")


def _cifar(name, data_dir, seed):
    folder, files = {
        "cifar10": ("cifar-10-batches-py", ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"])),
        "cifar100": ("cifar-100-python", (["train"], ["test"])),
    }[name]
    url = "https://www.cs.toronto.edu/~kriz/cifar.html"
    tarball = "cifar-10-python.tar.gz" if name == "cifar10" else "cifar-100-python.tar.gz"
    if data_dir is None:
        raise FileNotFoundError(
            f"--data {name} needs --data-dir DIR, with torchvision's on-disk layout DIR/{folder}/ "
            f"(extract {tarball} from {url} into DIR). shufflekern never downloads.")
    root = os.path.join(data_dir, folder)
    missing = [f for f in files[0] + files[1] if not os.path.isfile(os.path.join(root, f))]
    if missing:
        raise FileNotFoundError(
            f"--data {name}: {root} is missing {', '.join(missing)}. Put torchvision's on-disk layout "
            f"there: extract {tarball} (from {url}) into {data_dir}, so that {root}/ holds "
            f"{', '.join(files[0] + files[1])}. shufflekern never downloads.")
    label_key = "labels" if name == "cifar10" else "fine_labels"

    def read(names):
        xs, ys = [], []
        for f in names:
            with open(os.path.join(root, f), "rb") as fh:
                entry = pickle.load(fh, encoding="latin1")
            xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.extend(entry[label_key])
        return torch.from_numpy(np.concatenate(xs)), torch.tensor(ys, dtype=torch.long)

    (xt, yt), (xv, yv) = read(files[0]), read(files[1])
    mean, std = _CIFAR_MEAN[name], _CIFAR_STD[name]
    n = 10 if name == "cifar10" else 100
    return DataSplits(ImageData(xt, yt, mean, std, augment=True, pad=4, flip=True, seed=seed),
                      ImageData(xv, yv, mean, std), n, name)


def _imagefolder(data_dir, image_size, seed):
    from torchvision import datasets, transforms

    if data_dir is None or not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data imagefolder needs --data-dir DIR with DIR/train/<class>/*.jpg "
                                f"and DIR/val/<class>/*.jpg, got {data_dir!r}")
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(data_dir, split)):
            raise FileNotFoundError(f"--data imagefolder: {os.path.join(data_dir, split)} does not exist; "
                                    "expected DIR/train/<class>/... and DIR/val/<class>/...")
    tf = transforms.Compose([transforms.Resize(image_size), transforms.CenterCrop(image_size),
                             transforms.Lambda(lambda im: im.convert("RGB")), transforms.PILToTensor()])
    tr = datasets.ImageFolder(os.path.join(data_dir, "train"), transform=tf)
    va = datasets.ImageFolder(os.path.join(data_dir, "val"), transform=tf)
    if tr.classes != va.classes:
        raise ValueError(f"--data imagefolder: train and val class folders differ: {tr.classes} vs {va.classes}")
    pad = max(1, image_size // 8)
    return DataSplits(ImageData(tr, tr.targets, _IMAGENET_MEAN, _IMAGENET_STD, augment=True, pad=pad,
                                flip=True, seed=seed),
                      ImageData(va, va.targets, _IMAGENET_MEAN, _IMAGENET_STD), len(tr.classes), "imagefolder")


def _subset(d: ImageData, n):
    if n is None or n >= len(d):
        return d
    # The first n: digits cycle through the classes and CIFAR files are shuffled, so this stays balanced.
    out = ImageData.__new__(ImageData)
    out.__dict__.update(d.__dict__)
    if isinstance(d.images, torch.Tensor):
        out.images = d.images[:n]
    else:
        out.images = torch.utils.data.Subset(d.images, range(n))
    out.labels = d.labels[:n]
    return out


def load_data(name="digits", data_dir=None, *, seed=0, image_size=32, limit_train=None, limit_val=None):
    """Train/val splits of a dataset by name (see DATASETS)."""
    if name == "digits":
        splits = _digits(seed)
    elif name in ("cifar10", "cifar100"):
        splits = _cifar(name, data_dir, seed)
    elif name == "imagefolder":
        splits = _imagefolder(data_dir, image_size, seed)
    else:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    splits.train = _subset(splits.train, limit_train)
    splits.val = _subset(splits.val, limit_val)
    return splits
