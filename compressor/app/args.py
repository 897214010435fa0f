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
from compressor.training.optimizers import OPTIMIZERS

SUMMARY_CHOICES = ("compute", "model", "modules", "sparsity")
# Distiller's --summary choices we do not have, and what replaces each
DISTILLER_SUMMARIES = {
    "png": "compressor compare --plot draws runs; --summary compute lists the layers' MACs and bits",
}
REFUSED_FLAGS = {
    "act_stats": "--act-stats: collect activation statistics with apps/post_train_quant.py (it writes "
                 "acts_quantization_stats.yaml in Distiller's format from --calibration-size training images)",
}


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
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd",
                   help="sgd (with --momentum) or adamw (for ConvNeXt and ViT)")
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
    p.add_argument("--compile", action="store_true",
                   help="run the model under torch.compile (quantizers inside; compiles at the first batch, which "
                        "takes minutes on a CPU; see docs/performance.md for when it pays)")
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
        choices=SUMMARY_CHOICES + tuple(DISTILLER_SUMMARIES),
        action="append",
        default=None,
        help=f"print a summary of the model and exit ({', '.join(SUMMARY_CHOICES)}; Distiller's "
             f"{', '.join(DISTILLER_SUMMARIES)} say what replaces them)",
    )
    p.add_argument("--sense", choices=("element", "filter", "channel"), default=None,
                   help="pruning sensitivity analysis of the loaded model (Distiller's): each weight pruned alone "
                        "to each --sense-range level, scored on the validation split; writes sensitivity.csv/.png")
    p.add_argument("--sense-range", type=float, nargs=3, default=[0.0, 0.95, 0.1], metavar=("START", "STOP", "STEP"),
                   help="sparsity levels of --sense: numpy.arange(START, STOP, STEP)")
    # Distiller's flags that people type: accepted, or refused naming what replaces them (refused_flag)
    p.add_argument("-v", "--verbose", action="store_true", help="debug-level messages in the console and the log")
    p.add_argument("--load-serialized", action="store_true",
                   help="accepted for Distiller's command lines: models are never wrapped in DataParallel here")
    p.add_argument("--save-untrained-model", action="store_true",
                   help="save the initial weights as untrained.pth.tar in the run folder before training")
    p.add_argument("--act-stats", choices=("train", "valid", "test"), default=None,
                   help="Distiller's activation statistics: refused here, see the message")
    p.add_argument("--num-best-scores", type=positive_int("--num-best-scores"), default=1)
    add_qe_arguments(p)
    add_kd_arguments(p)
    add_deploy_arguments(p)
    return with_defaults_shown(p)
