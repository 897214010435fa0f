"""Fake quantization (quantize-dequantize in float) with the clipped straight-through gradient, as an autograd
Function built from vectorized tensor ops.

It computes exactly what ``torch.fake_quantize_per_tensor_affine`` / ``torch.fake_quantize_per_channel_affine``
compute, bit for bit (tests/unit/quantization/test_fake_quant_op.py): ``(clamp(round(x * (1 / scale)) + zp,
qmin, qmax) - zp) * scale``, rounding half to even, the gradient passed where the rounded value lies inside
[qmin, qmax] and zeroed outside. Why not torch's own kernel: on the CPU it rounds one element at a time with
``std::nearbyint``. On a 64x16x32x32 activation (AVX2, one thread; benchmarks/fake_quant_speed.py) these
vectorized in-place passes with the backward's one ``where`` take 3.0 ms against torch's 7.6 ms, and an 8-bit QAT
epoch of resnet20_cifar costs 1.34x FP32 instead of 1.60x (docs/performance.md).

On the CPU a per-tensor float32 quantize-dequantize runs in one C++ pass instead, with its gradient (``cpu_kernel``:
1.57 ms forward and backward on that activation, same values); under ``torch.compile`` the tensor ops are traced,
and inductor fuses them into one loop itself. Scales and zero points stay tensors (no ``.item()``): nothing here
waits for the device.
"""

import torch

from compressor.quantization import cpu_kernel


class _FakeQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax):
        zp = zero_point.to(x.dtype)
        q = x * torch.reciprocal(scale)
        q.round_().add_(zp)
        if not ctx.needs_input_grad[0]:
            return q.clamp_(qmin, qmax).sub_(zp).mul_(scale)
        out = q.clamp(qmin, qmax)
        ctx.save_for_backward(out == q)
        return out.sub_(zp).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return torch.where(inside, grad, 0.0), None, None, None, None


def _cpu_kernel_for(x, scale, zero_point):
    """The one-pass kernel's ops where they apply: a float32 CPU tensor, contiguous or channels-last, with one
    float32 scale and one int32 zero point, outside of torch.compile's tracing; else None (the tensor ops)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or torch.compiler.is_compiling():
        return None
    if (scale.numel() != 1 or scale.dtype != torch.float32 or scale.device.type != "cpu"
            or zero_point.dtype != torch.int32 or zero_point.device.type != "cpu"):
        return None
    if not (x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))):
        return None
    return cpu_kernel.ops()


def fake_quantize(x, scale, zero_point, qmin, qmax, axis=None):
    """Quantize-dequantize ``x`` with ``scale`` (float32) and ``zero_point`` (int32): one value each (per tensor),
    or one per index of ``axis`` (per channel)."""
    if axis is None:
        kernel = _cpu_kernel_for(x, scale, zero_point)
        if kernel is not None:
            return kernel.fake_quantize(x, scale, zero_point, qmin, qmax)
        # 0-dim: broadcast as a scalar, the fast path of torch's element-wise loops (3x here)
        scale, zero_point = scale.reshape(()), zero_point.reshape(())
    else:
        shape = [1] * x.dim()
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    return _FakeQuantize.apply(x, scale, zero_point, qmin, qmax)
