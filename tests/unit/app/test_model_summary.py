"""--summary compute: MACs from torch.utils.flop_counter, bits read from the quantized model, BOPs."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from compressor.app.classifier import main as classifier
from compressor.app.summary import compute_summary
from compressor.models import create_model
from compressor.recipe.build import build_scheduler, read_recipe

MIXED = """
quantizers:
  q:
    class: QuantAwareTrainRangeLinearQuantizer
    bits_activations: 4
    bits_weights: 4
    mode: ASYMMETRIC_UNSIGNED
    num_bits_inputs: 8
    overrides:
      conv1: {bits_weights: 8, bits_activations: 8}
      fc: {bits_weights: 8, bits_activations: 8}
policies:
  - quantizer: {instance_name: q}
    starting_epoch: 0
    ending_epoch: 10
    frequency: 1
"""


def test_resnet20_macs_match_flop_counter():
    model = create_model("resnet20_cifar", "cifar10").eval()
    x = torch.randn(1, 3, 32, 32)
    with FlopCounterMode(display=False) as counter:
        model(x)
    summary = compute_summary(model, x)
    assert summary["totals"]["macs"] * 2 == counter.get_total_flops() == 81_626_368
    rows = {r["name"]: r for r in summary["layers"]}
    assert len(rows) == 22  # 19 3x3 convs, 2 downsampling 1x1 convs, fc
    assert rows["conv1"]["macs"] == 16 * 32 * 32 * 3 * 3 * 3  # out channels x output pixels x kernel volume
    assert rows["layer2.0.downsample.0"]["macs"] == 32 * 16 * 16 * 16
    assert rows["fc"]["macs"] == 64 * 10
    assert summary["totals"]["params"] == sum(p.numel() for n, p in model.named_parameters() if "bn" not in n
                                              and "downsample.1" not in n)
    fp32 = summary["totals"]
    assert fp32["bops"] == fp32["macs"] * 32 * 32 and fp32["vs_fp32"]["bops"] == 1.0
    assert fp32["weight_bytes"] == fp32["params"] * 4


def test_bops_of_a_mixed_precision_recipe(tmp_path):
    recipe = tmp_path / "mixed.yaml"
    recipe.write_text(MIXED)
    model = create_model("resnet20_cifar", "cifar10")
    scheduler = build_scheduler(read_recipe(str(recipe)), model, torch.optim.SGD(model.parameters(), lr=0.1))
    summary = compute_summary(scheduler.model, torch.randn(1, 3, 32, 32))
    rows = {r["name"]: r for r in summary["layers"]}
    # conv1: 8-bit weights, reads the 8-bit quantized input
    assert (rows["conv1"]["w_bits"], rows["conv1"]["a_bits"]) == (8, 8)
    assert rows["conv1"]["bops"] == 442_368 * 8 * 8
    # layer1.0.conv1 reads conv1's ReLU output, overridden to 8 bits; its own weights are 4-bit
    assert (rows["layer1.0.conv1"]["w_bits"], rows["layer1.0.conv1"]["a_bits"]) == (4, 8)
    assert (rows["layer3.2.conv2"]["w_bits"], rows["layer3.2.conv2"]["a_bits"]) == (4, 4)
    # fc: 8-bit weights; its input is the average pool of 4-bit values, which this quantizer leaves in float
    assert (rows["fc"]["w_bits"], rows["fc"]["a_bits"]) == (8, 32)
    others = 40_813_184 - 442_368 - 2_359_296 - 640
    expected = 442_368 * 64 + 2_359_296 * 32 + others * 16 + 640 * 8 * 32
    assert summary["totals"]["bops"] == expected == 712_146_944
    assert summary["totals"]["vs_fp32"]["bops"] == pytest.approx(expected / (40_813_184 * 1024))
    assert rows["conv1"]["weight_bytes"] == 432 * 8 / 8  # no bias
    assert rows["layer1.0.conv1"]["activation_bytes"] == 16 * 32 * 32 * 8 / 8


def test_summary_flag_prints_the_compute_table(tmp_path, capsys, root):
    assert classifier(["-a", "resnet20_cifar", "--dataset", "digits", "--summary", "compute", "-o", str(tmp_path),
                       "--compress", f"{root}/schedules/quant_aware_train_4bit_first_last_8bit.yaml"]) == 0
    out = capsys.readouterr().out
    assert "BOPs" in out and "vs FP32: BOPs x0.0170 (58.7x fewer)" in out
    assert "40,813,184" in out


def test_low_bit_activations_count(root):
    """DoReFa's activation modules replace the ReLUs; the layers reading them count at their 4 bits."""
    model = create_model("resnet20_cifar", "cifar10")
    recipe = read_recipe(f"{root}/schedules/quant_aware_train/resnet20_cifar_dorefa_w4a4.yaml")
    scheduler = build_scheduler(recipe, model, torch.optim.SGD(model.parameters(), lr=0.1))
    rows = {r["name"]: r for r in compute_summary(scheduler.model, torch.randn(1, 3, 32, 32))["layers"]}
    assert (rows["conv1"]["w_bits"], rows["conv1"]["a_bits"]) == (8, 32)  # the image itself is not quantized
    assert (rows["layer1.0.conv1"]["w_bits"], rows["layer1.0.conv1"]["a_bits"]) == (4, 8)  # conv1's ReLU: 8
    assert (rows["layer2.1.conv2"]["w_bits"], rows["layer2.1.conv2"]["a_bits"]) == (4, 4)
