"""Running the apps under torchrun: process group, device, DDP wrapping, shared seeds, per-rank RNG.

``torchrun --nproc_per_node N apps/compress_classifier.py ...`` sets RANK, LOCAL_RANK and WORLD_SIZE;
``setup()`` then joins the group (NCCL on CUDA, gloo on CPU) and picks this process's device
(cuda:LOCAL_RANK). Without those variables (or with WORLD_SIZE=1) nothing changes: one process, as before.

Conventions (docs/distributed.md):
* ``-b`` is the GLOBAL batch: each of N processes runs ``b / N`` samples per step, so a recipe and its
  learning rate mean the same with 1 or N processes (no LR scaling rule needed);
* the seed is shared (rank 0's, drawn once when ``--seed`` is not given): model initialization and the
  data order are the same in every process; after the model is built, ranks > 0 re-seed with
  seed + rank so random augmentation and dropout differ per process;
* only rank 0 writes (log file, TensorBoard, checkpoints, summary); every rank reads the checkpoint
  itself on resume, including its own RNG state.
"""

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from compressor.core import distributed
from compressor.core.errors import UsageError

log = logging.getLogger("compressor")
DEFAULT_TIMEOUT_S = 600  # a collective waiting longer than this ends the job with an error instead of hanging


@dataclass
class Processes:
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    backend: str = None

    @property
    def active(self):
        return self.world > 1

    @property
    def is_main(self):
        return self.rank == 0


def launched_world():
    """WORLD_SIZE set by torchrun (1 when not launched by it)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise UsageError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer (set by torchrun)") from None


def setup(cpu=False, gpus=None, timeout_s=DEFAULT_TIMEOUT_S):
    """Join torchrun's process group when there is one; (Processes, device or None for the single-process choice)."""
    world = launched_world()
    if world <= 1:
        return Processes(), None
    if gpus:
        raise UsageError("--gpus selects DataParallel devices; under torchrun each process uses cuda:LOCAL_RANK "
                         "(choose devices with CUDA_VISIBLE_DEVICES)")
    use_cuda = torch.cuda.is_available() and not cpu
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {local_rank}: this node has {torch.cuda.device_count()} GPUs; "
                             f"use --nproc_per_node <= {torch.cuda.device_count()}")
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    procs = Processes(dist.get_rank(), local_rank, dist.get_world_size(), backend)
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return procs, device


def shutdown(procs):
    if procs.active and dist.is_initialized():
        dist.destroy_process_group()


def check_batch(batch_size, procs, flag="-b/--batch-size"):
    if procs.active and batch_size % procs.world:
        raise UsageError(f"{flag} {batch_size} is the global batch; with {procs.world} processes it must be a "
                         f"multiple of {procs.world} (each process runs {flag.split('/')[0]} / {procs.world})")


def shared_seed(seed):
    """``seed``, or one drawn on rank 0, the same in every process (model init and data order must agree)."""
    if seed is None and distributed.is_distributed():
        seed = int.from_bytes(os.urandom(4), "little") if distributed.is_main() else None
    return distributed.broadcast_object(seed)


def wrap(model, procs, device):
    """DistributedDataParallel around ``model`` (unchanged when not distributed).

    find_unused_parameters: a recipe may leave parameters out of the graph for whole epochs (a PACT clip
    before its quantizer starts, a frozen INQ group), which plain DDP reports as an error."""
    if not procs.active:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def rng_states(state):
    """Every rank's RNG state (a list indexed by rank; [state] in one process). Collective: all ranks call it."""
    return distributed.all_gather_object(state)


def my_rng_state(rng, per_rank, procs):
    """This rank's RNG state from a checkpoint: its own when the checkpoint has one per rank at this world
    size, else rank 0's (``rng``), as a single-process checkpoint holds."""
    if per_rank and len(per_rank) == procs.world:
        return per_rank[procs.rank]
    if procs.active and rng:
        log.warning("WARNING: the checkpoint's RNG state is from %s process(es); all %d ranks resume rank 0's",
                    len(per_rank) if per_rank else 1, procs.world)
    return rng
