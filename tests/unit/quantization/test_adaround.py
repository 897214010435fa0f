import torch
from torch import nn

from compressor.core.errors import RecipeError
from compressor.quantization.linear.adaround import (
    adaround_layer,
    annealed_beta,
    initial_logits,
    nearest_integers,
    reconstruction_error,
    rectified_sigmoid,
    rounding_regularizer,
)
from compressor.quantization.linear.ptq import PostTrainLinearQuantizer
from compressor.quantization.linear.refine import (
    calibration_images,
    capture,
    lockstep,
    mean_output_shift,
    original_parameters,
    refine,
    refined_layers,
)
from compressor.recipe.build import read_recipe


def test_rectified_sigmoid_and_regularizer():
    v = torch.tensor([-100.0, 0.0, 100.0])
    assert rectified_sigmoid(v).tolist() == [0.0, 0.5, 1.0]  # reaches 0 and 1 exactly
    rest = torch.tensor([0.1, 0.5, 0.9])
    assert torch.allclose(rectified_sigmoid(initial_logits(rest)), rest, atol=1e-5)
    assert rounding_regularizer(torch.tensor([0.0, 1.0]), 2.0).item() == 0.0
    assert rounding_regularizer(torch.tensor([0.5]), 20.0).item() == 1.0
    assert annealed_beta(0, 100, 0.2, 20, 2) == 20 and annealed_beta(19, 100, 0.2, 20, 2) == 20
    assert annealed_beta(60, 100, 0.2, 20, 2) == 11 and annealed_beta(100, 100, 0.2, 20, 2) == 2


def _fixed_conv_example(bits=3):
    """A conv layer on spatially smooth inputs with correlated channels (as real feature maps are):
    on white inputs round-to-nearest is already optimal, the gain of AdaRound comes from correlations."""
    torch.manual_seed(0)
    layer = nn.Conv2d(8, 16, 3, padding=1)
    base = nn.functional.avg_pool2d(torch.randn(128, 3, 6, 6), 3, stride=1, padding=1, count_include_pad=False)
    x = torch.einsum("nchw,dc->ndhw", base, torch.randn(8, 3)) + 0.1 * torch.randn(128, 8, 6, 6)
    target = layer(x).detach()
    w = layer.weight.detach()
    n = (2**bits - 1) / 2
    scale = (w.flatten(1).abs().amax(1) / n).view(-1, 1, 1, 1)  # per-channel symmetric, as WeightFakeQuant
    zero_point = torch.zeros_like(scale)
    return layer, x, target, w, scale, zero_point, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def test_adaround_beats_round_to_nearest_on_a_fixed_layer_and_ends_on_integers():
    layer, x, target, w, scale, zp, qmin, qmax = _fixed_conv_example(bits=3)
    rtn = nearest_integers(w, scale, zp, qmin, qmax)
    learned = adaround_layer(layer, w, scale, zp, qmin, qmax, x, target, iterations=300, batch_size=32)
    assert torch.equal(learned, torch.round(learned))  # plain integers ...
    assert learned.min() >= qmin and learned.max() <= qmax  # ... on the grid
    assert ((learned - torch.floor(w / scale)).abs() <= 1).all()  # each weight rounded up or down, nothing else
    with torch.no_grad():
        err_rtn = reconstruction_error(nn.functional.conv2d(x, rtn * scale, layer.bias, padding=1), target).item()
        err_ada = reconstruction_error(nn.functional.conv2d(x, learned * scale, layer.bias, padding=1), target).item()
    assert err_ada < 0.5 * err_rtn, (err_ada, err_rtn)  # measured: 0.0068 vs 0.026 (256 images, 8x8)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _tiny_quantizer(**config):
    torch.manual_seed(1)
    model = _Tiny()
    with torch.no_grad():  # non-trivial folded batch-norm
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
    model.eval()
    base = dict(bits_activations=8, bits_parameters=4, per_channel_wts=True,
                mode={"activations": "ASYMMETRIC_UNSIGNED", "weights": "SYMMETRIC"})
    q = PostTrainLinearQuantizer(model, **{**base, **config})
    gm = q.prepare_model()
    images = torch.randn(128, 1, 8, 8)
    loader = [(images[i:i + 32], None) for i in range(0, 128, 32)]
    q.calibrate(loader)
    return q, gm, images


