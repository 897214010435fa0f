"""The run directory: log file, recipe copy, TensorBoard events, checkpoints and summary.

Everything a run writes goes through this one object, so that with several
processes only the main one writes (``is_main``).
"""

import json
import logging
import os
import shutil
import sys
import time

import yaml

from compressor.core import distributed
from compressor.core.io import atomic_write_text, save_checkpoint

log = logging.getLogger("compressor")


class RunDirectory:
    def __init__(self, out_dir, name, is_main=True):
        self.name = name or "run"
        self.is_main = is_main
        stamp = time.strftime("%Y.%m.%d-%H%M%S")
        self.path = os.path.join(out_dir, f"{self.name}___{stamp}")
        suffix = 1
        while is_main and os.path.exists(self.path):  # two runs started in the same second
            self.path = os.path.join(out_dir, f"{self.name}___{stamp}-{suffix}")
            suffix += 1
        self._writer = None
        if is_main:
            os.makedirs(self.path, exist_ok=True)
        self.path = distributed.broadcast_object(self.path)  # under DDP: rank 0's folder, one per run
        self._setup_logging()

    def file(self, name):
        return os.path.join(self.path, name)

    def _setup_logging(self):
        logger = logging.getLogger("compressor")
        logger.setLevel(logging.INFO)
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

    def hparams(self, hparams, metrics):
        """Write the HParams-dashboard record in this run's own event file (metrics = existing scalar tags)."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams as hp_summary

        exp, ssi, sei = hp_summary(hparams, metrics)
        for summary in (exp, ssi, sei):
            self.writer.file_writer.add_summary(summary)
        self.writer.flush()

    def copy_in(self, path):
        if self.is_main and path:
            shutil.copy(path, self.file(os.path.basename(path)))

    def write_text(self, name, text):
        """``text`` into ``name`` in the run folder, atomically (the file is closed before the rename)."""
        if self.is_main:
            atomic_write_text(self.file(name), text)

    def write_json(self, name, data):
        self.write_text(name, json.dumps(data, indent=2) + "\n")

    def write_yaml(self, name, data):
        self.write_text(name, yaml.safe_dump(data, sort_keys=False))

    def save_checkpoint(self, checkpoint, is_best):
        if not self.is_main:
            return
        save_checkpoint(self.file("checkpoint.pth.tar"), checkpoint)
        if is_best:
            save_checkpoint(self.file("best.pth.tar"), checkpoint)
