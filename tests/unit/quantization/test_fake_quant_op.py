"""Our vectorized fake quantization computes exactly what torch's kernels compute, values and gradients."""

import pytest
import torch

from compressor.quantization.fake_quant_op import fake_quantize

GRIDS = [(0, 255), (-128, 127), (-127, 127), (0, 15), (-8, 7)]


def _inputs(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 8, 5, 5, generator=g) * (0.1 + 10 * torch.rand(1, generator=g))
    scale = torch.rand(8, generator=g) * 0.05 + 1e-4
    # exact ties (k + 0.5) * scale for channel 0, where round-half-to-even and round-half-away differ
    x[:, 0] = (torch.randint(-300, 300, (6, 5, 5), generator=g).float() + 0.5) * scale[0]
    return x, scale, g


@pytest.mark.parametrize("qmin,qmax", GRIDS)
@pytest.mark.parametrize("seed", range(6))
def test_per_tensor_values_and_gradients_equal_torch(qmin, qmax, seed):
    x, scale, g = _inputs(seed)
    zero_point = torch.randint(qmin, qmax + 1, (1,), generator=g, dtype=torch.int32)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    a = fake_quantize(ours, scale[:1], zero_point, qmin, qmax)
    b = torch.fake_quantize_per_tensor_affine(theirs, scale[:1], zero_point, qmin, qmax)
    assert torch.equal(a, b)
    assert 0 < int((a.detach() != x).sum())  # it did quantize
    grad = torch.randn(a.shape, generator=g)
    a.backward(grad)
    b.backward(grad)
    assert torch.equal(ours.grad, theirs.grad)
    q = (x * (1 / scale[0])).round() + zero_point
    assert int((ours.grad == 0).sum()) == int(((q < qmin) | (q > qmax)).sum()) > 0  # clipped: no gradient


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("qmin,qmax", GRIDS)
def test_per_channel_values_and_gradients_equal_torch(axis, qmin, qmax):
    x, scale, g = _inputs(7 + axis)
    n = x.shape[axis]
    scale = scale[:n]
    zero_point = torch.randint(qmin, qmax + 1, (n,), generator=g, dtype=torch.int32)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    a = fake_quantize(ours, scale, zero_point, qmin, qmax, axis=axis)
    b = torch.fake_quantize_per_channel_affine(theirs, scale, zero_point, axis, qmin, qmax)
    assert torch.equal(a, b)
    grad = torch.randn(a.shape, generator=g)
    a.backward(grad)
    b.backward(grad)
    assert torch.equal(ours.grad, theirs.grad)


def test_without_gradients_it_computes_the_same_in_place_and_leaves_the_input_alone():
    x, scale, _ = _inputs(3)
    before = x.clone()
    with torch.no_grad():
        a = fake_quantize(x, scale[:1], torch.tensor([3], dtype=torch.int32), 0, 255)
    assert torch.equal(a, torch.fake_quantize_per_tensor_affine(before, scale[:1], torch.tensor([3]), 0, 255))
    assert torch.equal(x, before)
