"""Distiller's compress_classifier.py command line (the training flags), plus --dataset."""

import argparse

from compressor.app.common import fraction, non_negative, positive_int
from compressor.app.deploy_args import add_deploy_arguments
from compressor.app.kd_args import add_kd_arguments
from compressor.app.qe_args import add_qe_arguments

from compressor.data.loaders import DATASETS

SUMMARY_CHOICES = ("compute", "model", "modules")


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
    p.add_argument("-j", "--workers", type=non_negative("-j/--workers", int), default=0, help="data loading worker processes (default: 0)")
    p.add_argument("--epochs", type=positive_int("--epochs"), default=90, help="number of epochs (default: 90)")
    p.add_argument("-b", "--batch-size", type=positive_int("-b/--batch-size"), default=256)
    p.add_argument("--lr", "--learning-rate", type=non_negative("--lr"), default=0.1, dest="lr")
    p.add_argument("--momentum", type=non_negative("--momentum"), default=0.9)
    p.add_argument("--wd", "--weight-decay", type=non_negative("--wd"), default=1e-4, dest="weight_decay")
    p.add_argument("-p", "--print-freq", type=non_negative("-p/--print-freq", int), default=10, help="log every N minibatches (0: only at epoch end)")
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
    p.add_argument("--vs", "--validation-split", type=fraction("--vs"), default=0.1, dest="validation_split",
                   help="fraction of the training set held out for validation; 0 validates on the test set")
    p.add_argument("--etrs", "--effective-train-size", type=fraction("--etrs"), default=1.0,
                   dest="effective_train_size", help="fraction of the training set used each epoch")
    p.add_argument("--evs", "--effective-valid-size", type=fraction("--evs"), default=1.0,
                   dest="effective_valid_size")
    p.add_argument("--etes", "--effective-test-size", type=fraction("--etes"), default=1.0,
                   dest="effective_test_size")
    p.add_argument("--confusion", action="store_true", help="log the confusion matrix of validation and test")
    p.add_argument("--param-hist", action="store_true", help="log parameter histograms to TensorBoard each epoch")
    p.add_argument("--summary", choices=SUMMARY_CHOICES, action="append", default=None,
                   help="print a summary of the model and exit")
    p.add_argument("--num-best-scores", type=positive_int("--num-best-scores"), default=1)
    add_qe_arguments(p)
    add_kd_arguments(p)
    add_deploy_arguments(p)
    return p
