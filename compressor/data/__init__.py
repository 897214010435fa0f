"""Datasets: embedded digits, and CIFAR-10 / MNIST / ImageNet read from a local folder (never downloaded)."""

from .loaders import DataError, load_data  # noqa: F401
