"""DFQ's cross-layer equalization and high-bias absorption (compressor/quantization/graph/equalize.py)."""

import copy

import pytest
import torch
from torch import nn

from compressor.models import create_model
from compressor.quantization.graph.equalize import (
    absorb_high_bias,
    batchnorm_preactivations,
    cross_layer_equalization,
    find_pairs,
)
from compressor.quantization.graph.fold_bn import fold_batchnorm
from compressor.quantization.linear.ptq import PostTrainLinearQuantizer


def randomized_batchnorms(model, seed=0):
    """Batch-norms as training leaves them: scales and shifts that differ per channel (what makes ranges differ)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=g) * 4 + 0.1)
            m.weight.data.copy_(torch.rand(n, generator=g) ** 3 * 5 + 0.01)  # a few channels 100x the others
            m.bias.data.copy_(torch.rand(n, generator=g) * 3 - 0.5)
    return model.eval()


class DepthwiseSeparable(nn.Module):
    """conv 1x1 -> bn -> ReLU -> depthwise 3x3 -> bn -> ReLU -> conv 1x1 -> bn: MobileNet's chain with ReLU."""

    def __init__(self):
        super().__init__()
        self.expand, self.bn1, self.relu1 = nn.Conv2d(4, 16, 1), nn.BatchNorm2d(16), nn.ReLU()
        self.dw, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16)
        self.project, self.bn3 = nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8)

    def forward(self, x):
        x = self.relu1(self.bn1(self.expand(x)))
        return self.bn3(self.project(torch.relu(self.bn2(self.dw(x)))))


def per_channel_spread(layer):
    r = layer.weight.detach().abs().reshape(layer.weight.shape[0], -1).amax(dim=1)
    return float(r.max() / r.min())


def test_equalization_keeps_the_fp32_function_and_narrows_per_channel_ranges():
    torch.manual_seed(0)
    model = randomized_batchnorms(DepthwiseSeparable())
    names = {}
    folded = fold_batchnorm(model, names)
    pairs = find_pairs(folded)
    assert [(p.first, p.second, p.relu) for p in pairs] == [("expand", "dw", True), ("dw", "project", True)]
    x = torch.randn(8, 4, 10, 10)
    before = folded(x)
    spreads = {n: per_channel_spread(folded.get_submodule(n)) for n in ("expand", "dw")}
    report = cross_layer_equalization(folded, model, names, absorb_bias=False)
    torch.testing.assert_close(folded(x), before, rtol=1e-5, atol=1e-5)
    for name, spread in spreads.items():  # ranges 100x apart come within a few x
        assert per_channel_spread(folded.get_submodule(name)) < spread / 4, name
    assert report["iterations"] > 1 and report["largest_range_ratio"][1] < report["largest_range_ratio"][0]
    for p in pairs:  # converged: both sides of every pair have the same range per channel
        first, second = folded.get_submodule(p.first), folded.get_submodule(p.second)
        r1 = first.weight.abs().reshape(first.weight.shape[0], -1).amax(dim=1)
        w2 = second.weight.abs()
        r2 = w2.reshape(w2.shape[0], -1).amax(dim=1) if second.groups > 1 else w2.transpose(0, 1).reshape(
            w2.shape[1], -1).amax(dim=1)
        torch.testing.assert_close(r1, r2, rtol=1e-4, atol=1e-6)


