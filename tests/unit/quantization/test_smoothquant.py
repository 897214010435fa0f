"""SmoothQuant's scale migration (compressor/quantization/linear/smoothquant.py)."""

import copy

import pytest
import torch
from torchvision.models.vision_transformer import VisionTransformer

from compressor.core.errors import RangeError
from compressor.quantization.graph.capture import SelfAttention
from compressor.quantization.linear.ptq import PostTrainLinearQuantizer
from compressor.quantization.linear.smoothquant import channel_maxima, migrate, norm_linear_groups


def vit_with_outliers(seed=0):
    """A small ViT whose LayerNorms give 3 of 32 channels outputs 40x the others and whose next layers read those
    channels with 40x smaller weights, as trained ViTs do (the function is the plain random ViT's)."""
    torch.manual_seed(seed)
    model = VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                              num_classes=10).eval()
    outliers = [3, 11, 20]
    with torch.no_grad():
        for layer in model.encoder.layers:
            for norm, weight in ((layer.ln_1, layer.self_attention.in_proj_weight), (layer.ln_2, layer.mlp[0].weight)):
                norm.weight[outliers] *= 40.0
                norm.bias[outliers] *= 40.0
                weight[:, outliers] /= 40.0
        torch.nn.init.normal_(model.heads.head.weight, std=0.2)
    return model


def test_groups_are_the_layernorms_feeding_only_linears():
    model = vit_with_outliers()
    groups = dict(norm_linear_groups(model))
    assert groups == {
        "encoder.layers.encoder_layer_0.ln_1": ["encoder.layers.encoder_layer_0.self_attention.in_proj"],
        "encoder.layers.encoder_layer_0.ln_2": ["encoder.layers.encoder_layer_0.mlp.0"],
        "encoder.layers.encoder_layer_1.ln_1": ["encoder.layers.encoder_layer_1.self_attention.in_proj"],
        "encoder.layers.encoder_layer_1.ln_2": ["encoder.layers.encoder_layer_1.mlp.0"],
    }  # the final encoder.ln feeds the class-token slice, not a linear: left alone


def test_migration_keeps_the_function_and_flattens_the_activation_channels():
    model = vit_with_outliers()
    x = torch.randn(8, 3, 16, 16)
    from compressor.quantization.graph import sites

    traced = sites.trace(model)  # the MHA swapped for SelfAttention (in place), as the quantizer sees it
    assert any(isinstance(m, SelfAttention) for m in model.modules())
    before = traced(x)
    groups = norm_linear_groups(traced)
    maxima = channel_maxima(traced, [n for n, _ in groups], [(x, None)])
    report = migrate(traced, groups, maxima, lambda name: 0.5)
    torch.testing.assert_close(traced(x), before, rtol=1e-4, atol=1e-4)
    for name, r in report.items():
        assert r["act_max_ratio_before"] > 20 and r["act_max_ratio_after"] < r["act_max_ratio_before"] / 4, name


def test_smoothquant_cuts_the_w8a8_error_of_a_vit_with_outlier_channels():
    model = vit_with_outliers()
    x = torch.randn(32, 3, 16, 16)
    with torch.no_grad():
        reference = model(x)

    def error(alpha):
        q = PostTrainLinearQuantizer(copy.deepcopy(model), bits_activations=8, bits_parameters=8,
                                     per_channel_wts=True, smoothquant_alpha=alpha)
        gm = q.prepare_model()
        q.calibrate([(x, None)])
        with torch.no_grad():
            out = gm(x)
        return float((out - reference).pow(2).mean() / reference.pow(2).mean()), q

    plain, _ = error(None)
    smoothed, q = error(0.5)
    assert len(q.smoothquant) == 4
    assert smoothed < plain / 2, (plain, smoothed)  # 0.41 -> 0.17 of the output power


def test_a_layernorm_can_be_left_alone_by_override_and_stats_files_are_refused():
    model = vit_with_outliers()
    x = torch.randn(4, 3, 16, 16)
    q = PostTrainLinearQuantizer(copy.deepcopy(model), smoothquant_alpha=0.5,
                                 overrides={r".*encoder_layer_1\.ln_2": {"smoothquant_alpha": None}})
    q.prepare_model()
    q.calibrate([(x, None)])
    assert "encoder.layers.encoder_layer_1.ln_2" not in q.smoothquant and len(q.smoothquant) == 3
    stats = {"input": {"output": {"min": -1.0, "max": 1.0}}}
    with pytest.raises(RangeError, match="smoothquant_alpha needs calibration images"):
        PostTrainLinearQuantizer(copy.deepcopy(model), smoothquant_alpha=0.5,
                                 model_activation_stats=stats).prepare_model()
