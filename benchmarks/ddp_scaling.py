"""Training throughput of resnet20_cifar 8-bit QAT under DDP with 1, 2, ... CPU processes (gloo, loopback).

Each configuration runs the same GLOBAL batch (-b, split over the processes as the apps do) for
--steps timed steps after --warmup steps; reports seconds per step and samples per second.
The merged QAT ranges add one all-reduce per activation site per step; --no-range-sync measures
the same run with that merge switched off, to show its cost.

    OMP_NUM_THREADS=1 python benchmarks/ddp_scaling.py --procs 1 2 --steps 10 --out docs/benchmarks/ddp_scaling_cpu.json
"""

import argparse
import datetime
import json
import os
import platform
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from compressor.core import distributed  # noqa: E402
from compressor.models import create_model  # noqa: E402
from compressor.recipe.build import build_scheduler, read_recipe  # noqa: E402

RECIPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "schedules", "quant_aware_train_8bit.yaml")


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, args, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=600))
    if args.no_range_sync:
        distributed.all_reduce_min_max = lambda lo, hi: (lo, hi)  # noqa: E731  (measurement only)
    torch.manual_seed(0)
    model = create_model("resnet20_cifar", "digits")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = build_scheduler(read_recipe(RECIPE), model, opt)
    model = sched.model
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched.on_epoch_begin(0, opt)
    net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True) if world > 1 else model
    net.train()
    per = args.batch // world
    x, y = torch.randn(per, 3, 32, 32), torch.randint(0, 10, (per,))
    times = []
    for step in range(args.warmup + args.steps):
        dist.barrier()
        t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        dist.barrier()
        if step >= args.warmup:
            times.append(time.perf_counter() - t)
    if rank == 0:
        times.sort()
        med = times[len(times) // 2]
        json.dump({"procs": world, "global_batch": args.batch, "s_per_step_median": med,
                   "samples_per_s": args.batch / med, "range_sync": not args.no_range_sync}, open(out, "w"))
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("-b", "--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-range-sync", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    rows = []
    for n in args.procs:
        out = f"/tmp/ddp_scaling_{os.getpid()}_{n}.json"
        mp.start_processes(_worker, args=(n, _port(), args, out), nprocs=n, start_method="spawn")
        rows.append(json.load(open(out)))
        print(rows[-1], flush=True)
    report = {"command": " ".join(sys.argv), "cpu": platform.processor() or platform.machine(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
              "os_cpu_count": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0)),
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
