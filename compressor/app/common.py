"""What both apps share: argparse number types, the parent parser of their common flags, the device choice,
and the check of outputs against inputs.

Every number enters through ``number``: finite (``nan``/``inf`` parse as floats, and were accepted
before), in range, and an integer where a count is meant (``--calibration-size 1.5`` silently
meant one image).
"""

import argparse
import math
import os

import torch

from compressor.core.errors import UsageError
from compressor.data.loaders import DATASETS

# flags that name files a run reads; no output may be one of them
INPUT_FLAGS = {"compress": "--compress", "resume_from": "--resume-from",
               "exp_load_weights_from": "--exp-load-weights-from", "qe_stats_file": "--qe-stats-file",
               "qe_config_file": "--qe-config-file", "kd_resume": "--kd-resume"}


def number(flag, kind=float, expected="a number >= 0", lo=0, lo_open=False, hi=None):
    """An argparse type: ``kind`` within [lo, hi] (lo excluded with ``lo_open``), else a message naming the flag."""

    def parse(text):
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{flag} expects {expected}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{flag} expects {expected} (a finite number), got {text!r}")
        if (lo is not None and (value <= lo if lo_open else value < lo)) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{flag} expects {expected}, got {value}")
        return value

    return parse


def fraction(flag):
    return number(flag, expected="a number in [0, 1]", lo=0.0, hi=1.0)


MAX_COUNT = 2 ** 31 - 1  # epochs, batch sizes...: past this, TensorBoard steps and tensor sizes overflow


def positive_int(flag, hi=MAX_COUNT):
    return number(flag, int, expected=f"a positive integer up to {hi}", lo=0, lo_open=True, hi=hi)


def seed(flag="--seed"):
    """numpy seeds are 32-bit: -1 and 2**70 failed with a numpy traceback."""
    return number(flag, int, expected="an integer in [0, 2**32 - 1]", lo=0, hi=2 ** 32 - 1)


def count_or_fraction(flag):
    """A fraction in (0, 1], or a whole count above 1 (1.5 is neither)."""
    expected = "a count (a whole number) or a fraction in (0, 1]"
    parse_number = number(flag, expected=expected, lo=0, lo_open=True, hi=MAX_COUNT)

    def parse(text):
        value = parse_number(text)
        if value > 1 and value != int(value):
            raise argparse.ArgumentTypeError(f"{flag} expects {expected}, got {text!r}")
        return int(value) if value > 1 else value

    return parse


MAX_WORKERS = 256  # data-loading processes; -j 100000 once started a process storm before any error


def non_negative(flag, kind=float, hi=None):
    hi = hi if hi is not None else (MAX_COUNT if kind is int else None)
    expected = f"{'an integer' if kind is int else 'a number'} in [0, {hi}]" if hi is not None else "a number >= 0"
    return number(flag, kind, expected=expected, hi=hi)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every flag's help ends with its default (``--lr``, ``--momentum``, ``--wd``, ``-p``, ``--vs``... said nothing),
    unless the help already states it or there is none to state (a switch, a flag that is off by default)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def with_defaults_shown(parser):
    """``parser`` with a help line on every flag that has a default but no help (argparse hides flags without
    help text from the defaults list): used with ``DefaultsHelpFormatter``."""
    for action in parser._actions:
        if action.option_strings and action.help is None and action.default not in (None, False, argparse.SUPPRESS):
            action.help = "default: %(default)s"
    return parser


