"""Run a function in N local processes joined by a gloo process group on 127.0.0.1, with a deadline.

Used by the distributed tests: ``run_ranks(fn, world, args, timeout)`` calls ``fn(rank, world, *args)`` in
each process. A rank that raises ends the whole job (torch.multiprocessing terminates the others and
re-raises the failure here); a job past its deadline is killed and reported, never left hanging.
"""

import datetime
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


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
