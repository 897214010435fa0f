import torch

from compressor.quantization.low_bit.ste import ClipQuantize, RoundSTE, SignSTE, TernarizeTTQ


def test_round_ste_passes_gradient_unchanged():
    x = torch.tensor([0.2, 1.6, -2.5], requires_grad=True)
    y = RoundSTE.apply(x)
    assert y.tolist() == [0.0, 2.0, -2.0]
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad.tolist() == [1.0, 2.0, 3.0]


def test_sign_ste_hard_tanh_gradient():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 3.0], requires_grad=True)
    y = SignSTE.apply(x)
    assert y.tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_clip_quantize_values_and_pact_gradients():
    x = torch.tensor([-1.0, 0.0, 0.3, 0.55, 1.0, 1.9, 2.0, 5.0], requires_grad=True)
    clip = torch.tensor([2.0], requires_grad=True)
    y = ClipQuantize.apply(x, clip, 3.0)  # 2 bits: levels 0, 2/3, 4/3, 2
    step = 2 / 3
    assert torch.allclose(y, torch.tensor([0, 0, 0, step, 2 * step, 2, 2, 2]))
    g = torch.arange(1.0, 9.0)
    (y * g).sum().backward()
    # the input's gradient passes in [0, clip), the clip's gradient sums where x >= clip (PACT)
    assert x.grad.tolist() == [0, 2, 3, 4, 5, 6, 0, 0]
    assert clip.grad.item() == 7 + 8


def test_ttq_gradients():
    w = torch.tensor([-0.5, -0.01, 0.02, 0.4, 0.9], requires_grad=True)
    wp = torch.tensor([0.6], requires_grad=True)
    wn = torch.tensor([0.3], requires_grad=True)
    y = TernarizeTTQ.apply(w, wp, wn, torch.tensor(0.05))
    assert torch.allclose(y, torch.tensor([-0.3, 0.0, 0.0, 0.6, 0.6]))
    g = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    (y * g).sum().backward()
    assert torch.allclose(w.grad, torch.tensor([0.3 * 1, 2, 3, 0.6 * 4, 0.6 * 5]))
    assert wp.grad.item() == 4.5 and wn.grad.item() == -1.0  # averaged over each set
