"""The run directory: log file, recipe copy, TensorBoard events, checkpoints and summary.

Everything a run writes goes through this one object, so that with several
processes only the main one writes (``is_main``). The folder is made with one ``mkdir`` that fails
if the name is taken (never "exists? then create", which let concurrent runs share a folder), and
the name (``-n``) is a plain folder name, so nothing is written outside ``-o``.
"""

import json
import logging
import math
import os
import shutil
import sys
import time

import yaml

from compressor.core import distributed
from compressor.core.errors import UsageError
from compressor.core.io import atomic_write_text, save_checkpoint

log = logging.getLogger("compressor")


class RunDirectory:
    def __init__(self, out_dir, name, is_main=True):
        self.name = check_run_name(name or "run")
        self.is_main = is_main
        self.last_checkpoint = None  # the newest checkpoint this run wrote completely
        self._writer = None
        self.started = time.time()  # wall time of the run, for summary.json
        self.written_tags = set()  # scalar tags written so far
        if is_main:
            self.path = make_run_folder(out_dir, self.name)
        else:
            self.path = None
        self.path = distributed.broadcast_object(self.path)  # under DDP: rank 0's folder, one per run
        self._setup_logging()

    def file(self, name):
        return os.path.join(self.path, name)

    def _setup_logging(self):
        logger = logging.getLogger("compressor")
        logger.setLevel(min(logging.INFO, logger.level or logging.INFO))  # DEBUG stays when -v/--verbose set it
        logger.propagate = False
        for h in list(logger.handlers):
            logger.removeHandler(h)
            h.close()
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter("%(message)s"))
        if not self.is_main:
            console.setLevel(logging.WARNING)  # N processes would print every line N times
        logger.addHandler(console)
        if self.is_main:
            fh = logging.FileHandler(self.file(f"{self.name}.log"))
            fh.setFormatter(logging.Formatter("%(asctime)s - %(message)s"))
            logger.addHandler(fh)

    def close(self):
        if self._writer is not None:
            self._writer.close()
        for h in list(log.handlers):
            log.removeHandler(h)
            h.close()
        log.propagate = True  # the run's handlers are gone: hand records back to the caller's logging

    @property
    def writer(self):
        """TensorBoard SummaryWriter (None on non-main processes)."""
        if self._writer is None and self.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(self.path)
        return self._writer

    def scalars(self, values, step):
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)
                self.written_tags.add(tag)

    def hparams(self, hparams, metrics):
        """Write the HParams-dashboard record in this run's own event file (metrics = existing scalar tags).

        TensorBoard keeps ONE experiment description per logdir (the first it finds), so every run must
        pass the same keys: see compressor.app.run_record."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams as hp_summary

        exp, ssi, sei = hp_summary(hparams, metrics)
        for summary in (exp, ssi, sei):
            self.writer.file_writer.add_summary(summary)
        self.writer.flush()

    # names the run writes itself: a copied-in file never takes one (a recipe named args.yaml was overwritten by the
    # args record, one named like the log clobbered it)
    OWN_FILES = ("args.yaml", "summary.json", "checkpoint.pth.tar", "best.pth.tar")

    def copy_in(self, path):
        """Copy ``path`` (the recipe) into the run folder under its own name, or ``input_<name>`` where the run
        writes a file of that name itself. Returns the copy's path."""
        if not (self.is_main and path):
            return None
        name = os.path.basename(path)
        if name in self.OWN_FILES or name == f"{self.name}.log" or name.startswith("events.out.tfevents"):
            name = f"input_{name}"
        shutil.copy(path, self.file(name))
        return self.file(name)

    def write_text(self, name, text):
        """``text`` into ``name`` in the run folder, atomically."""
        if self.is_main:
            atomic_write_text(self.file(name), text)

    def write_json(self, name, data):
        """Strict JSON: a non-finite number (a diverged metric) is written as null, never as NaN."""
        self.write_text(name, json.dumps(finite_or_null(data), indent=2, allow_nan=False) + "\n")

    def write_yaml(self, name, data):
        self.write_text(name, yaml.safe_dump(data, sort_keys=False))

    def save_checkpoint(self, checkpoint, is_best):
        if not self.is_main:
            return
        save_checkpoint(self.file("checkpoint.pth.tar"), checkpoint)
        self.last_checkpoint = self.file("checkpoint.pth.tar")
        if is_best:
            save_checkpoint(self.file("best.pth.tar"), checkpoint)


MAX_NAME = 128


def check_run_name(name):
    """``name`` when it is a plain folder name (no separators, not '.'/'..', not absolute), else a UsageError."""
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    problem = None
    if not isinstance(name, str) or not name.strip():
        problem = "is empty"
    elif any(sep in name for sep in seps) or name in (".", ".."):
        problem = "must be a plain name, without path separators or '..' (the run folder goes under -o)"
    elif "\0" in name or any(ord(c) < 32 for c in name):
        problem = "holds control characters"
    elif len(name) > MAX_NAME:
        problem = f"is longer than {MAX_NAME} characters"
    if problem:
        raise UsageError(f"-n/--name {name!r} {problem}")
    return name


def make_run_folder(out_dir, name, stamp=None, attempts=1000):
    """Create and return ``out_dir/name___stamp`` (``-1``, ``-2``... when taken), atomically: one mkdir each try."""
    os.makedirs(out_dir, exist_ok=True)
    stamp = stamp or time.strftime("%Y.%m.%d-%H%M%S")
    base = os.path.join(out_dir, f"{name}___{stamp}")
    for suffix in range(attempts):
        path = base if suffix == 0 else f"{base}-{suffix}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise UsageError(f"cannot create a run folder {base}-N in {out_dir}: {attempts} names taken")


def finite_or_null(value):
    """``value`` with every non-finite float replaced by None (JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value
