"""Split each GLOBAL batch of a sampler among the processes of a torchrun/DDP job.

Why not torch's DistributedSampler: it deals indices round-robin over the whole epoch and pads the
last ones by repeating samples, so a validation metric counts some samples twice and the ranks' batches
are not the single-process batches. Here the wrapped sampler (``EpochShuffleSampler``, re-seeded from
(seed, epoch), or a plain ``range`` for evaluation) yields the same order in every process; each
consecutive run of ``global_batch`` indices is one global batch, and rank r takes the r-th of its
``world`` near-equal slices. So with ``-b`` the global batch:

* each training step of N processes sees exactly the samples of the single-process step;
* every sample is used exactly once per epoch (no padding, nothing dropped), except a final training
  batch smaller than the number of processes, which is dropped (``drop_tiny_last``): every rank must
  take the same number of steps or DDP's collectives would wait forever.
"""

from torch.utils.data import Sampler


class GlobalBatchShard(Sampler):
    def __init__(self, base, global_batch, rank, world, drop_tiny_last=False):
        if global_batch % world:
            raise ValueError(f"global batch {global_batch} is not a multiple of {world} processes")
        self.base, self.global_batch, self.rank, self.world = base, global_batch, rank, world
        self.drop_tiny_last = drop_tiny_last

    def set_epoch(self, epoch):
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def _slice(self, size):
        """[start, stop) of this rank's part of a global batch of ``size`` (the first size % world get one more)."""
        q, r = divmod(size, self.world)
        start = self.rank * q + min(self.rank, r)
        return start, start + q + (1 if self.rank < r else 0)

    def _sizes(self):
        n = len(self.base)
        full, last = divmod(n, self.global_batch)
        sizes = [self.global_batch] * full
        if last and not (self.drop_tiny_last and last < self.world):
            sizes.append(last)
        return sizes

    def __len__(self):
        return sum(stop - start for start, stop in map(self._slice, self._sizes()))

    def __iter__(self):
        order = list(iter(self.base))
        pos = 0
        for size in self._sizes():
            start, stop = self._slice(size)
            yield from order[pos + start:pos + stop]
            pos += size