def test_refine_adaround_writes_valid_integers_on_the_frozen_grid():
    q, gm, images = _tiny_quantizer(adaround=True, adaround_iterations=200, adaround_batch_size=32)
    q.set_state(True, False)
    before = gm(images).detach()
    scales = {k: wq.scale.clone() for k, wq in q.weight_quantizers.items()}
    rows = refine(q, calibration_images([(images, None)], "cpu"))
    assert [r["layer"] for r in rows] == ["conv1", "conv2", "fc"]
    for name, layer, wq in refined_layers(q):
        assert torch.equal(wq.scale, scales[f"{name}.weight"])  # grid kept
        w = layer.parametrizations.weight.original.detach()
        ints = w / wq.scale.view(-1, *([1] * (w.dim() - 1)))
        assert torch.allclose(ints, torch.round(ints), atol=1e-4)
        assert ints.min() >= wq.qmin - 1e-4 and ints.max() <= wq.qmax + 1e-4
        # fake quantization reads back exactly the stored weight: the integers are final
        assert torch.equal(layer.weight.detach(), w)
    assert all(r["error"] <= r["rtn_error"] for r in rows)
    after = gm(images).detach()
    assert not torch.equal(before, after)


def test_bias_correction_zeroes_the_mean_output_shift_on_its_calibration_data():
    q, gm, images = _tiny_quantizer(bias_correction=True)
    data = calibration_images([(images, None)], "cpu")
    layers = refined_layers(q)
    refine(q, data)
    # with the final model: each corrected layer's inputs from the quantized model, outputs from FP32
    # (FP32 parameters = what refine saved before changing biases, so compare against a fresh quantizer)
    ref, _, _ = _tiny_quantizer()
    for (name, layer, _), (_, ref_layer, _) in zip(layers, refined_layers(ref)):
        x_q = capture(q, layer, data, quantized=True)
        target = capture(ref, ref_layer, data, quantized=False, want_output=True)
        shift = mean_output_shift(layer, x_q, target)
        if layer.bias is not None:
            assert shift.abs().max().item() < 1e-4, (name, shift)
    # without correction the shift is clearly non-zero
    x_q = capture(ref, refined_layers(ref)[1][1], data, quantized=True)
    target = capture(ref, refined_layers(ref)[1][1], data, quantized=False, want_output=True)
    assert mean_output_shift(refined_layers(ref)[1][1], x_q, target).abs().max().item() > 1e-3


def test_lockstep_gives_each_layer_what_passes_from_the_input_give_after_the_layers_before_it_changed():
    q, gm, images = _tiny_quantizer()
    layers = refined_layers(q)
    originals = {name: (layer.parametrizations.weight.original.detach().clone(), layer.bias.detach().clone())
                 for name, layer, _ in layers}
    seen = []
    for name, layer, wq, x_q, target in lockstep(q, images, originals):
        assert wq is q.weight_quantizers[f"{name}.weight"]
        assert not torch.equal(layer.weight, layer.parametrizations.weight.original)  # quantizers on for the caller
        assert torch.allclose(x_q, capture(q, layer, images, quantized=True), atol=1e-6)
        with original_parameters(layers, originals):
            fp32 = capture(q, layer, images, quantized=False, want_output=True)
        assert torch.allclose(target, fp32, atol=1e-6)
        with torch.no_grad():  # a refinement: the quantized inputs of the layers after it must see it, FP32 not
            layer.bias.add_(0.25)
            layer.parametrizations.weight.original.mul_(0.9)
        seen.append(name)
    assert seen == ["conv1", "conv2", "fc"]
    assert not torch.allclose(layers[2][1].bias, originals["fc"][1])


