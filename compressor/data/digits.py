"""scikit-learn's embedded digits (1,797 real 8x8 handwritten digits), served at the shape an arch expects.

The test split (20 %, stratified) is fixed by a constant seed, so every run and
every arch is measured on the same 360 images whatever ``--seed`` is.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

SPLIT_SEED = 20261128
TEST_FRACTION = 0.2


def load_digits_arrays():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # pixel values are 0..16
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=digits.target
    )
    return (x_train, y_train), (x_test, y_test)


class DigitsDataset(Dataset):
    """Digits resized to ``shape`` (C, H, W) and normalized with the training split's mean/std."""

    def __init__(self, images, labels, shape, mean, std):
        channels, height, width = shape
        x = torch.from_numpy(images).unsqueeze(1)
        x = (x - mean) / std
        self.resize = (height, width) != tuple(x.shape[-2:])
        self.shape = shape
        # Small targets are resized once; big ones (ImageNet archs) per item to spare memory.
        if height * width <= 64 * 64 and self.resize:
            x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
            self.resize = False
        self.x = x
        self.y = torch.from_numpy(labels.astype(np.int64))

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = self.x[i]
        if self.resize:
            x = F.interpolate(x[None], size=self.shape[1:], mode="bilinear", align_corners=False)[0]
        if self.shape[0] != x.shape[0]:
            x = x.expand(self.shape[0], -1, -1)
        return x, self.y[i]


def digits_datasets(shape):
    (x_train, y_train), (x_test, y_test) = load_digits_arrays()
    mean, std = float(x_train.mean()), float(x_train.std())
    return DigitsDataset(x_train, y_train, shape, mean, std), DigitsDataset(x_test, y_test, shape, mean, std)
