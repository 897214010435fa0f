import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compressor.core.errors import StatsError
from compressor.quantization.linear.ptq import PostTrainLinearQuantizer


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 5)

    def forward(self, x):
        a = F.relu(self.bn1(self.conv1(x)))
        b = self.conv2(a)
        return self.fc(torch.cat([a + b, b], 1).flatten(1))


def record(lo, hi):
    return {"output": record_only(lo, hi)}


def record_only(lo, hi):
    return {"min": lo, "max": hi, "avg_min": lo / 2, "avg_max": hi / 2, "mean": 0.0, "std": 1.0, "b": 0.5,
            "shape": "(1,)"}


class Images(torch.utils.data.Dataset):
    def __init__(self, n=32):
        self.n, self.reads = n, 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.reads += 1
        g = torch.Generator().manual_seed(i)
        return torch.randn(3, 4, 4, generator=g), 0


def net():
    torch.manual_seed(0)
    model = Net().eval()
    model.bn1.running_mean.uniform_(-0.5, 0.5)
    return model


def test_stats_give_distiller_scale_and_zero_point():
    stats = {name: record(-2.0, 10.0) for name in ["input", "relu", "conv2", "add", "cat", "fc"]}
    q = PostTrainLinearQuantizer(net(), bits_activations=8, bits_parameters=8, mode="ASYMMETRIC_UNSIGNED",
                                 model_activation_stats=stats)
    q.prepare_model()
    fq = q.activation_quantizers["add"]
    assert 1 / fq.scale.item() == pytest.approx(21.25) and fq.zero_point.item() == 42
    assert not fq.dynamic and q.ranges["add"] == (-2.0, 10.0)
    q2 = PostTrainLinearQuantizer(net(), model_activation_stats=stats, clip_acts="AVG",
                                  overrides={"fc": {"clip_acts": "NONE"}})
    q2.prepare_model()
    assert q2.ranges["add"] == (-1.0, 5.0) and q2.ranges["fc"] == (-2.0, 10.0)


def test_stats_file_format_is_checked():
    with pytest.raises(StatsError, match="relu: expected {inputs"):
        PostTrainLinearQuantizer(net(), model_activation_stats={"relu": record_only(0, 1)}).prepare_model()


def test_stats_naming_a_missing_site_is_an_error():
    stats = {name: record(-1.0, 1.0) for name in ["input", "relu", "conv2", "add", "fc"]}  # no 'cat'
    with pytest.raises(StatsError, match="no statistics for cat"):
        PostTrainLinearQuantizer(net(), model_activation_stats=stats).prepare_model()


def test_dynamic_ranges_cover_adds_and_concats():
    model = net()
    q = PostTrainLinearQuantizer(model, bits_activations=4, bits_parameters=8)
    gm = q.prepare_model()
    assert {"add", "cat"} <= set(q.activation_quantizers)
    x = torch.randn(2, 3, 4, 4)
    gm(x)
    first = q.activation_quantizers["cat"].scale.clone()
    gm(x * 3)
    assert not torch.equal(first, q.activation_quantizers["cat"].scale)  # each batch its own range
    assert (gm(x) - model(x)).abs().max() > 0


def test_bn_folded_and_null_bits_keep_fp32():
    q = PostTrainLinearQuantizer(net(), overrides={"conv2": {"bits_activations": None, "bits_weights": None}})
    q.prepare_model()
    assert isinstance(q.model.bn1, nn.Identity)
    assert "conv2" not in q.activation_quantizers and "conv2.weight" not in q.weight_quantizers
    assert "conv1.weight" in q.weight_quantizers and q.activation_quantizers["relu"].bits == 8
    assert q.layer_params()["conv2"] == {"bits_weights": None}  # listed, as FP32


@pytest.mark.parametrize("clip, passes", [("AVG", 1), ("LAPLACE", 1), ("KL", 1), ("MSE", 1)])
def test_calibration_passes(clip, passes):
    data = Images()
    q = PostTrainLinearQuantizer(net(), clip_acts=clip, bits_activations=6)
    gm = q.prepare_model()
    q.calibrate(torch.utils.data.DataLoader(data, batch_size=8))
    assert data.reads == 32 * passes
    assert all(not fq.dynamic for fq in q.activation_quantizers.values())
    assert torch.isfinite(gm(torch.randn(2, 3, 4, 4))).all()


