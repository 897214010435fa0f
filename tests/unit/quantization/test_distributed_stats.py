"""Statistics merged, not copied: calibration and QAT ranges under a 2-process gloo group (127.0.0.1).

Each test compares what 2 ranks compute on their shards with what 1 process computes on all the data.
"""

import pytest
import torch
from distributed_harness import GLOBAL_BATCH, STEPS, qat_data, qat_model, run_ranks, shard, train_steps
from torch.multiprocessing import ProcessRaisedException
from torch.nn.parallel import DistributedDataParallel as DDP

from compressor.core import distributed
from compressor.core.errors import CompressorError
from compressor.models import create_model
from compressor.quantization.collect import collect_stats
from compressor.quantization.graph.fold_bn import fold_batchnorm


# --- calibration statistics and histograms -----------------------------------------------------------
def calibration_data():
    g = torch.Generator().manual_seed(3)
    # samples with different means and scales, so per-batch and per-sample definitions would differ
    return (
        torch.randn(40, 3, 32, 32, generator=g) * torch.linspace(0.5, 3, 40)[:, None, None, None]
        + torch.linspace(-1, 1, 40)[:, None, None, None]
    )


def calibration_model():
    torch.manual_seed(0)
    return fold_batchnorm(create_model("resnet20_cifar", "digits")).eval()


def batches(x, size):
    return [(b, 0) for b in x.split(size)]


def _collect_on_shard(rank, world, out):
    x = calibration_data()
    # uneven shards of whole batches: rank 0 the first 3 batches of 4, rank 1 the other 7. (A model's own
    # arithmetic may round differently at another batch size, e.g. a matmul's blocking; the collector's
    # results must not, see test_stats_do_not_depend_on_the_batch_split.)
    shard = x[:12] if rank == 0 else x[12:]
    records, hists = collect_stats(calibration_model(), batches(shard, 4), histograms=True)
    torch.save({"records": records, "hists": {n: (h.amax, h.counts) for n, h in hists.items()}}, f"{out}/{rank}.pt")


def test_stats_and_histograms_of_two_ranks_equal_one_process(tmp_path):
    run_ranks(_collect_on_shard, 2, (str(tmp_path),))
    records, hists = collect_stats(calibration_model(), batches(calibration_data(), 4), histograms=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert set(got["records"]) == set(records) and len(records) > 10
        for site, rec in records.items():
            assert got["records"][site] == {**rec, "shape": got["records"][site]["shape"]}, site  # bit-identical
            amax, counts = got["hists"][site]
            assert amax == hists[site].amax and torch.equal(counts, hists[site].counts), site
    # the batch dimension of "shape" is the sum of the ranks' first batches, as a global batch
    assert got["records"]["input"]["shape"] == "(8, 3, 32, 32)" and records["input"]["shape"] == "(4, 3, 32, 32)"


def test_stats_do_not_depend_on_the_batch_split():
    """The same activations fed as 1 batch of 40, 14 batches of 3, or 2 'ranks' merged: identical records."""
    from compressor.calibration.stats import Histogram, TensorStats

    x = calibration_data()
    relu = x.clamp_min(0)  # exact zeros, as after a ReLU
    for data in (x, relu):
        results = []
        for parts in (
            [[x_ for x_ in data.split(40)]],
            [list(data.split(3))],
            [list(data[:11].split(5)), list(data[11:].split(2))],
        ):
            stats, hists = [], []
            for part in parts:
                s, h = TensorStats(), Histogram()
                for b in part:
                    s.update(b)
                    h.update(b)
                stats.append(s)
                hists.append(h)
            merged, hist = TensorStats.merged(stats), Histogram.merged(hists)
            results.append(({**merged.record(), "shape": None}, hist.amax, hist.counts))
        for rec, amax, counts in results[1:]:
            assert rec == results[0][0] and amax == results[0][1] and torch.equal(counts, results[0][2])
        assert results[0][0]["min"] == data.min().item() and results[0][0]["max"] == data.max().item()


# --- QAT activation ranges -----------------------------------------------------------------------------
QAT = {
    "version": 1,
    "quantizers": {
        "q": {
            "class": "QuantAwareTrainRangeLinearQuantizer",
            "bits_activations": 8,
            "bits_weights": 8,
            "mode": "ASYMMETRIC_UNSIGNED",
            "ema_decay": 0.9,
        }
    },
    "policies": [{"quantizer": {"instance_name": "q"}, "starting_epoch": 0, "ending_epoch": 10, "frequency": 1}],
}


def _qat_on_shard(rank, world, out):
    sched, opt = qat_model(QAT)
    x, y = qat_data()
    net = DDP(sched.model)
    sched.on_epoch_begin(0, opt)
    train_steps(net, opt, x, y, shard(rank, world))
    torch.save(sched.model.state_dict(), f"{out}/{rank}.pt")


def test_qat_ranks_hold_identical_ranges_learned_from_all_data(tmp_path):
    run_ranks(_qat_on_shard, 2, (str(tmp_path),))
    ranks = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in (0, 1)]
    sched, opt = qat_model(QAT)
    x, y = qat_data()
    sched.on_epoch_begin(0, opt)
    train_steps(sched.model, opt, x, y)  # one process, the same global batches
    single = sched.model.state_dict()
    assert set(ranks[0]) == set(single)
    counters = [k for k in single if k.endswith("num_updates")]
    assert counters and all(int(ranks[0][k]) == int(ranks[1][k]) == STEPS for k in counters)
    for key, value in single.items():
        if not torch.is_tensor(value):  # quantizer flags (extra state)
            assert ranks[0][key] == ranks[1][key] == value, key
            continue
        assert torch.equal(ranks[0][key], ranks[1][key]), key  # every buffer and weight identical on both ranks
        assert torch.allclose(ranks[0][key].float(), single[key].float(), rtol=1e-4, atol=1e-6), key
    # the input's range saw rank 1's wider data: bit-identical to one process over whole batches,
    # and wider than rank 0's own data (what copying rank 0's buffers would give)
    maxs = [k for k in single if k.endswith("biased_max")]
    exact = [k for k in maxs if torch.equal(ranks[0][k], single[k])]
    assert exact, "no activation range bit-identical to the single-process one"
    bias = 1 - 0.9**STEPS
    rank0_max = x.view(STEPS, GLOBAL_BATCH, -1)[:, : GLOBAL_BATCH // 2].amax().item()
    assert any(ranks[0][k].item() / bias > 1.5 * rank0_max for k in exact)


# --- a failing rank -----------------------------------------------------------------------------------
def _one_rank_fails(rank, world):
    if rank == 1:
        raise CompressorError("rank 1 could not read its shard")
    distributed.all_reduce_sum([1.0])  # rank 0 waits here for a peer that is gone


def test_a_failing_rank_ends_the_job_with_its_error():
    # rank 0's collective would wait an hour; the job must end on rank 1's error instead (a hang would
    # surface as the harness's TimeoutError at 600 s; the bound is loose for a loaded 2-core CI machine)
    # whichever rank is reported first: rank 1's own error, or rank 0's collective failing as its peer left
    # (gloo says 'closed' or 'reset' by peer, depending on when the socket goes)
    either = "rank 1 could not read its shard|Connection (closed|reset) by peer"
    with pytest.raises(ProcessRaisedException, match=either):
        run_ranks(_one_rank_fails, 2, timeout=600, collective_timeout=3600)
