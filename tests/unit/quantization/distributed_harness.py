"""Run a function in N local processes joined by a gloo process group on 127.0.0.1, with a deadline.

Used by the distributed tests: ``run_ranks(fn, world, args, timeout)`` calls ``fn(rank, world, *args)`` in
each process. A rank that raises ends the whole job (torch.multiprocessing terminates the others and
re-raises the failure here); a job past its deadline is killed and reported, never left hanging.

Also the tiny QAT run those tests train under a recipe, in each rank and in one process for reference:
``qat_model(recipe)``, ``qat_data()``, ``train_steps(...)`` and ``ddp(model, rank, world)`` (the app's wrapping).
"""

import datetime
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from compressor.recipe.build import build_scheduler, read_recipe
from compressor.training import distributed as app_distributed


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, fn, world, port, args, collective_timeout):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=collective_timeout))
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def run_ranks(fn, world=2, args=(), timeout=600, collective_timeout=600):
    ctx = mp.start_processes(_entry, args=(fn, world, free_port(), args, collective_timeout), nprocs=world,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):  # raises ProcessRaisedException / ProcessExitedException on a failure
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            raise TimeoutError(f"{world} ranks did not finish within {timeout} s")


# --- a tiny QAT run: STEPS global batches of GLOBAL_BATCH samples per epoch -------------------------------
STEPS, GLOBAL_BATCH = 5, 8


def qat_model(recipe, lr=0.1):
    """(scheduler, optimizer) of a tiny conv net under ``recipe``, built as the app builds them: SGD over the FP32
    model's parameters handed to the scheduler, whose quantizer prepares the model (``scheduler.model``) and adds
    its own parameters (PACT clips, TTQ scales) to the optimizer. No epoch is begun."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return build_scheduler(read_recipe(recipe), model, opt), opt


def qat_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS * GLOBAL_BATCH, 1, 8, 8, generator=g)
    x[GLOBAL_BATCH // 2 :: GLOBAL_BATCH] *= 3  # the second half of every global batch (rank 1's) is wider
    return x, torch.randint(0, 10, (STEPS * GLOBAL_BATCH,), generator=g)


def train_steps(net, opt, x, y, part=slice(None)):
    """One pass over the STEPS global batches; ``part`` of each batch (a rank's share) when given."""
    net.train()
    for step in range(STEPS):
        xs, ys = x[step * GLOBAL_BATCH : (step + 1) * GLOBAL_BATCH], y[step * GLOBAL_BATCH : (step + 1) * GLOBAL_BATCH]
        loss = nn.functional.cross_entropy(net(xs[part]), ys[part])
        opt.zero_grad()
        loss.backward()
        opt.step()


def shard(rank, world):
    """Rank ``rank``'s share of every global batch."""
    half = GLOBAL_BATCH // world
    return slice(rank * half, (rank + 1) * half)


def ddp(model, rank, world):
    """``model`` in DistributedDataParallel exactly as the app wraps it (compressor.training.distributed.wrap)."""
    procs = app_distributed.Processes(rank=rank, local_rank=rank, world=world, backend="gloo")
    return app_distributed.wrap(model, procs, torch.device("cpu"))