def test_calibrated_int8_is_close_to_fp32():
    model = net()
    q = PostTrainLinearQuantizer(model, per_channel_wts=True, mode="ASYMMETRIC_UNSIGNED")
    gm = q.prepare_model()
    q.calibrate(torch.utils.data.DataLoader(Images(64), batch_size=16))
    x = torch.stack([Images()[i][0] for i in range(8)])
    ref, out = model(x), gm(x)
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


def test_accumulator_analysis_warns(caplog):
    with caplog.at_level(logging.WARNING):
        q = PostTrainLinearQuantizer(net(), bits_accum=16)
        q.prepare_model()
    rows = {name: (needed, accum) for name, needed, accum in q.accumulator_rows}
    assert rows["conv2"] == (8 + 8 + 7, 16)  # 2n + ceil(log2(8 * 3 * 3))
    assert "accumulator of conv2 needs 23 bits" in caplog.text


def test_quantized_state_reloads_into_a_fresh_quantizer():
    model = net()
    q = PostTrainLinearQuantizer(model, clip_acts="AVG")
    gm = q.prepare_model()
    q.calibrate(torch.utils.data.DataLoader(Images(), batch_size=8))
    q2 = PostTrainLinearQuantizer(net(), clip_acts="AVG")
    gm2 = q2.prepare_model()  # dynamic until the state arrives
    gm2.load_state_dict(gm.state_dict())
    q2.load_state_dict(q.state_dict())
    x = torch.randn(4, 3, 4, 4)
    assert torch.equal(gm(x), gm2(x))
    with pytest.raises(ValueError, match="clip_acts"):
        PostTrainLinearQuantizer(net(), clip_acts="KL").load_state_dict(q.state_dict())


def _avg_ranges(**kwargs):
    stats = {name: record(-2.0, 10.0) for name in ["input", "relu", "conv2", "add", "cat", "fc"]}
    q = PostTrainLinearQuantizer(net(), model_activation_stats=stats, clip_acts="AVG", **kwargs)
    q.prepare_model()
    return q.ranges


def test_input_and_logits_are_not_clipped_by_default():
    ranges = _avg_ranges()
    assert ranges["add"] == (-1.0, 5.0) and ranges["relu"] == (-1.0, 5.0)  # AVG: the averaged extremes
    assert ranges["input"] == (-2.0, 10.0) and ranges["fc"] == (-2.0, 10.0)  # observed min/max
    # an override that does not name clip_acts leaves the default alone
    assert _avg_ranges(overrides={"fc": {"bits_weights": 8}})["fc"] == (-2.0, 10.0)


def test_a_recipe_override_still_clips_input_and_logits():
    ranges = _avg_ranges(overrides={"input": {"clip_acts": "AVG"}, "fc": {"clip_acts": "AVG"}})
    assert ranges["input"] == (-1.0, 5.0) and ranges["fc"] == (-1.0, 5.0)
    own = {"clip_keep_avg_from_bits": None}
    ranges = _avg_ranges(overrides={"f.*": {"clip_acts": "N_STD", "clip_n_stds": 2.0, **own}})
    assert ranges["fc"] == (-2.0, 2.0)  # regexes too


def test_clipped_ranges_keep_the_averaged_extremes_unless_asked():
    # N_STD with 1 std gives [-1, 1]; the averaged per-sample extremes are [-1, 5]
    ranges = _avg_ranges(overrides={"add": {"clip_acts": "N_STD", "clip_n_stds": 1.0}})
    assert ranges["add"] == (-1.0, 5.0)
    ranges = _avg_ranges(overrides={"add": {"clip_acts": "N_STD", "clip_n_stds": 1.0,
                                        "clip_keep_avg_from_bits": None}})
    assert ranges["add"] == (-1.0, 1.0)
    ranges = _avg_ranges(clip_keep_avg_from_bits=None)
    assert ranges["relu"] == (-1.0, 5.0) and ranges["fc"] == (-2.0, 10.0)  # AVG itself, NONE at the logits
    # below clip_keep_avg_from_bits (default 8) each method keeps its own range
    ranges = _avg_ranges(bits_activations=6, overrides={"add": {"clip_acts": "N_STD", "clip_n_stds": 1.0}})
    assert ranges["add"] == (-1.0, 1.0)


class Reshaped(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 6)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x))).view(-1, 2, 3)


def test_logits_reached_through_a_reshape_are_the_boundary():
    torch.manual_seed(0)
    q = PostTrainLinearQuantizer(Reshaped().eval(), clip_acts="AVG")
    q.prepare_model()
    clips = {name: cfg["clip_acts"] for name, cfg in q.site_config.items()}
    assert clips == {"input": "NONE", "relu": "AVG", "fc2": "NONE"}
