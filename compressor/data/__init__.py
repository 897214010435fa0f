"""Datasets: embedded digits, and CIFAR-10 / MNIST / ImageNet read from a local folder (never downloaded)."""

from compressor.core.errors import DataError
from compressor.data.loaders import load_data  # noqa: F401
