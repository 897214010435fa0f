"""Bugs found by porting Distiller's tests: dynamic quantization ignored clip methods (b); range
functions accepted min > max and n_stds = 0 (c). Bug (a) is in test_distiller_stats.py."""

import argparse

import pytest
import torch
from torch import nn

from compressor.app.qe_args import add_qe_arguments, qe_config
from compressor.calibration.clipping import compute_range
from compressor.core.errors import CompressorError, RangeError, StatsError
from compressor.quantization.linear.ptq import PostTrainLinearQuantizer


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 8)

    def forward(self, x):
        return self.fc(x)


def batch():
    torch.manual_seed(0)
    x = torch.randn(6, 16)
    x[0, 0] = 30.0  # one outlier sample: AVG and N_STD clip it, NONE does not
    return x


@pytest.mark.parametrize("clip", ["AVG", "N_STD", "LAPLACE"])
def test_dynamic_quantization_applies_the_clip_method(clip):
    """Distiller's dynamic mode clips each batch's range: AVG averages per-sample extremes."""
    torch.manual_seed(0)
    x = batch()
    # the model input is unclipped unless an override names its clip method (issue 9's defaults)
    q = PostTrainLinearQuantizer(Linear().eval(), bits_activations=8, clip_n_stds=2.0, mode="ASYMMETRIC_UNSIGNED",
                                 overrides={"input": {"clip_acts": clip}})
    gm = q.prepare_model()
    gm(x)
    fq = q.activation_quantizers["input"]
    lo, hi = fq.range
    if clip == "AVG":
        assert lo == pytest.approx(x.amin(1).mean().item(), rel=1e-5)
        assert hi == pytest.approx(x.amax(1).mean().item(), rel=1e-5)
    elif clip == "N_STD":
        assert hi == pytest.approx((x.mean() + 2 * x.std(unbiased=False)).item(), rel=1e-4)
    assert hi < 29.0  # clipped below the outlier, which NONE would keep

    q_none = PostTrainLinearQuantizer(Linear().eval(), bits_activations=8, mode="ASYMMETRIC_UNSIGNED")
    q_none.prepare_model()(x)
    assert q_none.activation_quantizers["input"].range[1] == pytest.approx(30.0)


def test_dynamic_quantization_refuses_histogram_methods():
    q = PostTrainLinearQuantizer(Linear().eval(), bits_activations=8, overrides={"input": {"clip_acts": "KL"}})
    gm = q.prepare_model()
    with pytest.raises(RangeError, match="dynamic quantization.*KL needs a histogram"):
        gm(batch())


def parse(*argv):
    p = argparse.ArgumentParser()
    add_qe_arguments(p, with_switch=False)  # --qe is accepted there too
    return p.parse_args(list(argv))


def test_qe_dynamic_with_histogram_clip_is_refused_by_the_flags():
    with pytest.raises(CompressorError, match="--qe-clip-acts kl.*--qe-dynamic"):
        qe_config(parse("--qe-dynamic", "--qe-clip-acts", "kl"))
    assert qe_config(parse("--qe-dynamic", "--qe-clip-acts", "avg"))["clip_acts"] == "AVG"


RECORD = {"min": -1.0, "max": 2.0, "avg_min": -0.5, "avg_max": 1.5, "mean": 0.1, "std": 0.5, "b": 0.4}


@pytest.mark.parametrize("method", ["NONE", "AVG", "N_STD", "GAUSS", "LAPLACE"])
def test_range_functions_refuse_min_above_max(method):
    bad = {**RECORD, "min": 3.0}
    with pytest.raises(ValueError, match="min 3.0 is above max 2.0"):
        compute_range(method, bad, 8, n_stds=2)


def test_avg_refuses_inverted_averages():
    with pytest.raises(RangeError, match="avg_min 2.0 is above avg_max 1.5"):
        compute_range("AVG", {**RECORD, "avg_min": 2.0}, 8)


@pytest.mark.parametrize("n_stds", [0, -1.0])
def test_n_std_refuses_non_positive_n_stds(n_stds, capsys):
    with pytest.raises(ValueError, match=f"clip_n_stds must be > 0, got {n_stds}"):
        compute_range("N_STD", RECORD, 8, n_stds=n_stds)
    with pytest.raises(SystemExit) as exit_info:  # refused where the flag is parsed (usage error, exit 2)
        parse("--qe-clip-acts", "n_std", "--qe-clip-n-stds", str(n_stds))
    assert exit_info.value.code == 2 and "--qe-clip-n-stds expects a number > 0" in capsys.readouterr().err


def test_stats_with_min_above_max_name_the_site():
    stats = {"fc": {"inputs": {0: RECORD}, "output": {**RECORD, "min": 5.0}}}
    # the statistics file is validated first (file, layer, key, what was expected)
    with pytest.raises(StatsError, match=r"fc.output.min: min \(5.0\) is greater than max \(2.0\)"):
        PostTrainLinearQuantizer(Linear().eval(), model_activation_stats=stats).prepare_model()


def test_a_data_parallel_model_is_prepared_by_every_linear_quantizer():
    # Distiller's tests wrap models in nn.DataParallel; its scatter/gather forward stopped torch.fx (TraceError)
    from compressor.models import create_model
    from compressor.quantization.linear.ptq import PostTrainLinearQuantizer
    from compressor.quantization.linear.qat import QuantAwareTrainRangeLinearQuantizer

    x = torch.randn(4, 1, 8, 8)
    for cls, args in ((QuantAwareTrainRangeLinearQuantizer, {"bits_weights": 8}),
                      (PostTrainLinearQuantizer, {"bits_parameters": 8})):
        torch.manual_seed(0)
        wrapped = torch.nn.DataParallel(create_model("simplenet_digits", "digits"))
        quantizer = cls(wrapped, None, bits_activations=8, **args)
        prepared = quantizer.prepare_model()
        assert sorted(quantizer.weight_quantizers) == ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]
        assert prepared(x).shape == (4, 10)


def test_layer_quant_params_hold_the_weight_scales_before_any_forward_pass():
    # with --qe-dynamic the file is written before the first batch: every weight scale read 1.0, zero point 0
    from compressor.models import create_model
    from compressor.quantization.linear.ptq import PostTrainLinearQuantizer

    torch.manual_seed(0)
    model = create_model("simplenet_digits", "digits")
    quantizer = PostTrainLinearQuantizer(model, bits_activations=8, bits_parameters=8, per_channel_wts=True)
    quantizer.prepare_model()
    params = quantizer.layer_params()
    for layer in ("conv1", "conv2", "fc1", "fc2"):
        weight = quantizer.prepared.get_submodule(layer).parametrizations.weight.original
        expected = weight.detach().abs().flatten(1).amax(1) / 127.5
        assert params[layer]["weight_scale"] == pytest.approx(expected.tolist(), rel=0.02)
