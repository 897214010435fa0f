"""GPTQ (Frantar et al. 2022): second-order weight rounding, one layer at a time, on a fixed weight grid.

Round-to-nearest treats each weight alone. GPTQ quantizes the columns (input channels) of a layer's weight one after
another and spreads each column's rounding error over the columns not yet quantized, weighted by the inverse of the
layer's input Hessian ``H = 2 X^T X / n`` (``X`` the layer's inputs on the calibration images, rows = samples): the
update that minimizes the layer's output error given the columns already fixed (Optimal Brain Quantization, made
fast by a Cholesky factor of ``H^-1`` and lazy updates in blocks of columns).

Here it refines weights the way AdaRound does (``refine.py``): the grid (per-channel or per-tensor scale and zero
point) is the weight quantizer's, frozen; the inputs are the quantized-so-far model's; the result is integers on that
grid, written back dequantized, so fake quantization, the integer simulation and the export read the same values.
Convolutions use their unfolded input patches (``F.unfold``); grouped convolutions other than groups=1 (depthwise)
keep round-to-nearest, as their per-group Hessians are not implemented.
"""

import torch
import torch.nn.functional as F
from torch import nn


def gptq_supported(layer):
    return isinstance(layer, nn.Linear) or (isinstance(layer, nn.Conv2d) and layer.groups == 1)


def _rows(layer, x):
    """The layer's input as a matrix: one row per output position, columns in the weight's flattened order."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    patches = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


@torch.no_grad()
def input_hessian(layer, inputs, batch_size=64):
    """``2 X^T X / n`` over the rows of the layer's inputs, accumulated in float64 batch by batch."""
    h, n = None, 0
    for start in range(0, inputs.shape[0], batch_size):
        rows = _rows(layer, inputs[start:start + batch_size]).double()
        h = rows.T @ rows if h is None else h + rows.T @ rows
        n += rows.shape[0]
    return 2.0 * h / max(n, 1)


@torch.no_grad()
def gptq_integers(weight, scale, zero_point, qmin, qmax, hessian, damp=0.01, block_size=128):
    """Integers ``q - zero_point`` (the weight's shape, as ``adaround.nearest_integers`` gives them) for ``weight`` on
    the grid ``(scale, zero_point)`` (broadcastable to it: per output channel or per tensor), chosen column by column
    with GPTQ's error feedback under ``hessian`` (columns x columns)."""
    shape = weight.shape
    w = weight.detach().reshape(shape[0], -1).double().clone()
    s = torch.broadcast_to(scale.double(), shape).reshape(shape[0], -1)[:, :1]
    z = torch.broadcast_to(zero_point.double(), shape).reshape(shape[0], -1)[:, :1]
    h = hessian.double().clone()
    columns = w.shape[1]
    dead = torch.diag(h) == 0  # inputs that are always zero: their weights do not matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diag(h).mean() * torch.eye(columns, dtype=h.dtype)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q_int = torch.zeros_like(w)
    for i1 in range(0, columns, block_size):
        i2 = min(i1 + block_size, columns)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, i:i + 1]
            q = torch.minimum(torch.maximum(torch.round(col / s), qmin - z), qmax - z)
            q_int[:, i1 + i] = q[:, 0]
            err = (col - q * s) / hinv1[i, i]
            w1[:, i:] -= err @ hinv1[i:i + 1, i:]
            err1[:, i:i + 1] = err
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return q_int.reshape(shape).to(weight.dtype)
