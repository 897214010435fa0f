"""Straight-through estimators: quantizing forward passes whose backward passes are defined by hand.

Rounding and sign have zero gradient almost everywhere; training through them
needs a substitute gradient. Each autograd Function here states its own.
"""

import torch


class RoundSTE(torch.autograd.Function):
    """round(x) forward, identity backward (Bengio et al. 2013)."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class SignSTE(torch.autograd.Function):
    """sign(x) in {-1, +1} (0 maps to +1) forward; gradient passed where |x| <= 1 (hard-tanh STE, as BNN/XNOR-Net)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


class ClipQuantize(torch.autograd.Function):
    """Clamp to [0, clip] and quantize uniformly to ``levels`` steps (DoReFa/WRPN/PACT activations).

    Backward (PACT, Choi et al. 2018): the input's gradient passes inside [0, clip) and is
    zero outside; the clip value's gradient is the sum of the gradients where x >= clip.
    """

    @staticmethod
    def forward(ctx, x, clip, levels):
        ctx.save_for_backward(x, clip)
        scale = levels / clip
        return torch.round(torch.minimum(x.clamp_min(0), clip) * scale) / scale

    @staticmethod
    def backward(ctx, grad):
        x, clip = ctx.saved_tensors
        above = x >= clip
        grad_x = grad * ((x >= 0) & ~above).to(grad.dtype)
        grad_clip = (grad * above.to(grad.dtype)).sum().reshape(clip.shape) if ctx.needs_input_grad[1] else None
        return grad_x, grad_clip, None


class TernarizeTTQ(torch.autograd.Function):
    """Trained ternary quantization (Zhu et al. 2016): w -> {+wp, 0, -wn} with threshold ``delta``.

    Backward: the latent weight's gradient is scaled by wp (positive set), 1 (zero set) and
    wn (negative set); wp gets the gradients over the positive set, wn minus those over the
    negative set, averaged over the set rather than summed as in the paper: a layer-sized sum
    makes the scales diverge under SGD at the model's learning rate (measured: they changed sign).
    """

    @staticmethod
    def forward(ctx, w, wp, wn, delta):
        pos, neg = w > delta, w < -delta
        ctx.save_for_backward(pos, neg, wp, wn)
        return wp * pos.to(w.dtype) - wn * neg.to(w.dtype)

    @staticmethod
    def backward(ctx, grad):
        pos, neg, wp, wn = ctx.saved_tensors
        posf, negf = pos.to(grad.dtype), neg.to(grad.dtype)
        scale = wp * posf + wn * negf + (1 - posf - negf)
        grad_wp = (grad * posf).sum() / posf.sum().clamp_min(1)
        grad_wn = -(grad * negf).sum() / negf.sum().clamp_min(1)
        return grad * scale, grad_wp.reshape(wp.shape), grad_wn.reshape(wn.shape), None
