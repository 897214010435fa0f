import torch
import torch.nn.functional as F
from torch import nn

from compressor.quantization.linear.qat import QuantAwareTrainRangeLinearQuantizer


class Functional(nn.Module):
    """Residual with `x + y`, a reused ReLU module, F.relu and torch.cat: no model rewrite needed."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.relu = nn.ReLU()
        self.head = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        out = self.relu(self.bn(self.conv(x)))
        out = self.relu(out + x)  # second call of the same ReLU module
        out = F.relu(torch.cat([out, x], 1))
        return self.head(out.flatten(1))


def prepared(model, **kw):
    q = QuantAwareTrainRangeLinearQuantizer(
        model, None, bits_weights=8, bits_activations=8, mode="ASYMMETRIC_UNSIGNED", **kw
    )
    return q, q.prepare_model()


def test_functional_ops_and_reused_modules_get_their_own_sites():
    q, gm = prepared(Functional())
    assert set(q.activation_quantizers) == {"input", "relu", "relu@1", "relu_1", "head"}
    assert set(q.weight_quantizers) == {"conv.weight", "head.weight"}  # biases stay FP32 (bits_bias 32)


def test_prepared_model_is_fp32_until_enabled_then_quantized():
    torch.manual_seed(0)
    model = Functional()
    x = torch.randn(4, 3, 4, 4)
    model.eval()
    ref = model(x)
    q, gm = prepared(model)
    gm.eval()
    assert torch.equal(gm(x), ref)
    q.set_state(True, True)
    gm.train()
    gm(x)
    gm.eval()
    out = gm(x)
    assert not torch.equal(out, ref)
    assert (out - ref).abs().max() < 0.2  # 8-bit: close to FP32
    # quantized values lie on the integer grid of their scale and zero point
    fq = q.activation_quantizers["input"]
    grid = fq(x * 3) / fq.scale + fq.zero_point
    assert torch.allclose(grid, torch.round(grid), atol=1e-3)


def test_single_fp32_master_copy_and_shared_parameters():
    model = Functional()
    params = {id(p) for p in model.parameters()}
    q, gm = prepared(model)
    sd = gm.state_dict()
    assert "conv.parametrizations.weight.original" in sd
    assert "conv.weight" not in sd  # no second weight copy in checkpoints
    assert {id(p) for p in gm.parameters()} == params  # the optimizer's parameters stay valid


def test_gradients_flow_to_master_weights():
    q, gm = prepared(Functional())
    q.set_state(True, True)
    gm.train()
    gm(torch.randn(2, 3, 4, 4)).sum().backward()
    grad = gm.conv.parametrizations.weight.original.grad
    assert grad is not None and grad.abs().sum() > 0


class ShapeArithmetic(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 2)

    def forward(self, x):
        x = F.relu(x)
        return self.fc(x.reshape(x.size(0), x.size(1) * x.size(2)))


def test_size_arithmetic_is_not_an_activation():
    q, gm = prepared(ShapeArithmetic())
    assert set(q.activation_quantizers) == {"input", "relu", "fc"}
    q.set_state(True, True)
    gm.train()
    assert gm(torch.randn(2, 3, 4)).shape == (2, 2)


class FunctionalBeforeModule(nn.Module):
    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(F.relu(x) + 1.0)


def test_functional_op_never_takes_a_module_name():
    q, _ = prepared(FunctionalBeforeModule())
    assert "relu" in q.activation_quantizers and "relu_1" in q.activation_quantizers
    # the chain add -> relu module ends at the module, which keeps its own name
    assert [n for n, chain in q.act_chains.items() if chain.endswith("->relu") and n in q.activation_quantizers] == [
        "relu"
    ]


def test_torchvision_model_trains_under_qat():
    import torchvision

    model = torchvision.models.mobilenet_v2(num_classes=10)
    q, gm = prepared(model)
    q.set_state(True, True)
    gm.train()
    loss = gm(torch.randn(2, 3, 32, 32)).sum()
    loss.backward()
    assert len(q.weight_quantizers) == 53 and len(q.activation_quantizers) > 50


def test_gated_activations_are_split_unless_the_recipe_says_not():
    """Split (the default): SiLU's and hardswish's gates are sites of their own and the products run on QLinearMul;
    ``split_gated_activations: false``: one site each, the same function."""
    from compressor.quantization.graph import capture
    from compressor.quantization.linear.ptq import PostTrainLinearQuantizer

    def block():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(), nn.Conv2d(4, 4, 1), nn.Hardswish(), nn.Flatten(),
                             nn.LazyLinear(2))

    x = torch.randn(2, 3, 6, 6)
    sites = {}
    for split in (True, False):
        model = block()
        model(x)  # the lazy layer takes its shape
        q = PostTrainLinearQuantizer(model, bits_activations=8, bits_parameters=8, split_gated_activations=split)
        q.prepare_model()
        sites[split] = set(q.activation_quantizers)
    model = block()
    with torch.no_grad():
        reference = model(x)
        assert capture.split_gated_activations(model) == ["1", "3"]
        torch.testing.assert_close(model(x), reference)  # the same function, split or not
    assert {"1.sigmoid", "1.mul", "3.hardsigmoid", "3.mul"} <= sites[True]
    assert {"1", "3"} <= sites[False] and not any("sigmoid" in s or "mul" in s for s in sites[False])
