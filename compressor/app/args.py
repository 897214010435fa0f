"""Distiller's compress_classifier.py command line: the flags both apps share (common_parser) plus training's."""

import argparse

from compressor.app.common import (
    DefaultsHelpFormatter,
    add_weight_sources,
    common_parser,
    fraction,
    non_negative,
    positive_int,
    with_defaults_shown,
)
from compressor.app.deploy_args import add_deploy_arguments
from compressor.app.kd_args import add_kd_arguments
from compressor.app.qe_args import add_qe_arguments

SUMMARY_CHOICES = ("compute", "model", "modules")


def classifier_parser():
    p = argparse.ArgumentParser(
        prog="compress_classifier.py",
        parents=[common_parser(batch_size=256)],
        formatter_class=DefaultsHelpFormatter,
        description="Train or fine-tune an image classifier under a compression recipe (Distiller-compatible flags).",
    )
    p.add_argument("--epochs", type=positive_int("--epochs"), default=90, help="number of epochs (default: 90)")
    p.add_argument("--lr", "--learning-rate", type=non_negative("--lr"), default=0.1, dest="lr",
                   help="initial learning rate")
    p.add_argument("--momentum", type=non_negative("--momentum"), default=0.9, help="SGD momentum")
    p.add_argument("--wd", "--weight-decay", type=non_negative("--wd"), default=1e-4, dest="weight_decay",
                   help="weight decay")
    p.add_argument(
        "-p",
        "--print-freq",
        type=non_negative("-p/--print-freq", int),
        default=10,
        help="log every N minibatches (0: only at epoch end)",
    )
    p.add_argument("--compress", metavar="RECIPE", default=None, help="YAML compression recipe")
    add_weight_sources(
        p,
        "continue a run from its checkpoint (model, optimizer, schedules, epoch, RNG)",
        "load model weights only (a checkpoint or a state dict), then train from epoch 0",
    )
    p.add_argument(
        "--reset-optimizer",
        action="store_true",
        help="with --resume-from: start a new optimizer and count epochs from 0",
    )
    p.add_argument("--pretrained", action="store_true", help="start from torchvision's pretrained weights")
    p.add_argument("-e", "--evaluate", action="store_true", help="evaluate the model on the test set and exit")
    p.add_argument(
        "--etrs",
        "--effective-train-size",
        type=fraction("--etrs"),
        default=1.0,
        dest="effective_train_size",
        help="fraction of the training set used each epoch",
    )
    p.add_argument("--evs", "--effective-valid-size", type=fraction("--evs"), default=1.0, dest="effective_valid_size")
    p.add_argument("--etes", "--effective-test-size", type=fraction("--etes"), default=1.0, dest="effective_test_size")
    p.add_argument("--confusion", action="store_true", help="log the confusion matrix of validation and test")
    p.add_argument("--param-hist", action="store_true", help="log parameter histograms to TensorBoard each epoch")
    p.add_argument(
        "--summary",
        choices=SUMMARY_CHOICES,
        action="append",
        default=None,
        help="print a summary of the model and exit",
    )
    p.add_argument("--num-best-scores", type=positive_int("--num-best-scores"), default=1)
    add_qe_arguments(p)
    add_kd_arguments(p)
    add_deploy_arguments(p)
    return with_defaults_shown(p)
