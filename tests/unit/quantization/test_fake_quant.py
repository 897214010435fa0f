import pytest
import torch

from compressor.quantization.fake_quant import ActivationFakeQuant, WeightFakeQuant
from compressor.quantization.modes import LinearQuantMode as M
from compressor.quantization.qparams import qparams_from_range, quant_range

MODES = list(M)


def reference_fake_quant(x, scale, zero_point, qmin, qmax):
    """Written out independently of torch's kernel: clamp(round(x / s) + z) then back."""
    q = torch.clamp(torch.round(x * (1.0 / scale)) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_activation_matches_torch_fake_quantize(mode, bits):
    torch.manual_seed(bits)
    x = torch.randn(8, 4, 5, 5) * 3 + 0.5
    fq = ActivationFakeQuant(bits, mode, ema_decay=0.9)
    fq.set_state(True, True)
    fq.train()
    y = fq(x)
    qmin, qmax = quant_range(bits, mode)
    expected = torch.fake_quantize_per_tensor_affine(x, fq.scale, fq.zero_point, qmin, qmax)
    assert torch.equal(y, expected)
    assert torch.allclose(y, reference_fake_quant(x, fq.scale, fq.zero_point.float(), qmin, qmax), atol=1e-6)
    levels = torch.round(y / fq.scale).unique()
    assert len(levels) <= 2**bits  # values lie on the integer grid
    # one update with bias correction: the range is exactly this batch's min/max
    lo, hi = fq.range
    assert lo == pytest.approx(x.min().item(), rel=1e-5) and hi == pytest.approx(x.max().item(), rel=1e-5)
    s, z = qparams_from_range(x.min(), x.max(), bits, mode)
    assert torch.allclose(fq.scale, s.reshape(1)) and torch.equal(fq.zero_point, z.reshape(1))


@pytest.mark.parametrize("mode", MODES)
def test_weight_per_channel_matches_torch(mode):
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3) * torch.arange(1, 7).float().view(6, 1, 1, 1)
    fq = WeightFakeQuant(8, mode, per_channel=True, channels=6)
    fq.set_state(True, True)
    y = fq(w)
    mn = w.flatten(1).min(1).values
    mx = w.flatten(1).max(1).values
    s, z = qparams_from_range(mn, mx, 8, mode)
    qmin, qmax = quant_range(8, mode)
    assert torch.equal(y, torch.fake_quantize_per_channel_affine(w, s, z, 0, qmin, qmax))
    ref = reference_fake_quant(w, s.view(6, 1, 1, 1), z.float().view(6, 1, 1, 1), qmin, qmax)
    assert torch.allclose(y, ref, atol=1e-5)
    assert fq.scale.shape == (6,)


def test_hand_worked_asymmetric_signed_example():
    # Distiller: range [-2, 10], 8 bits signed: scale 21.25, zero point 86 -> q = round(21.25 x - 86)
    fq = WeightFakeQuant(8, M.ASYMMETRIC_SIGNED)
    fq.set_state(True, True)
    w = torch.tensor([-2.0, 0.0, 1.0, 10.0])
    y = fq(w)
    q = torch.round(21.25 * w - 86).clamp(-128, 127)
    assert q.tolist() == [-128, -86, -65, 126]  # 126.5 rounds half to even
    assert torch.allclose(y, (q + 86) / 21.25, atol=1e-6)


def test_weight_per_tensor_matches_torch():
    w = torch.linspace(-3, 1, 50).reshape(5, 10)
    fq = WeightFakeQuant(4, M.SYMMETRIC)
    fq.set_state(True, True)
    s, z = qparams_from_range(w.min(), w.max(), 4, M.SYMMETRIC)
    assert torch.equal(fq(w), torch.fake_quantize_per_tensor_affine(w, s.reshape(1), z.reshape(1), -8, 7))
    assert len(torch.unique(fq(w))) <= 16


def test_straight_through_gradient_inside_range_zero_outside():
    fq = ActivationFakeQuant(8, M.ASYMMETRIC_UNSIGNED)
    fq.set_state(True, True)
    fq.train()
    fq(torch.tensor([0.0, 1.0]))  # range [0, 1]
    fq.set_state(True, False)  # frozen: keep that range
    x = torch.tensor([0.3, 0.77, 2.0, -1.0], requires_grad=True)
    fq(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0]


def test_ema_bias_corrected_average():
    fq = ActivationFakeQuant(8, M.ASYMMETRIC_UNSIGNED, ema_decay=0.5)
    fq.set_state(True, True)
    fq.train()
    fq(torch.tensor([0.0, 2.0]))
    fq(torch.tensor([0.0, 4.0]))
    # biased: 0.5*(0.5*2) + 0.5*4 = 2.5 ; correction 1 - 0.25 = 0.75
    assert fq.range[1] == pytest.approx(2.5 / 0.75)
    assert fq.observer.num_updates.item() == 2