class _Tokens(nn.Module):
    """A linear layer on [images, tokens, features], as a ViT's: 8 tokens, 6 output features."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 6)
        self.relu = nn.ReLU()
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        return self.head(self.relu(self.proj(x.flatten(1, 2)))).mean(1)


def test_bias_correction_of_a_linear_layer_on_tokens_corrects_each_output_feature():
    torch.manual_seed(0)
    q = PostTrainLinearQuantizer(_Tokens().eval(), bits_activations=4, bits_parameters=3, bias_correction=True)
    q.prepare_model()
    images = torch.randn(64, 1, 8, 8)
    q.calibrate([(images, None)])
    layers = refined_layers(q)
    proj = layers[0][1]
    x_q = capture(q, proj, images, quantized=True)
    before = proj.bias.detach().clone()
    refine(q, images)
    with original_parameters(layers[:1], {"proj": (proj.parametrizations.weight.original.detach(), before)}):
        fp32 = capture(q, proj, images, quantized=False, want_output=True)
    shift = mean_output_shift(proj, x_q, fp32)
    assert shift.shape == (6,) and shift.abs().max().item() < 1e-5
    assert (proj.bias.detach() - before).abs().max().item() > 1e-3  # it did correct something


def test_refinement_keys_are_validated_with_the_recipe():
    good = {"quantizers": {"q": {"class": "PostTrainLinearQuantizer", "adaround": True, "adaround_iterations": 10,
                                 "bias_correction": True}}}
    read_recipe(good)
    bad = {"quantizers": {"q": {"class": "PostTrainLinearQuantizer", "adaround": "yes", "adaround_iterations": 0,
                                "adaround_warmup": 1.5}}}
    try:
        read_recipe(bad)
    except RecipeError as exc:
        text = str(exc)
        assert "adaround" in text and "adaround_iterations" in text and "adaround_warmup" in text
    else:
        raise AssertionError("invalid AdaRound options passed validation")


def test_gptq_beats_round_to_nearest_on_a_layer_with_correlated_inputs():
    """A linear layer whose 64 inputs are mixtures of 8 sources (correlated, as real features are) at 3 bits per
    output channel: GPTQ's error feedback leaves a smaller output error than rounding each weight to nearest."""
    from compressor.quantization.linear.gptq import gptq_integers, input_hessian

    torch.manual_seed(0)
    layer = nn.Linear(64, 32, bias=False)
    x = torch.randn(2048, 8) @ torch.randn(8, 64) + 0.05 * torch.randn(2048, 64)
    w = layer.weight.detach()
    scale = (w.abs().amax(dim=1, keepdim=True) / 3).clamp_min(1e-8)  # symmetric 3-bit: integers -4..3
    zero = torch.zeros(())
    nearest = nearest_integers(w, scale, zero, -4, 3)
    learned = gptq_integers(w, scale, zero, -4, 3, input_hessian(layer, x))
    assert torch.equal(learned, torch.round(learned)) and learned.min() >= -4 and learned.max() <= 3
    target = x @ w.T
    rtn = reconstruction_error(x @ (nearest * scale).T, target).item()
    gptq = reconstruction_error(x @ (learned * scale).T, target).item()
    assert gptq < 0.5 * rtn, (rtn, gptq)


def test_refine_gptq_ends_on_the_frozen_grid_with_lower_layer_errors():
    q, gm, images = _tiny_quantizer(gptq=True)
    scales = {k: wq.scale.clone() for k, wq in q.weight_quantizers.items()}
    rows = refine(q, calibration_images([(images, None)], "cpu"))
    assert [r["layer"] for r in rows] == ["conv1", "conv2", "fc"]
    for name, layer, wq in refined_layers(q):
        assert torch.equal(wq.scale, scales[f"{name}.weight"])
        w = layer.parametrizations.weight.original.detach()
        ints = w / wq.scale.view(-1, *([1] * (w.dim() - 1)))
        assert torch.allclose(ints, torch.round(ints), atol=1e-4)
        assert ints.min() >= wq.qmin - 1e-4 and ints.max() <= wq.qmax + 1e-4
    assert sum(r["error"] for r in rows) < sum(r["rtn_error"] for r in rows)
    assert all(r["flipped"] > 0 for r in rows)


def test_gptq_and_adaround_together_are_refused_in_a_recipe():
    text = ("quantizers:\n  q:\n    class: PostTrainLinearQuantizer\n    adaround: true\n    gptq: true\n")
    try:
        read_recipe(text, file="r.yaml")
    except RecipeError as exc:
        assert "r.yaml:5: quantizers.q.gptq: choose one of adaround and gptq" in str(exc)
    else:
        raise AssertionError("adaround + gptq accepted")
