"""GlobalBatchShard: N processes see the single-process global batches, split, with no sample twice or dropped."""

import pytest
import torch

from compressor.data.loaders import EpochShuffleSampler, load_data
from compressor.data.sharding import GlobalBatchShard


def batches_of(sampler, batch):
    order = list(sampler)
    return [order[i:i + batch] for i in range(0, len(order), batch)]


@pytest.mark.parametrize("size,batch,world", [(103, 8, 2), (103, 12, 4), (64, 16, 2), (5, 4, 4)])
def test_ranks_split_each_global_batch(size, batch, world):
    base = EpochShuffleSampler(size, seed=3)
    shards = [GlobalBatchShard(EpochShuffleSampler(size, seed=3), batch, r, world) for r in range(world)]
    for epoch in (0, 1):
        base.set_epoch(epoch)
        for s in shards:
            s.set_epoch(epoch)
        single = batches_of(base, batch)
        per_rank = [batches_of(s, batch // world) for s in shards]
        assert sum(len(s) for s in shards) == size  # nothing dropped, nothing padded
        for step, global_batch in enumerate(single):
            parts = [p[step] for p in per_rank if step < len(p)]
            assert sum(parts, []) == global_batch  # step k of N processes = step k of one process


def test_training_drops_only_a_last_batch_smaller_than_the_world():
    shards = [GlobalBatchShard(range(17), 8, r, 2, drop_tiny_last=True) for r in range(2)]
    assert [len(s) for s in shards] == [8, 8]  # 17 = 2 x 8 + 1: the single leftover sample is dropped
    shards = [GlobalBatchShard(range(19), 8, r, 2, drop_tiny_last=True) for r in range(2)]
    # 19 = 2 x 8 + 3: the last global batch [16, 17, 18] is split 2 + 1
    assert [list(s) for s in shards] == [[0, 1, 2, 3, 8, 9, 10, 11, 16, 17], [4, 5, 6, 7, 12, 13, 14, 15, 18]]


def test_global_batch_must_divide():
    with pytest.raises(ValueError, match="not a multiple of 2"):
        GlobalBatchShard(range(10), 5, 0, 2)


def test_sharded_loaders_cover_the_test_set_once():
    loaders = [load_data("digits", None, (1, 8, 8), 64, rank=r, world=2, seed=1) for r in range(2)]
    single = load_data("digits", None, (1, 8, 8), 64, seed=1)
    for which in (1, 2):  # validation, test
        seen = torch.cat([y for ld in loaders for _, y in ld[which]])
        assert len(seen) == len(single[which].dataset)
        assert torch.equal(seen.sort().values, torch.cat([y for _, y in single[which]]).sort().values)
    first = [next(iter(ld[0]))[1] for ld in loaders]
    assert torch.equal(torch.cat(first), next(iter(single[0]))[1])  # first training step: the same 64 samples