def test_disabled_is_identity_and_frozen_does_not_observe():
    x = torch.randn(100)
    fq = ActivationFakeQuant(4, M.SYMMETRIC)
    fq.train()
    assert fq(x) is x  # disabled by default: FP32
    fq.set_state(True, True)
    fq(x)
    before = fq.scale.clone()
    fq.set_state(True, False)
    fq(x * 10)
    assert torch.equal(fq.scale, before)
    fq.set_state(True, True)
    fq.eval()
    fq(x * 10)  # evaluation never moves the range
    assert torch.equal(fq.scale, before)


def test_state_round_trip_includes_flags_and_counter():
    fq = ActivationFakeQuant(8, M.SYMMETRIC)
    fq.set_state(True, False)
    fq.observer.num_updates.fill_(7)
    fq2 = ActivationFakeQuant(8, M.SYMMETRIC)
    fq2.load_state_dict(fq.state_dict())
    assert (fq2.enabled, fq2.observing, fq2.observer.num_updates.item()) == (True, False, 7)


def test_state_saved_before_observers_were_submodules_still_loads():
    """Checkpoints written before the observer split kept the EMA buffers on the fake quantizer itself."""
    fq = ActivationFakeQuant(8, M.ASYMMETRIC_UNSIGNED, ema_decay=0.9)
    fq.set_state(True, True)
    fq.train()
    fq(torch.linspace(-1.0, 3.0, 50))
    fq(torch.linspace(-2.0, 1.0, 50))
    old = {k.replace("observer.", ""): v for k, v in fq.state_dict().items() if not k.startswith("batch_range")}
    assert "num_updates" in old and "biased_min" in old
    fresh = ActivationFakeQuant(8, M.ASYMMETRIC_UNSIGNED, ema_decay=0.9)
    fresh.load_state_dict(old)
    assert fresh.range == fq.range and fresh.observer.num_updates.item() == 2
    assert torch.equal(fresh.scale, fq.scale) and torch.equal(fresh.zero_point, fq.zero_point)


def test_observers_are_separate_from_fake_quantization():
    from compressor.quantization.observers import EmaMinMaxObserver, MinMaxObserver

    ema = EmaMinMaxObserver(0.5)
    lo, hi = ema.update(torch.tensor(-1.0), torch.tensor(2.0))
    assert (lo.item(), hi.item()) == (-1.0, 2.0)  # bias correction: the first batch is the range
    lo, hi = ema.update(torch.tensor(-3.0), torch.tensor(4.0))
    assert (lo.item(), hi.item()) == pytest.approx((-(0.25 * 1 + 0.5 * 3) / 0.75, (0.25 * 2 + 0.5 * 4) / 0.75))
    w = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    mn, mx = MinMaxObserver(per_channel=True, axis=0)(w)
    assert mn.tolist() == [-2.0, 0.5] and mx.tolist() == [1.0, 3.0]


def test_a_qat_model_in_channels_last_computes_what_the_default_format_does():
    """--channels-last: fake quantization keeps the memory format (elementwise ops), so the convs after it run
    channels-last, and the outputs equal the default format's within float rounding."""
    from compressor.quantization.linear.qat import QuantAwareTrainRangeLinearQuantizer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 4))
    q = QuantAwareTrainRangeLinearQuantizer(model, bits_activations=8, bits_weights=8)
    gm = q.prepare_model()
    x = torch.randn(4, 3, 12, 12)
    gm.train()(x)  # ranges observed once
    gm.eval()
    reference = gm(x)
    seen = []
    handle = gm.get_submodule("3").register_forward_pre_hook(
        lambda m, inputs: seen.append(inputs[0].is_contiguous(memory_format=torch.channels_last)))
    model.to(memory_format=torch.channels_last)
    out = gm(x.to(memory_format=torch.channels_last))
    handle.remove()
    assert seen == [True]  # the second conv's (fake-quantized) input stayed channels-last
    assert model[0].parametrizations.weight.original.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)


def test_quantizers_compute_in_float32_under_bf16_autocast():
    """--amp: an activation quantizer fed autocast's bf16 output quantizes exactly as an FP32 run fed the same values
    (same range, scale, zero point and output); a weight quantizer's output is the FP32 one."""
    torch.manual_seed(0)
    x = (torch.randn(4, 8, 5, 5) * 3).to(torch.bfloat16)
    mode = M.ASYMMETRIC_UNSIGNED
    fp32, amp = ActivationFakeQuant(8, mode).train(), ActivationFakeQuant(8, mode).train()
    expected = fp32(x.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = amp(x)
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    assert torch.equal(amp.scale, fp32.scale) and torch.equal(amp.zero_point, fp32.zero_point)
    w = torch.randn(8, 4, 3, 3)
    wq = WeightFakeQuant(8, M.SYMMETRIC, per_channel=True, channels=8)
    plain = wq(w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(wq(w), plain)

