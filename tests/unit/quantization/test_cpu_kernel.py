"""The one-pass CPU fake-quantization kernel builds here and computes, bit for bit, what the vectorized tensor ops
(and torch's own kernel) compute: values, straight-through gradients, layouts."""

import pytest
import torch

from compressor.quantization import cpu_kernel, fake_quant_op
from compressor.quantization.fake_quant_op import fake_quantize


@pytest.fixture
def tensor_ops():
    """Runs a function with the kernel switched off (the vectorized tensor ops)."""

    def run(fn, *args):
        with cpu_kernel.switched_off():
            assert fake_quant_op._cpu_kernel_for(torch.zeros(1), torch.ones(1), torch.zeros(1, dtype=torch.int32)) \
                is None
            return fn(*args)

    return run


def test_the_kernel_builds_on_this_machine():
    ops = cpu_kernel.ops()
    assert ops is not None, f"the CPU kernel did not build: {cpu_kernel.build_error()} (needs g++ and ninja)"
    x = torch.zeros(4)
    assert fake_quant_op._cpu_kernel_for(x, torch.ones(()), torch.zeros((), dtype=torch.int32)) is ops


def _hard_inputs(seed, shape, scale):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 30 * scale
    flat = x.view(-1)
    n = flat.numel()
    # exact ties (k + 0.5) * scale, both signs; the grid's ends and beyond; NaN and infinities
    flat[: n // 4] = (torch.randint(-300, 300, (n // 4,), generator=g).float() + 0.5) * scale
    flat[n // 4] = float("nan")
    flat[n // 4 + 1] = float("inf")
    flat[n // 4 + 2] = float("-inf")
    return flat[torch.randperm(n, generator=g)].view(shape), g


@pytest.mark.parametrize("qmin,qmax,zp", [(0, 255, 0), (0, 255, 117), (-128, 127, 0), (-127, 127, 0), (0, 15, 3)])
@pytest.mark.parametrize("shape", [(64,), (64, 16, 9, 9), (3, 50_000)])  # 3x50,000: several parallel chunks
def test_values_masks_and_gradients_equal_the_tensor_ops(tensor_ops, qmin, qmax, zp, shape):
    scale = torch.tensor([0.0173])
    zero_point = torch.tensor([zp], dtype=torch.int32)
    x, g = _hard_inputs(qmin + qmax + zp, shape, float(scale))
    grad = torch.randn(shape, generator=g)
    grad.view(-1)[:5] = float("inf")  # an infinite gradient where clipped still gives 0, as torch.where does

    def run():
        leaf = x.clone().requires_grad_()
        out = fake_quantize(leaf, scale, zero_point, qmin, qmax)
        out.backward(grad)
        with torch.no_grad():
            plain = fake_quantize(x, scale, zero_point, qmin, qmax)
        return out.detach(), leaf.grad, plain

    out, grad_in, plain = run()
    ref_out, ref_grad, ref_plain = tensor_ops(run)
    assert torch.equal(out.nan_to_num(7.0), ref_out.nan_to_num(7.0))  # NaN stays NaN in both
    assert int(out.isnan().sum()) == 1
    assert torch.equal(plain.nan_to_num(7.0), ref_plain.nan_to_num(7.0))
    assert torch.equal(grad_in, ref_grad)
    assert torch.equal(grad_in.view(-1).view(torch.int32), ref_grad.view(-1).view(torch.int32))  # -0.0 kept
    assert 0 < int((grad_in == 0).sum()) < grad_in.numel()  # some clipped, some passed


def test_channels_last_stays_channels_last_with_the_same_values(tensor_ops):
    scale, zero_point = torch.tensor([0.05]), torch.tensor([128], dtype=torch.int32)
    x = torch.randn(4, 8, 6, 6).to(memory_format=torch.channels_last)
    grad = torch.randn(4, 8, 6, 6).to(memory_format=torch.channels_last)

    def run():
        leaf = x.clone().requires_grad_()
        out = fake_quantize(leaf, scale, zero_point, 0, 255)
        out.backward(grad)
        return out, leaf.grad

    out, grad_in = run()
    ref_out, ref_grad = tensor_ops(run)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    assert torch.equal(out, ref_out) and torch.equal(grad_in, ref_grad)
    # a gradient laid out otherwise than the input goes through torch.where, with the same values
    leaf = x.clone().requires_grad_()
    fake_quantize(leaf, scale, zero_point, 0, 255).backward(grad.contiguous())
    assert torch.equal(leaf.grad, ref_grad)


def test_where_the_kernel_does_not_apply_the_tensor_ops_run():
    x = torch.randn(4, 6)
    s, z = torch.tensor([0.1]), torch.tensor([0], dtype=torch.int32)
    assert fake_quant_op._cpu_kernel_for(x, s, z) is not None
    assert fake_quant_op._cpu_kernel_for(x[:, ::2], s, z) is None  # not dense
    assert fake_quant_op._cpu_kernel_for(x.double(), s, z) is None
    assert fake_quant_op._cpu_kernel_for(x, torch.tensor([0.1, 0.2]), torch.zeros(2, dtype=torch.int32)) is None
    assert fake_quant_op._cpu_kernel_for(x, s.double(), z) is None
    strided = x[:, ::2]
    assert torch.equal(fake_quantize(strided, s, z, 0, 255), fake_quantize(strided.contiguous(), s, z, 0, 255))


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv(cpu_kernel.ENV_SWITCH, "0")
    assert cpu_kernel.ops() is None
    monkeypatch.setenv(cpu_kernel.ENV_SWITCH, "1")
    assert cpu_kernel.ops() is not None
