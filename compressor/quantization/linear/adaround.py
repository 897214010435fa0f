"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization").

Round-to-nearest is not the best rounding of a layer's weights: what matters is the layer's
output. AdaRound learns, per weight, whether to round down or up by minimizing the layer's
output reconstruction error on calibration data. The choice is relaxed to a continuous
``h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)`` (the rectified sigmoid, zeta = 1.1,
gamma = -0.1, so that h reaches 0 and 1 exactly), and a regularizer
``sum(1 - |2h - 1| ** beta)`` pushes every h to 0 or 1 as beta is annealed from 20 to 2 after a
warm-up without it. V is learned with Adam; at the end each weight rounds up where h >= 0.5.

The result is a tensor of plain integers on the weight quantizer's grid (its scale and zero
point are kept), so every later stage (integer simulation, export) sees ordinary quantized
weights. Measured on digits (simplenet / resnet20_cifar, W4 per-channel): see docs/results.md.
"""

import torch
import torch.nn.functional as F
from torch import nn

ZETA, GAMMA = 1.1, -0.1


def rectified_sigmoid(v):
    """h(V) in [0, 1]: the soft rounding offset added to floor(w / s)."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def initial_logits(rest):
    """V with h(V) = ``rest`` (the fractional part of w / s): training starts at the FP32 weight."""
    rest = rest.clamp(1e-6, 1 - 1e-6)
    return -torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)


def rounding_regularizer(h, beta):
    """sum(1 - |2h - 1| ** beta): zero only when every h is 0 or 1."""
    return (1 - (2 * h - 1).abs().pow(beta)).sum()


def annealed_beta(step, iterations, warmup, beta_start, beta_end):
    """beta for ``step``: ``beta_start`` until the warm-up ends, then linear down to ``beta_end``."""
    start = warmup * iterations
    if step < start:
        return beta_start
    progress = (step - start) / max(iterations - start, 1)
    return beta_end + (beta_start - beta_end) * max(0.0, 1.0 - progress)


def layer_output(layer, x, weight):
    """The conv/linear ``layer`` applied to ``x`` with ``weight`` instead of its own (bias included)."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, layer.bias)
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return layer._conv_forward(x, weight, layer.bias)
    raise TypeError(f"AdaRound supports Conv1d/2d/3d and Linear layers, not {type(layer).__name__}")


def grid_view(tensor, weight, axis):
    """Per-channel (or per-tensor) quantizer parameters shaped to broadcast against ``weight``."""
    if tensor.numel() == 1:
        return tensor.reshape(())
    shape = [1] * weight.dim()
    shape[axis] = -1
    return tensor.reshape(shape)


def reconstruction_error(out, target):
    """Squared error summed over channels, averaged over samples and positions (the paper's loss)."""
    return (out - target).pow(2).sum(1).mean()


def adaround_layer(layer, weight, scale, zero_point, qmin, qmax, inputs, targets, *, iterations=1000,
                   reg_weight=0.01, beta_start=20.0, beta_end=2.0, warmup=0.2, lr=1e-2, batch_size=32, seed=0):
    """Learned integers ``q - zero_point`` for ``weight`` (same shape), scale and zero point fixed.

    ``scale``/``zero_point`` broadcast against ``weight``; ``inputs`` are the layer's inputs from the
    quantized-so-far model, ``targets`` its FP32 outputs, on the same images.
    """
    weight = weight.detach()
    lo, hi = (qmin - zero_point).to(weight.dtype), (qmax - zero_point).to(weight.dtype)
    w_div = weight / scale
    floor = torch.floor(w_div)
    v = nn.Parameter(initial_logits(w_div - floor))
    optimizer = torch.optim.Adam([v], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    n = inputs.shape[0]
    for step in range(iterations):
        idx = torch.randint(n, (min(batch_size, n),), generator=generator)
        x, target = inputs[idx], targets[idx]
        h = rectified_sigmoid(v)
        soft = torch.maximum(torch.minimum(floor + h, hi), lo) * scale
        loss = reconstruction_error(layer_output(layer, x, soft), target)
        if step >= warmup * iterations:
            beta = annealed_beta(step, iterations, warmup, beta_start, beta_end)
            loss = loss + reg_weight * rounding_regularizer(h, beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        up = (v >= 0).to(weight.dtype)  # h(V) >= 0.5 exactly where V >= 0
        return torch.maximum(torch.minimum(floor + up, hi), lo)


def nearest_integers(weight, scale, zero_point, qmin, qmax):
    """Round-to-nearest integers ``q - zero_point`` (the baseline AdaRound improves on)."""
    lo, hi = (qmin - zero_point).to(weight.dtype), (qmax - zero_point).to(weight.dtype)
    return torch.maximum(torch.minimum(torch.round(weight / scale), hi), lo)
