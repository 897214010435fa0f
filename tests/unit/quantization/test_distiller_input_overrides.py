"""Distiller's per-layer input_overrides, quantize_inputs and inputs_quant_auto_fallback, with their effect."""

import pytest
import torch
from torch import nn

from compressor.quantization.linear.input_quant import InputOverrideError
from compressor.quantization.linear.ptq import PostTrainLinearQuantizer
from compressor.recipe.build import read_recipe


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.conv2(self.relu(self.conv1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def data():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 3, 6, 6, generator=g) * 3, 0) for _ in range(2)]


def ptq(**kwargs):
    torch.manual_seed(0)
    q = PostTrainLinearQuantizer(Net().eval(), bits_activations=4, mode="ASYMMETRIC_UNSIGNED", **kwargs)
    gm = q.prepare_model()
    q.calibrate(data())
    return q, gm


def test_model_input_takes_its_readers_output_settings_by_fallback():
    q, _ = ptq(overrides={"conv1": {"bits_activations": 8}})
    assert q.activation_quantizers["input"].bits == 8  # conv1's output settings (Distiller's fallback)
    q, _ = ptq(overrides={"conv1": {"bits_activations": 8, "input_overrides": {0: {"bits_activations": 6}}}})
    assert q.activation_quantizers["input"].bits == 6


def test_from_output_and_explicit_clip():
    q, _ = ptq(clip_acts="AVG", overrides={"conv1": {"input_overrides": {0: {"from_output": True}}}})
    x = torch.cat([b[0] for b in data()])
    lo, hi = q.ranges["input"]
    assert lo == pytest.approx(x.flatten(1).amin(1).mean().item(), rel=1e-4)  # AVG, from conv1's output settings
    q, _ = ptq(clip_acts="AVG", overrides={"conv1": {"input_overrides": {0: {"clip_acts": "NONE"}}}})
    assert q.ranges["input"][0] == pytest.approx(x.min().item(), rel=1e-5)


def test_no_fallback_is_an_error_unless_the_input_is_overridden_or_left_fp32():
    with pytest.raises(InputOverrideError, match="conv1: its input 0 .* inputs_quant_auto_fallback is false"):
        ptq(inputs_quant_auto_fallback=False)
    q, _ = ptq(inputs_quant_auto_fallback=False, overrides={"conv1": {"input_overrides": {0: {"from_output": True}}}})
    assert "input" in q.activation_quantizers
    q, _ = ptq(inputs_quant_auto_fallback=False, overrides={"conv1": {"quantize_inputs": False}})
    assert "input" not in q.activation_quantizers


def test_input_override_after_average_pooling_inserts_a_calibrated_quantizer():
    q, gm = ptq(overrides={"fc": {"clip_acts": "NONE", "input_overrides": {0: {"bits_activations": 3}}}})
    fq = q.activation_quantizers["fc#input"]
    assert fq.bits == 3
    torch.manual_seed(0)
    model = Net().eval()
    feats = torch.cat([torch.flatten(model.avgpool(model.conv2(model.relu(model.conv1(b[0])))), 1) for b in data()])
    lo, hi = q.ranges["fc#input"]
    # calibration runs with the weights already quantized (8 bit), hence the small difference to FP32 features
    assert lo == pytest.approx(feats.min().item(), rel=0.03) and hi == pytest.approx(feats.max().item(), rel=0.03)
    assert q.ranges["conv2"][1] > 2 * hi  # not the conv's output range: the pooled features
    q_plain, gm_plain = ptq()
    x = data()[0][0]
    assert not torch.allclose(gm(x), gm_plain(x))  # the fc input is now quantized to 3 bits


def test_input_override_on_an_already_quantized_input_is_refused():
    with pytest.raises(InputOverrideError, match="conv2: input 0 is already quantized"):
        ptq(overrides={"conv2": {"input_overrides": {0: {"from_output": True}}}})


def test_bad_input_overrides_are_recipe_errors(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("""\
quantizers:
  q:
    class: PostTrainLinearQuantizer
    overrides:
      fc:
        input_overrides:
          0: {clip_act: AVG}
policies:
  - quantizer: {instance_name: q}
    starting_epoch: 0
    ending_epoch: 1
""")
    with pytest.raises(Exception, match=r"r.yaml:6: .*input_overrides: input 0: unknown keys \['clip_act'\]"):
        read_recipe(str(recipe))
