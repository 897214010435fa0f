"""The few collective operations the library needs when it runs in several processes (torchrun / DDP).

Why here, at the bottom of the stack: quantizers (``quantization``) and statistics collectors
(``calibration`` callers) must merge what each process saw, and they may import only lower layers.
Every helper is a no-op (returns its input) when ``torch.distributed`` is not initialized or holds a
single process, so single-process code pays one ``is_initialized()`` check and nothing else.

What DDP does NOT do for us: it all-reduces gradients and (with ``broadcast_buffers``) copies rank 0's
buffers over the others at each forward. An observer's range is a buffer, so without a merge every
rank would quantize with the range seen on rank 0's shard only; ``all_reduce_min_max`` is the merge.
"""

import torch
import torch.distributed as dist


def is_distributed():
    """True inside an initialized process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size():
    return dist.get_world_size() if is_distributed() else 1


def rank():
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main():
    """The process that writes files and logs (rank 0; the only one without a process group)."""
    return rank() == 0


def _collective_device(like=None):
    """Where a collective's tensor must live: NCCL needs the current CUDA device, gloo takes CPU."""
    if like is not None and like.device.type != "meta":
        return like.device
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@torch.no_grad()
def all_reduce_min_max(lo, hi):
    """(global min, global max) of the per-process ``lo``/``hi`` scalars, in ONE all-reduce (MAX of [-lo, hi]).

    Negation is exact in floating point, so the result is bit-identical to min/max over all the data."""
    if not is_distributed():
        return lo, hi
    both = torch.stack([-lo.detach().reshape(()).float(), hi.detach().reshape(()).float()])
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    return (-both[0]).reshape(lo.shape).to(lo.dtype), both[1].reshape(hi.shape).to(hi.dtype)


@torch.no_grad()
def all_reduce_sum(values):
    """Element-wise sum over processes of a list of numbers, as float64 (counts and loss sums)."""
    if not is_distributed():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_gather_object(obj):
    """[obj of rank 0, obj of rank 1, ...] on every process (pickled: for small Python state)."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src=0):
    """``obj`` of process ``src`` on every process."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
