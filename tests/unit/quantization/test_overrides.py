import logging

import torch
from torch import nn

from compressor.models import create_model
from compressor.quantization.linear.qat import QuantAwareTrainRangeLinearQuantizer
from compressor.quantization.overrides import OverrideTable


def test_exact_name_beats_earlier_regex():
    table = OverrideTable({"layer1.*": {"bits_weights": 4}, "layer1.0.conv1": {"bits_weights": 6}})
    assert table.lookup("layer1.0.conv1") == {"bits_weights": 6}
    assert table.lookup("layer1.0.conv2") == {"bits_weights": 4}


def test_first_regex_in_file_order_wins_and_full_match_only():
    table = OverrideTable({"layer1\\..*conv.*": {"bits_weights": 2}, "layer.*": {"bits_weights": 5}})
    assert table.lookup("layer1.0.conv1") == {"bits_weights": 2}
    assert table.lookup("layer2.0.conv1") == {"bits_weights": 5}
    assert table.lookup("xlayer1.0.conv1") == {}  # full match: no prefix search
    assert OverrideTable({"conv": {}}).match("conv1") is None


def test_parallel_prefix_is_stripped():
    table = OverrideTable({"fc": {"bits_weights": 8}})
    assert table.lookup("module.fc") == {"bits_weights": 8}


def _quantizer(overrides, **kw):
    model = create_model("resnet20_cifar", "digits")
    q = QuantAwareTrainRangeLinearQuantizer(model, None, bits_weights=4, bits_activations=4,
                                            overrides=overrides, **kw)
    q.prepare_model()
    return q


def test_overrides_set_bits_per_layer_and_activation_chain():
    q = _quantizer({"conv1": {"bits_weights": 8, "bits_activations": 8},
                    "fc": {"bits_weights": None, "bits_activations": None},
                    "layer3\\..*": {"bits_weights": 2}})
    assert q.weight_quantizers["conv1.weight"].bits == 8
    assert "fc.weight" not in q.weight_quantizers
    assert q.weight_quantizers["layer3.0.conv1.weight"].bits == 2
    assert q.weight_quantizers["layer2.0.conv1.weight"].bits == 4
    # the conv1->bn1->relu chain falls back to its head's override; fc's logits stay FP32
    assert q.activation_quantizers["relu"].bits == 8
    assert "fc" not in q.activation_quantizers
    assert q.activation_quantizers["layer1.0.relu1"].bits == 4


def test_tail_name_override_wins_over_head():
    q = _quantizer({"conv1": {"bits_activations": 8}, "relu": {"bits_activations": None}})
    assert "relu" not in q.activation_quantizers


def test_unmatched_override_warns(caplog):
    with caplog.at_level(logging.WARNING):
        _quantizer({"final_relu": {"bits_activations": None}})
    assert "final_relu" in caplog.text and "matches no module" in caplog.text


def test_null_bits_default_leaves_model_fp32():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    q = QuantAwareTrainRangeLinearQuantizer(model, None)  # Distiller's defaults: 32 bits = not quantized
    gm = q.prepare_model()
    assert not q.weight_quantizers and not q.activation_quantizers
    x = torch.randn(2, 4)
    assert torch.equal(gm(x), model(x))
