"""Distiller's statistics files: batch-norm folding takes the BN's record, per-use ReLU names, module adds."""

import copy
import random

import pytest
import torch
from torch import nn

from compressor.calibration.module_stats import collect_module_stats
from compressor.calibration.stats_names import aliases, per_use_name
from compressor.core.errors import StatsError
from compressor.quantization.linear.ptq import PostTrainLinearQuantizer


def gen_entry(rng):
    a, b = sorted(rng.uniform(-10, 10) for _ in range(2))
    c, d = sorted(rng.uniform(a, b) for _ in range(2))
    return {"min": a, "max": b, "avg_min": c, "avg_max": d, "mean": (c + d) / 2, "std": rng.random(), "b": 0.5}


def gen_stats_for_model(model, seed=0):
    """Distiller's test helper, in spirit: a random record per leaf module, each input the previous output."""
    rng, stats, last = random.Random(seed), {}, None
    for name, m in model.named_modules():
        if list(m.children()):
            continue
        stats[name] = {"inputs": {0: copy.deepcopy(last["output"]) if last else gen_entry(rng)},
                       "output": gen_entry(rng)}
        last = stats[name]
    return stats


class ConvBnPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(10, 20, 3)
        self.bn = nn.BatchNorm2d(20)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        return self.pool(self.bn(self.conv(x)))


def test_folded_conv_takes_the_batchnorms_output_record():
    """Distiller's test_stats_fusion_just_bn: after folding, conv's output range is BN's output record."""
    model = ConvBnPool().eval()
    stats = gen_stats_for_model(model)
    q = PostTrainLinearQuantizer(model, bits_activations=8, mode="ASYMMETRIC_UNSIGNED",
                                 model_activation_stats=copy.deepcopy(stats))
    q.prepare_model()
    assert isinstance(q.model.bn, nn.Identity)
    assert q.ranges["conv"] == pytest.approx((stats["bn"]["output"]["min"], stats["bn"]["output"]["max"]))
    assert q.ranges["conv"] != pytest.approx((stats["conv"]["output"]["min"], stats["conv"]["output"]["max"]))
    assert q.ranges["input"] == pytest.approx((stats["conv"]["inputs"][0]["min"], stats["conv"]["inputs"][0]["max"]))


def test_unfolded_model_keeps_the_conv_record_for_its_own_site():
    model = ConvBnPool().eval()
    stats = gen_stats_for_model(model)
    q = PostTrainLinearQuantizer(model, bits_activations=8, fold_bn=False, model_activation_stats=stats)
    q.prepare_model()
    assert q.ranges["bn"] == pytest.approx((stats["bn"]["output"]["min"], stats["bn"]["output"]["max"]))


def test_distiller_per_module_file_quantizes_like_our_own_calibration():
    """A file collected Distiller's way (every module, unfolded) gives each site the range our calibration finds."""
    torch.manual_seed(0)
    model = ConvBnPool().eval()
    model.bn.running_mean.uniform_(-2, 2)
    model.bn.running_var.uniform_(0.1, 3)
    data = [(torch.randn(8, 10, 12, 12), 0) for _ in range(3)]
    distiller_file = collect_module_stats(model, data)
    q_file = PostTrainLinearQuantizer(model, bits_activations=4, model_activation_stats=distiller_file)
    q_file.prepare_model()
    q_cal = PostTrainLinearQuantizer(model, bits_activations=4)
    q_cal.prepare_model()
    q_cal.calibrate(data)
    assert q_file.ranges["conv"] == pytest.approx(q_cal.ranges["conv"], rel=2e-3)  # folding rounds differently


def test_per_use_names():
    assert per_use_name("layer1.0.relu") == "layer1.0.relu1"
    assert per_use_name("layer1.0.relu@1") == "layer1.0.relu2"
    assert per_use_name("layer1.0.relu@2") == "layer1.0.relu3"
    assert aliases("layer1.0.iadd", module_names=set()) == ["layer1.0.add"]
    assert aliases("layer1.0.relu@1", module_names={"layer1.0.relu"}) == ["layer1.0.relu2"]


class Block(nn.Module):
    """torchvision's BasicBlock shape: one ReLU used twice, the residual added with ``+=``."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


class DistillerBlock(Block):
    """Distiller's variant of the same block: one ReLU module per use, the add a module."""

    def __init__(self):
        super().__init__()
        del self.relu
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
        self.add = Add()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(self.add(out, x))


class Add(nn.Module):
    def forward(self, a, b):
        return a + b


def two_blocks(cls):
    torch.manual_seed(0)
    model = nn.Sequential(cls(), cls()).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    return model


