"""Scale and zero point from a range, in PyTorch's convention.

Internally ``q = clamp(round(x / scale) + zero_point, qmin, qmax)`` (PyTorch's
convention), so torch's fused fake-quant kernels can be used directly.
Distiller's convention (``q = round(scale_d * x - zp_d)``) is the same with
``scale_d = 1 / scale`` and ``zp_d = -zero_point``; ``to_distiller`` converts
for stats and reports.
"""

import torch

from compressor.quantization.modes import LinearQuantMode

_EPS = torch.finfo(torch.float32).eps


def quant_range(bits, mode):
    """(qmin, qmax) of the integer grid for ``bits`` and ``mode``."""
    if mode is LinearQuantMode.ASYMMETRIC_UNSIGNED:
        return 0, 2**bits - 1
    if mode is LinearQuantMode.SYMMETRIC_RESTRICTED:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def qparams_from_range(min_val, max_val, bits, mode):
    """Scale (float32) and zero point (int32) tensors for the range [min_val, max_val].

    Works element-wise, so per-channel ranges give per-channel parameters.
    """
    min_val = min_val.float()
    max_val = max_val.float()
    if mode.symmetric:
        sat = torch.maximum(min_val.abs(), max_val.abs())
        n = (2**bits - 1) / 2 if mode is LinearQuantMode.SYMMETRIC else 2 ** (bits - 1) - 1
        scale = sat.clamp(min=_EPS) / n
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
        return scale, zero_point
    # Asymmetric: the range always includes zero, so zero is exactly representable.
    min_val = min_val.clamp(max=0.0)
    max_val = max_val.clamp(min=0.0)
    scale = (max_val - min_val).clamp(min=_EPS) / (2**bits - 1)
    zero_point = -torch.round(min_val / scale)
    if mode is LinearQuantMode.ASYMMETRIC_SIGNED:
        zero_point = zero_point - 2 ** (bits - 1)
    return scale, zero_point.to(torch.int32)


def reciprocal_grid(scale):
    """The scale ``1 / n`` (n an integer) nearest above ``scale``, as float32 with ``floor(1 / s) == n`` in float32.

    ONNX Runtime's QLinearSoftmax (what DequantizeLinear -> Softmax -> QuantizeLinear fuses to) requantizes its
    output with ``floor(1 / scale)``, not with the scale the graph stores: on any other scale the deployed softmax
    lands up to a few steps from the simulation's (1.1 % of a trained ViT's first attention probabilities did).
    The range only grows (``1 / n >= scale``), by under one step of 255.
    """
    scale = scale.float()
    n = torch.floor(1.0 / scale.double()).clamp(min=1.0)
    grid = (1.0 / n).float()
    # float32(1 / n) may sit a hair above 1 / n, where floor(1 / s) gives n - 1: one step down then suffices (the
    # quotient moves by 2**-24 relative), without a branch on values (QAT under torch.compile: no graph break)
    low = torch.floor(torch.ones((), dtype=torch.float32, device=grid.device) / grid) < n.float()
    return torch.where(low, torch.nextafter(grid, torch.zeros_like(grid)), grid)


def to_distiller(scale, zero_point):
    """Distiller's (multiplicative scale, zero point) for reports and stats files."""
    return 1.0 / scale, -zero_point.to(torch.float32)
