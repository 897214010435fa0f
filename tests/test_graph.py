import torch
import torch.nn.functional as F
from torch import nn

from compressor.quantization.qat import QuantAwareTrainRangeLinearQuantizer


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
    q = QuantAwareTrainRangeLinearQuantizer(model, None, bits_weights=8, bits_activations=8,
                                            mode="ASYMMETRIC_UNSIGNED", **kw)
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
    # every quantized activation took a few values only
    assert len(torch.unique(q.activation_quantizers["input"](x))) <= 256


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