def test_stats_of_distillers_block_load_for_the_torchvision_block():
    """relu1/relu2/add records (Distiller's module names) fit relu, relu@1 and the functional add."""
    distiller_model = two_blocks(DistillerBlock)
    data = [(torch.randn(4, 4, 6, 6), 0) for _ in range(2)]
    stats = collect_module_stats(distiller_model, data)
    assert {"0.relu1", "0.relu2", "0.add"} <= set(stats)
    model = two_blocks(Block)
    model.load_state_dict(distiller_model.state_dict())
    q = PostTrainLinearQuantizer(model, bits_activations=8, model_activation_stats=stats)
    q.prepare_model()
    relu2 = stats["0.relu2"]["output"]
    assert q.ranges["0.relu@1"] == pytest.approx((relu2["min"], relu2["max"]))
    assert q.ranges["0.relu"] == pytest.approx((stats["0.relu1"]["output"]["min"], stats["0.relu1"]["output"]["max"]))
    assert q.ranges["0.conv2"] == pytest.approx((stats["0.bn2"]["output"]["min"], stats["0.bn2"]["output"]["max"]))
    q_cal = PostTrainLinearQuantizer(model, bits_activations=8)
    q_cal.prepare_model()
    q_cal.calibrate(data)
    for site, rng in q_cal.ranges.items():
        assert q.ranges[site] == pytest.approx(rng, rel=2e-3, abs=1e-5), site


def test_a_file_for_another_model_is_still_refused():
    stats = collect_module_stats(two_blocks(DistillerBlock), [(torch.randn(2, 4, 6, 6), 0)])
    stats["0.relu3"] = stats["0.relu2"]  # a Bottleneck's third ReLU: not in this model
    del stats["1.relu2"]
    with pytest.raises(StatsError) as err:
        PostTrainLinearQuantizer(two_blocks(Block), model_activation_stats=stats).prepare_model()
    assert "no statistics for 1.relu@1" in str(err.value)
    assert "statistics for 0.relu3, which the model does not have" in str(err.value)


class ConvBnFunctionalRelu(ConvBnPool):
    """Distiller's ConvBnActPool('relu', act_as_module=False): the ReLU is F.relu, so its file has no record."""

    def forward(self, x):
        return self.pool(torch.nn.functional.relu(self.bn(self.conv(x))))


@pytest.mark.parametrize(
    "bn_out, expected",
    [
        ((-5.0, 5.0, -3.0, 3.0), (0.0, 5.0, 0.0, 3.0)),
        ((1.0, 5.0, 2.0, 3.0), (1.0, 5.0, 2.0, 3.0)),
        ((-5.0, -1.0, -4.0, -2.0), (0.0, 0.0, 0.0, 0.0)),
    ],
    ids=["relu_pos_neg", "relu_all_pos", "relu_all_neg"],
)
def test_functional_relu_takes_the_batchnorms_record_clipped_at_zero(bn_out, expected):
    """Distiller's test_stats_fusion_sequential: conv->bn->F.relu gets BN's output record with min, max,
    avg_min and avg_max clipped at 0 (min/max with no clipping, avg_min/avg_max with AVG)."""
    model = ConvBnFunctionalRelu().eval()
    stats = gen_stats_for_model(model)
    assert "relu" not in stats
    stats["bn"]["output"] = dict(zip(("min", "max", "avg_min", "avg_max"), bn_out), mean=0.0, std=0.5)
    for clip, picked in (("NONE", expected[:2]), ("AVG", expected[2:])):
        q = PostTrainLinearQuantizer(model, bits_activations=8, clip_acts=clip,
                                     model_activation_stats=copy.deepcopy(stats))
        q.prepare_model()
        assert q.ranges["relu"] == pytest.approx(picked), clip


def test_our_own_module_stats_file_for_a_functional_relu_quantizes_like_calibration():
    """The file collect_module_stats writes for conv->bn->F.relu (no ReLU record) gives calibration's range."""
    torch.manual_seed(0)
    model = ConvBnFunctionalRelu().eval()
    model.bn.running_mean.uniform_(-2, 2)
    data = [(torch.randn(8, 10, 12, 12), 0) for _ in range(3)]
    stats = collect_module_stats(model, data)
    assert "relu" not in stats
    q_file = PostTrainLinearQuantizer(model, bits_activations=8, model_activation_stats=stats)
    q_file.prepare_model()
    q_cal = PostTrainLinearQuantizer(model, bits_activations=8)
    q_cal.prepare_model()
    q_cal.calibrate(data)
    assert q_cal.ranges["relu"][0] == 0.0
    assert q_file.ranges["relu"] == pytest.approx(q_cal.ranges["relu"], rel=2e-3)
