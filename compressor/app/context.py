"""The run context both apps start from: device, seed, dataset and input shape, loaders, run folder.

Both apps used to repeat this setup (and turned ``--deterministic`` into seed 0 by writing into
``args``); one object now does it once, leaves ``args`` as the user gave it, and records the
resolved arguments in the run folder (``args.yaml``) next to the log of the command line.
"""

import logging
import sys
from dataclasses import dataclass, field

import torch

from compressor.app.common import check_outputs, pick_device, resolved_seed
from compressor.data import load_data
from compressor.data.loaders import SHAPE_ADAPTIVE, ChannelsLast, load_calibration_data
from compressor.models import arch_family
from compressor.training import distributed as ddp
from compressor.training.determinism import seed_everything
from compressor.training.run_dir import RunDirectory

log = logging.getLogger("compressor")
ARGS_FILE = "args.yaml"


@dataclass
class RunContext:
    args: object  # the parsed command line, unchanged
    device: torch.device
    gpu_ids: list
    seed: int | None  # --seed, or 0 with --deterministic, or None
    dataset: str
    shape: tuple | None  # the arch's input shape for datasets served at any size, else None
    run: RunDirectory | None = None
    procs: ddp.Processes = field(default_factory=ddp.Processes)  # torchrun's processes (one, without torchrun)

    @classmethod
    def from_args(cls, args):
        """Device, seed (every RNG seeded now), dataset and shape; nothing is written yet."""
        check_outputs(args)  # before any work: no output may be an input, every output writable
        procs, ddp_device = ddp.setup(args.cpu, args.gpus)  # torchrun: one process per device
        device, gpu_ids = (ddp_device, []) if procs.active else pick_device(args)
        ddp.check_batch(args.batch_size, procs)
        seed = resolved_seed(args)
        if procs.active:
            seed = ddp.shared_seed(seed)  # same model and data order in every process
        if seed is not None:
            seed_everything(seed, args.deterministic)
        dataset = args.dataset or arch_family(args.arch)[0]
        shape = arch_family(args.arch)[1] if dataset in SHAPE_ADAPTIVE else None
        return cls(args, device, gpu_ids, seed, dataset, shape, procs=procs)

    def open_run(self, default_name, recipe_path=None):
        """Create the run folder: log it and the command line, copy the recipe in, save the resolved arguments."""
        self.run = RunDirectory(self.args.out_dir, self.args.name or default_name, is_main=self.procs.is_main)
        log.info("Run folder: %s", self.run.path)
        log.info("Command line: %s", " ".join(sys.argv))
        self.run.copy_in(recipe_path)
        self.run.write_yaml(ARGS_FILE, self.resolved_args())
        return self.run

    def resolved_args(self):
        """The arguments as the run used them: the flags, with the dataset and seed the run chose."""
        return {**vars(self.args), "dataset": self.dataset, "seed": self.seed}

    def loaders(self, seed=0, train_size=1.0, valid_size=1.0, test_size=1.0):
        """(train, validation, test) loaders; ``seed`` drives the per-epoch shuffle."""
        args = self.args
        loaders = load_data(self.dataset, args.data, self.shape, args.batch_size, args.workers, args.validation_split,
                            train_size, valid_size, test_size, seed=seed, rank=self.procs.rank, world=self.procs.world)
        return tuple(self._in_format(loader) for loader in loaders)

    def full_test_loader(self, test_size=1.0):
        """The whole test set in this process (exports verify on rank 0 alone, after the distributed part)."""
        args = self.args
        return self._in_format(load_data(self.dataset, args.data, self.shape, args.batch_size, args.workers,
                                         args.validation_split, effective_test_size=test_size)[2])

    def calibration_loader(self, size):
        """``size`` training-split images (a count, or a fraction when <= 1), test-time transforms."""
        args = self.args
        return self._in_format(load_calibration_data(self.dataset, args.data, self.shape, args.batch_size, size,
                                                     args.workers, args.validation_split, rank=self.procs.rank,
                                                     world=self.procs.world))

    def _in_format(self, loader):
        """--channels-last: image batches in channels-last memory format (the model is converted by the app)."""
        return ChannelsLast(loader) if getattr(self.args, "channels_last", False) else loader

    def close(self):
        if self.run is not None:
            self.run.close()
        ddp.shutdown(self.procs)