def test_equalization_cuts_the_per_tensor_error_where_a_layer_undoes_the_previous_ones_channel_scales():
    """DFQ's case: training left channel i of the first layer small and the next layer amplifying it (a folded
    batch-norm's gamma spread 1000x, undone by the depthwise weights). Per-tensor 8-bit weights then flush the
    small channels to a few levels; equalization moves the scale into the depthwise layer, and the error falls."""
    torch.manual_seed(0)
    model = DepthwiseSeparable().eval()
    gamma = torch.logspace(-3, 0, 16)[torch.randperm(16)]
    with torch.no_grad():
        model.bn1.weight.copy_(gamma)
        model.bn1.bias.zero_()
        model.dw.weight.div_(gamma.reshape(-1, 1, 1, 1))
    x = torch.randn(16, 4, 10, 10)

    def weight_error(cle):
        q = PostTrainLinearQuantizer(copy.deepcopy(model), bits_activations=None, bits_parameters=8,
                                     per_channel_wts=False, cross_layer_equalization=cle, high_bias_absorption=False)
        gm = q.prepare_model()
        reference = fold_batchnorm(model)  # the FP32 function (equalization leaves it unchanged: tested above)
        with torch.no_grad():
            out, ref = gm(x), reference(x)
        return float((out - ref).pow(2).mean() / ref.pow(2).mean())

    plain, equalized = weight_error(False), weight_error(True)
    assert equalized < plain / 10, (plain, equalized)


def test_high_bias_absorption_narrows_relu_ranges_and_keeps_the_output_on_matching_data():
    """Channels whose pre-activation stays above 0 (BN output mean 3, std 0.5): their ReLU output loses the constant
    part, the next layer's bias takes it; on inputs that follow the batch-norm statistics the output is unchanged
    except at the border, where the depthwise conv's zero padding does not see the moved constant (as in DFQ)."""
    torch.manual_seed(0)
    model = DepthwiseSeparable().eval()
    x = torch.randn(64, 4, 12, 12)
    with torch.no_grad():
        pre = model.expand(x)
        model.bn1.running_mean.copy_(pre.mean(dim=(0, 2, 3)))
        model.bn1.running_var.copy_(pre.var(dim=(0, 2, 3)))
        model.bn1.bias.fill_(3.0)
        model.bn1.weight.fill_(0.5)
    names = {}
    folded = fold_batchnorm(model, names)
    with torch.no_grad():
        before_out = folded(x)
        before_relu = folded.relu1(folded.expand(x))
        stats = batchnorm_preactivations(model, names)
        absorbed = absorb_high_bias(folded, find_pairs(folded), stats, n_std=5.0)  # x < c: p = 3e-7
        after_relu = folded.relu1(folded.expand(x))
        after_out = folded(x)
    assert absorbed == {"expand": 16}  # every channel: c = 3 - 5 * 0.5 = 0.5 > 0; dw's BN: mean 0, nothing
    torch.testing.assert_close(after_relu, (before_relu - 0.5).clamp_min(0), rtol=1e-4, atol=1e-4)
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    torch.testing.assert_close(after_out[inner], before_out[inner], rtol=1e-3, atol=1e-3)
    assert not torch.allclose(after_out, before_out, atol=1e-3)  # the border moved: padding, as the docstring says


def test_relu6_pairs_are_skipped_when_asked_and_the_model_stays_exact():
    model = randomized_batchnorms(create_model("mobilenet_v2_cifar", "cifar10"))
    names = {}
    folded = fold_batchnorm(model, names)
    x = torch.randn(2, 3, 32, 32)
    before = folded(x)
    report = cross_layer_equalization(folded, model, names, relu6="skip")
    assert report["relu6_replaced"] == [] and all(p["relu6"] is None for p in report["pairs"])
    assert any(isinstance(m, nn.ReLU6) for m in folded.modules())
    torch.testing.assert_close(folded(x), before, rtol=1e-4, atol=1e-4)


def test_recipe_needs_fold_bn():
    from compressor.core.errors import RecipeError
    from compressor.recipe.build import read_recipe

    text = ("quantizers:\n  q:\n    class: PostTrainLinearQuantizer\n    cross_layer_equalization: true\n"
            "    fold_bn: false\n")
    with pytest.raises(RecipeError, match="r.yaml:4: quantizers.q.cross_layer_equalization: needs fold_bn: true"):
        read_recipe(text, file="r.yaml")
