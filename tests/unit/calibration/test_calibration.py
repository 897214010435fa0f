import pytest
import torch
from torch import nn

from compressor.calibration.stats import TensorStats
from compressor.calibration.stats_file import load_stats, match_stats, save_stats
from compressor.core.errors import StatsError
from compressor.models import create_model
from compressor.quantization.collect import collect_stats
from compressor.quantization.graph.fold_bn import fold_batchnorm


def test_one_pass_stats_match_exact_values():
    torch.manual_seed(0)
    batches = [torch.randn(16, 3, 4, 4) * (1 + i) + i for i in range(5)]
    s = TensorStats()
    for b in batches:
        s.update(b)
    rec = s.record()
    x = torch.cat(batches).double()
    assert rec["min"] == pytest.approx(x.min().item()) and rec["max"] == pytest.approx(x.max().item())
    assert rec["mean"] == pytest.approx(x.mean().item()) and rec["std"] == pytest.approx(x.std(unbiased=False).item())
    flat = x.flatten(1)
    assert rec["avg_min"] == pytest.approx(flat.min(1).values.mean().item())
    assert rec["avg_max"] == pytest.approx(flat.max(1).values.mean().item())
    # b: per-batch deviations, close to (and never above) the deviation around the global mean
    exact_b = (x - x.mean()).abs().mean().item()
    assert rec["b"] <= exact_b and rec["b"] == pytest.approx(exact_b, rel=0.2)
    assert rec["shape"] == "(16, 3, 4, 4)"


class Counting(torch.utils.data.Dataset):
    def __init__(self):
        self.reads = 0

    def __len__(self):
        return 32

    def __getitem__(self, i):
        self.reads += 1
        torch.manual_seed(i)
        return torch.randn(3, 32, 32), 0


def test_collect_stats_is_one_pass_over_every_site():
    data = Counting()
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    model = fold_batchnorm(create_model("resnet20_cifar", "digits"))
    records, hists = collect_stats(model, loader)
    assert data.reads == 32 and hists is None  # one pass
    assert {"input", "relu", "layer1.0.relu1", "layer1.0.conv2", "layer1.0.relu2", "fc"} <= set(records)
    assert all(r["min"] >= 0 for n, r in records.items() if "relu" in n)
    records, hists = collect_stats(model, loader, histograms=True)
    assert data.reads == 32 * 2  # histograms come in the same single pass
    assert hists["fc"].counts.sum() == 32 * 10
    assert records["fc"]["max"] <= hists["fc"].amax < 2 * max(-records["fc"]["min"], records["fc"]["max"]) + 1e-6


def test_histogram_range_grows_by_exact_rebinning():
    from compressor.calibration.stats import Histogram

    h = Histogram(bins=8)
    h.update(torch.tensor([0.5, 1.0]))  # range [0, 2): the smallest power of two above 1.0
    assert h.amax == 2.0 and h.counts.tolist() == [0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    h.update(torch.tensor([-3.5]))  # doubles once: [0, 4)
    assert h.amax == 4.0 and h.counts.sum() == 3
    # after one pairwise merge, 0.5 and 1.0 sit in bins 1 and 2 of [0, 4): as if binned there directly
    assert h.counts.tolist() == [0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    direct = Histogram(bins=8)
    direct.update(torch.tensor([0.5, 1.0, -3.5]))
    assert direct.amax == h.amax and torch.equal(direct.counts, h.counts)


def test_bn_folding_keeps_outputs():
    torch.manual_seed(0)
    model = create_model("resnet20_cifar", "digits")
    model.train()
    model(torch.randn(16, 3, 32, 32))  # non-trivial running stats
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    folded = fold_batchnorm(model)
    assert torch.allclose(folded(x), model(x), atol=1e-4)
    assert isinstance(folded.bn1, nn.Identity) and not isinstance(model.bn1, nn.Identity)


def test_stats_file_round_trip_and_checks(tmp_path):
    records = {"input": {"min": -1.0, "max": 2.0, "avg_min": -0.5, "avg_max": 1.5, "mean": 0.1, "std": 0.7,
                         "b": 0.5, "shape": "(8, 3)"}}
    path = tmp_path / "acts_quantization_stats.yaml"
    save_stats(str(path), records)
    assert load_stats(str(path)) == records
    assert match_stats(records, ["input"], set()) == records
    with pytest.raises(StatsError, match="no statistics for fc"):
        match_stats(records, ["input", "fc"], {"fc"})
    with pytest.raises(StatsError, match="statistics for conv9, which the model does not have"):
        match_stats({**records, "conv9": records["input"]}, ["input"], {"fc"})


def test_distiller_stats_file_loads(tmp_path):
    path = tmp_path / "distiller.yaml"
    path.write_text("""\
conv1:
  inputs:
    0: {min: -2.1, max: 2.6, avg_min: -2.0, avg_max: 2.5, mean: 0.0, std: 1.0, b: 0.8, shape: (256, 3, 32, 32)}
  output: {min: -5.0, max: 6.0, avg_min: -4.0, avg_max: 5.0, mean: 0.1, std: 1.2, b: 0.9, shape: (256, 16, 32, 32)}
bn1:
  output: {min: -3.0, max: 3.0, avg_min: -2.0, avg_max: 2.0, mean: 0.0, std: 1.0, b: 0.7, shape: (256, 16, 32, 32)}
""")
    records = load_stats(str(path))
    matched = match_stats(records, ["input", "conv1"], {"conv1", "bn1"})
    assert matched["input"]["max"] == 2.6 and matched["conv1"]["max"] == 6.0
