"""MNIST-layout datasets (MNIST, Fashion-MNIST) read from idx files, served at the shape an arch expects.

Fashion-MNIST installs without internet (Debian's ``dataset-fashion-mnist`` puts the four
``*-idx?-ubyte.gz`` files in ``/usr/share/datasets/fashion-mnist``); ``DATASET_DIR`` in torchvision's
layout (``FashionMNIST/raw/``, ``MNIST/raw/``), when given, is the only place looked at (a mistyped one is an
error, not a silent fall-back). Files may be gzipped or not.

The 28x28 images go to a CIFAR arch (3x32x32) by zero-padding 2 pixels on each side (the
background is 0, so this adds only background) and repeating the grey channel 3 times: the
model is unchanged (its first conv sees three equal channels, 0.4 M of resnet20_cifar's 41 M
MACs). Larger inputs (ImageNet archs) are resized bilinearly. Training augmentation is a random
shift of up to 2 pixels (a 32x32 crop of the image padded to 36x36) and, for Fashion-MNIST only,
a horizontal flip (clothes are mirror-symmetric; digits are not).
"""

import gzip
import logging
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from compressor.core.errors import DataError

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
RAW_FOLDER = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
log = logging.getLogger(__name__)
SHIFT = 2  # pixels of random translation in training


def _read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:  # a truncated or mislabelled .gz
        raise DataError(f"{path} is not an idx file: {exc}") from None
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise DataError(f"{path} is not an idx file of unsigned bytes (magic {data[:4].hex()})")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise DataError(f"{path}: header says {dims} ({expected} bytes), file holds {len(data) - offset}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _find(folder, name):
    for candidate in (name, name + ".gz"):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    return None


def idx_folders(dataset, data_dir):
    """The folders searched for ``dataset``, in order."""
    if data_dir:  # a given DATASET_DIR is the only place looked at: a typo must not train on another copy
        return [os.path.join(data_dir, RAW_FOLDER[dataset], "raw")]
    return [DEBIAN_FASHION_MNIST] if dataset == "fashion_mnist" else []


def load_idx_arrays(dataset, data_dir):
    """((train_images, train_labels), (test_images, test_labels)) as uint8 / int64 arrays."""
    folders = idx_folders(dataset, data_dir)
    if not folders:
        raise DataError(f"--dataset {dataset} needs DATASET_DIR (positional argument): the folder holding "
                        f"{RAW_FOLDER[dataset]}/raw/ with the four idx files")
    for folder in folders:
        paths = {split: [_find(folder, n) for n in names] for split, names in FILES.items()}
        if all(p for pair in paths.values() for p in pair):
            out = []
            for split in ("train", "test"):
                images, labels = (_read_idx(p) for p in paths[split])
                if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                    raise DataError(f"{folder}: {split} images {images.shape} do not match labels {labels.shape}")
                out.append((images, labels.astype(np.int64)))
            log.info("%s: %d training and %d test images read from %s", dataset, len(out[0][1]), len(out[1][1]), folder)
            return tuple(out)
    wanted = ", ".join(n + "[.gz]" for names in FILES.values() for n in names)
    where = " and ".join(folders)
    hint = ("install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the files in "
            "DATASET_DIR/FashionMNIST/raw/" if dataset == "fashion_mnist"
            else "copy MNIST's four idx files into DATASET_DIR/MNIST/raw/")
    raise DataError(f"{dataset} not found: looked for {wanted} in {where}. "
                    f"Datasets are never downloaded at run time: {hint}.")


class IdxImageDataset(Dataset):
    """uint8 28x28 images served normalized at ``shape`` (C, H, W); ``augment`` shifts (and flips) in training."""

    def __init__(self, images, labels, shape, mean, std, augment=False, flip=False):
        self.shape = tuple(shape) if shape else (1, *images.shape[1:])
        channels, height, width = self.shape
        x = (torch.from_numpy(np.array(images)).float().div_(255.0).unsqueeze(1) - mean) / std
        background = (0.0 - mean) / std
        src = x.shape[-1]
        self.resize = not (src <= height == width <= src + 8)
        pad = 0 if self.resize else (height - src) // 2
        self.margin = SHIFT if augment else 0
        # keep images padded by (pad + margin) so that a crop gives a shifted, centred image
        total = pad + self.margin
        self.x = F.pad(x, (total, total, total, total), value=background) if total else x
        self.y = torch.from_numpy(labels)
        self.augment, self.flip = augment, flip

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = self.x[i]
        if self.margin:
            dy, dx = torch.randint(0, 2 * self.margin + 1, (2,)).tolist()
            size = x.shape[-1] - 2 * self.margin
            x = x[:, dy:dy + size, dx:dx + size]
            if self.flip and torch.rand(()) < 0.5:
                x = x.flip(-1)
        if self.resize:
            x = F.interpolate(x[None], size=self.shape[1:], mode="bilinear", align_corners=False)[0]
        if self.shape[0] != x.shape[0]:
            x = x.expand(self.shape[0], -1, -1)
        return x, self.y[i]


def idx_datasets(dataset, data_dir, shape):
    """(train with augmentation, test, train without augmentation) for ``mnist`` or ``fashion_mnist``."""
    (x_train, y_train), (x_test, y_test) = load_idx_arrays(dataset, data_dir)
    pixels = x_train.astype(np.float32) / 255.0
    mean, std = float(pixels.mean()), float(pixels.std())
    flip = dataset == "fashion_mnist"
    return (IdxImageDataset(x_train, y_train, shape, mean, std, augment=True, flip=flip),
            IdxImageDataset(x_test, y_test, shape, mean, std),
            IdxImageDataset(x_train, y_train, shape, mean, std))
