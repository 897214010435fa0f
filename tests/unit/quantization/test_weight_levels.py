import torch

from compressor.quantization.low_bit.weights import (
    DorefaWeight,
    TernaryWeight,
    TrainedTernaryWeight,
    WRPNWeight,
    XnorWeight,
)


def enabled(module):
    module.set_state(True, True)
    return module


def test_disabled_is_identity():
    w = torch.randn(4, 3)
    for cls in (DorefaWeight, WRPNWeight, XnorWeight, TernaryWeight, TrainedTernaryWeight):
        assert torch.equal(cls(2)(w), w)


def test_dorefa_k_bit_matches_formula():
    w = torch.tensor([[-0.8, -0.1, 0.0, 0.3, 0.6]])
    t = torch.tanh(w)
    x = t / (2 * t.abs().max()) + 0.5
    expected = 2 * torch.round(x * 3) / 3 - 1  # 2 bits
    out = enabled(DorefaWeight(2))(w)
    assert torch.allclose(out, expected)
    assert len(set(out.flatten().tolist())) <= 4 and out.abs().max() <= 1


def test_dorefa_one_bit_is_sign_times_mean_magnitude():
    w = torch.tensor([[-0.8, -0.1, 0.2, 0.3]], requires_grad=True)
    out = enabled(DorefaWeight(1))(w)
    e = w.detach().abs().mean().item()
    assert torch.allclose(out, torch.tensor([[-e, -e, e, e]]))
    out.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # straight through


def test_wrpn_clamps_and_uses_bits_minus_one_per_side():
    w = torch.tensor([-2.0, -0.2, 0.1, 0.5, 1.5], requires_grad=True)
    out = enabled(WRPNWeight(3))(w)  # 3 bits: n = 3 steps per side
    assert torch.allclose(out, torch.tensor([-1.0, -1 / 3, 0.0, 2 / 3, 1.0]))
    out.sum().backward()
    assert w.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]  # clamp's gradient, rounding straight through


def test_xnor_scales_each_output_channel():
    w = torch.tensor([[[[0.5]], [[-1.5]]], [[[0.1]], [[0.3]]]])  # 2 out, 2 in, 1x1
    out = enabled(XnorWeight())(w)
    assert torch.allclose(out.flatten(), torch.tensor([1.0, -1.0, 0.2, 0.2]))


def test_twn_threshold_and_scale():
    w = torch.tensor([1.0, -0.9, 0.05, -0.05, 0.4])
    delta = 0.7 * w.abs().mean()  # 0.336
    out = enabled(TernaryWeight())(w)
    alpha = torch.tensor([1.0, 0.9, 0.4]).mean()
    assert delta.item() < 0.4
    assert torch.allclose(out, torch.tensor([alpha, -alpha, 0, 0, alpha]))


def test_ttq_scales_start_from_the_weights_and_learn():
    w = torch.tensor([1.0, -0.5, 0.01, -0.3, 0.6], requires_grad=True)
    q = enabled(TrainedTernaryWeight())
    out = q(w)
    assert q.wp.item() == torch.tensor([1.0, 0.6]).mean().item()
    assert q.wn.item() == torch.tensor([0.5, 0.3]).mean().item()
    assert torch.allclose(out, torch.tensor([0.8, -0.4, 0.0, -0.4, 0.8]))
    out.sum().backward()
    assert q.wp.grad.item() == 1.0 and q.wn.grad.item() == -1.0
    assert bool(q.initialized) and "initialized" in q.state_dict()