def common_parser(batch_size=256):
    """A fresh parent parser (argparse ``parents=``) of the flags both apps take.

    Fresh on each call: a child's ``set_defaults`` writes into the shared action objects, so one
    module-level parent would let one app's defaults leak into the other's.
    """
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("data", metavar="DATASET_DIR", nargs="?", default=None,
                   help="folder holding the dataset (not needed for --dataset digits)")
    p.add_argument("-a", "--arch", default="resnet20_cifar", help="model architecture (default: resnet20_cifar)")
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help="dataset; default inferred from the arch name (*_cifar: cifar10, *_mnist: mnist, "
                        "*_digits: digits, others: imagenet)")
    p.add_argument("-j", "--workers", type=non_negative("-j/--workers", int, hi=MAX_WORKERS), default=0,
                   help="data loading worker processes (default: 0)")
    p.add_argument("-b", "--batch-size", type=positive_int("-b/--batch-size"), default=batch_size,
                   help=f"minibatch size (default: {batch_size})")
    p.add_argument("--vs", "--validation-split", type=fraction("--vs"), default=0.1, dest="validation_split",
                   help="fraction of the training set held out for validation; 0 validates on the test set")
    p.add_argument("--deterministic", "--det", action="store_true", help="deterministic kernels and seeding")
    p.add_argument("--seed", type=seed(), default=None, help="random seed (default: 0 with --deterministic)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    p.add_argument("--amp", nargs="?", const="bf16", choices=["bf16", "fp16"], default=None,
                   help="mixed precision: bf16 autocast (CPU and GPU; --amp alone), or fp16 with a gradient scaler "
                        "(GPU); quantizer arithmetic stays float32")
    p.add_argument("--channels-last", action="store_true",
                   help="channels-last memory format for the model and its image batches (faster convs on CPU and GPU)")
    p.add_argument("--gpus", metavar="IDS", default=None, help="comma-separated GPU ids, e.g. 0,1")
    p.add_argument("-n", "--name", default=None, help="experiment name (run folder prefix and log name)")
    p.add_argument("-o", "--out-dir", default="logs", help="folder for run folders (default: logs)")
    return p


def add_weight_sources(parser, resume_help, load_help):
    """--resume-from and --exp-load-weights-from (both apps; each says what it does with them)."""
    parser.add_argument("--resume-from", metavar="PATH", default=None, help=resume_help)
    parser.add_argument("--exp-load-weights-from", metavar="PATH", default=None, help=load_help)


def one_weight_source(args, why):
    """The one FP32 source of a post-training run; both missing or both given is a usage error."""
    if not (args.resume_from or args.exp_load_weights_from):
        raise UsageError(f"{why} needs a trained FP32 model: --resume-from or --exp-load-weights-from")
    if args.resume_from and args.exp_load_weights_from:
        raise UsageError("give one of --resume-from and --exp-load-weights-from")
    return args.resume_from or args.exp_load_weights_from


def resolved_seed(args):
    """--seed, else 0 with --deterministic, else None (``args`` is left as the user gave it)."""
    if args.seed is not None:
        return args.seed
    return 0 if args.deterministic else None


def pick_device(args):
    if args.cpu or not torch.cuda.is_available():
        if args.gpus and not args.cpu:
            raise UsageError(f"--gpus {args.gpus}: no CUDA device is available (use --cpu)")
        return torch.device("cpu"), []
    ids = [0]
    if args.gpus:
        try:
            ids = [int(i) for i in args.gpus.split(",")]
        except ValueError:
            raise UsageError(f"--gpus expects comma-separated integers, got {args.gpus!r}") from None
        bad = [i for i in ids if not 0 <= i < torch.cuda.device_count()]
        if bad:
            raise UsageError(f"--gpus: no such device {bad}; this machine has {torch.cuda.device_count()}")
    return torch.device("cuda", ids[0]), ids


def check_outputs(args):
    """Before any work: an output path that is an input, a folder, or not writable is a UsageError.

    (``--export-onnx`` equal to ``--resume-from`` replaced the checkpoint with the ONNX file, and an
    unwritable path failed only after the whole training.)
    """
    out_dir = getattr(args, "out_dir", None)
    if out_dir and os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"-o/--out-dir {out_dir} is a file, not a folder")
    if out_dir and os.path.isdir(out_dir) and not os.access(out_dir, os.W_OK | os.X_OK):
        raise UsageError(f"-o/--out-dir {out_dir}: no permission to write there")
    export = getattr(args, "export_onnx", None)
    if export:
        _check_output_file("--export-onnx", export, args)


def _check_output_file(flag, path, args):
    for attr, in_flag in INPUT_FLAGS.items():
        source = getattr(args, attr, None)
        if isinstance(source, str) and source and _same_file(source, path):
            raise UsageError(f"{flag} {path} is the {in_flag} input: an output never overwrites an input; "
                             f"choose another file")
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path} is a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{flag} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: no permission to write in {folder}")


def _same_file(a, b):
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)
