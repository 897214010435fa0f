"""Distiller's compress_classifier.py command line (the training flags), plus --dataset."""

import argparse

from ..data.loaders import DATASETS

SUMMARY_CHOICES = ("compute", "model", "modules")


def number(flag, kind=float, expected="a number >= 0", lo=0, lo_open=False, hi=None):
    """An argparse type: ``kind`` within [lo, hi] (lo excluded with ``lo_open``), else a message naming the flag."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects {expected}, got {text!r}") from None
        if (lo is not None and (value <= lo if lo_open else value < lo)) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{flag} expects {expected}, got {value}")
        return value

    return parse


def _fraction(flag):
    return number(flag, expected="a number in [0, 1]", lo=0.0, hi=1.0)


def _positive_int(flag):
    return number(flag, int, expected="a positive integer", lo=0, lo_open=True)


def _non_negative(flag, kind=float):
    return number(flag, kind)


def classifier_parser():
    p = argparse.ArgumentParser(
        prog="compress_classifier.py",
        description="Train or fine-tune an image classifier under a compression recipe (Distiller-compatible flags).",
    )
    p.add_argument("data", metavar="DATASET_DIR", nargs="?", default=None,
                   help="folder holding the dataset (not needed for --dataset digits)")
    p.add_argument("-a", "--arch", default="resnet20_cifar", help="model architecture (default: resnet20_cifar)")
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help="dataset; default inferred from the arch name (*_cifar: cifar10, *_mnist: mnist, "
                        "*_digits: digits, others: imagenet)")
    p.add_argument("-j", "--workers", type=_non_negative("-j/--workers", int), default=0, help="data loading worker processes (default: 0)")
    p.add_argument("--epochs", type=_positive_int("--epochs"), default=90, help="number of epochs (default: 90)")
    p.add_argument("-b", "--batch-size", type=_positive_int("-b/--batch-size"), default=256)
    p.add_argument("--lr", "--learning-rate", type=_non_negative("--lr"), default=0.1, dest="lr")
    p.add_argument("--momentum", type=_non_negative("--momentum"), default=0.9)
    p.add_argument("--wd", "--weight-decay", type=_non_negative("--wd"), default=1e-4, dest="weight_decay")
    p.add_argument("-p", "--print-freq", type=_non_negative("-p/--print-freq", int), default=10, help="log every N minibatches (0: only at epoch end)")
    p.add_argument("--compress", metavar="RECIPE", default=None, help="YAML compression recipe")
    p.add_argument("--resume-from", metavar="PATH", default=None,
                   help="continue a run from its checkpoint (model, optimizer, schedules, epoch, RNG)")
    p.add_argument("--reset-optimizer", action="store_true",
                   help="with --resume-from: start a new optimizer and count epochs from 0")
    p.add_argument("--exp-load-weights-from", metavar="PATH", default=None,
                   help="load model weights only (a checkpoint or a state dict), then train from epoch 0")
    p.add_argument("--pretrained", action="store_true", help="start from torchvision's pretrained weights")
    p.add_argument("-e", "--evaluate", action="store_true", help="evaluate the model on the test set and exit")
    p.add_argument("--deterministic", "--det", action="store_true", help="deterministic kernels and seeding")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: 0 with --deterministic)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    p.add_argument("--gpus", metavar="IDS", default=None, help="comma-separated GPU ids, e.g. 0,1")
    p.add_argument("-n", "--name", default=None, help="experiment name (run folder prefix and log name)")
    p.add_argument("-o", "--out-dir", default="logs", help="folder for run folders (default: logs)")
    p.add_argument("--vs", "--validation-split", type=_fraction("--vs"), default=0.1, dest="validation_split",
                   help="fraction of the training set held out for validation; 0 validates on the test set")
    p.add_argument("--etrs", "--effective-train-size", type=_fraction("--etrs"), default=1.0,
                   dest="effective_train_size", help="fraction of the training set used each epoch")
    p.add_argument("--evs", "--effective-valid-size", type=_fraction("--evs"), default=1.0,
                   dest="effective_valid_size")
    p.add_argument("--etes", "--effective-test-size", type=_fraction("--etes"), default=1.0,
                   dest="effective_test_size")
    p.add_argument("--confusion", action="store_true", help="log the confusion matrix of validation and test")
    p.add_argument("--param-hist", action="store_true", help="log parameter histograms to TensorBoard each epoch")
    p.add_argument("--summary", choices=SUMMARY_CHOICES, action="append", default=None,
                   help="print a summary of the model and exit")
    p.add_argument("--num-best-scores", type=_positive_int("--num-best-scores"), default=1)
    from .deploy_args import add_deploy_arguments
    from .kd_args import add_kd_arguments
    from .qe_args import add_qe_arguments

    add_qe_arguments(p)
    add_kd_arguments(p)
    add_deploy_arguments(p)
    return p
