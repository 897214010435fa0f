"""What both apps share: argparse number types and the device choice."""

import argparse

import torch

from compressor.core.errors import UsageError


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


def fraction(flag):
    return number(flag, expected="a number in [0, 1]", lo=0.0, hi=1.0)


def positive_int(flag):
    return number(flag, int, expected="a positive integer", lo=0, lo_open=True)


def non_negative(flag, kind=float):
    return number(flag, kind)


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
