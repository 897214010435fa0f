"""Fake-quantization modules: quantize-dequantize in FP32, gradients by straight-through estimation.

The rounding itself is torch's fused kernel (``torch.fake_quantize_per_*_affine``),
whose backward passes the gradient through unchanged inside the quantization
range and zeroes it outside (the clipped straight-through estimator).

Both modules have three states, set by the quantization policy:
``enabled`` (quantize at all) and ``observing`` (update the range). Their
state travels in ``state_dict`` (ranges as buffers, flags as extra state), so
a checkpoint evaluates and resumes exactly as it was saved.
"""

import math

import torch
from torch import nn

from compressor.quantization.qparams import qparams_from_range, quant_range


class _FakeQuantBase(nn.Module):
    def __init__(self, bits, mode, channels=1):
        super().__init__()
        self.bits = bits
        self.mode = mode
        self.qmin, self.qmax = quant_range(bits, mode)
        self.enabled = False
        self.observing = True
        self.observed = False  # False until a range was seen: a frozen quantizer then observes once
        self.register_buffer("scale", torch.ones(channels))
        self.register_buffer("zero_point", torch.zeros(channels, dtype=torch.int32))

    def set_state(self, enabled, observing):
        self.enabled = enabled
        self.observing = observing

    def get_extra_state(self):
        return {"enabled": self.enabled, "observing": self.observing, "observed": self.observed,
                "dynamic": getattr(self, "dynamic", False)}

    def set_extra_state(self, state):
        self.enabled = bool(state["enabled"])
        self.observing = bool(state["observing"])
        self.observed = bool(state.get("observed", True))
        if hasattr(self, "dynamic"):
            self.dynamic = bool(state.get("dynamic", False))

    def extra_repr(self):
        return f"bits={self.bits}, mode={self.mode.name}, enabled={self.enabled}, observing={self.observing}"


class ActivationFakeQuant(_FakeQuantBase):
    """Per-tensor fake quantization with a range tracked by a bias-corrected EMA (as Distiller's QAT).

    The range is updated only in training mode while observing; evaluation and a
    frozen quantizer use the stored scale and zero point.
    """

    def __init__(self, bits, mode, ema_decay=0.999, dynamic=False):
        super().__init__(bits, mode)
        self.ema_decay = float(ema_decay)
        self.dynamic = dynamic  # range of each batch itself, in training and evaluation (online PTQ)
        # A buffer, not a Python int: DataParallel keeps in-place buffer updates of replica 0.
        self.register_buffer("num_updates", torch.zeros(1, dtype=torch.int64))
        self.register_buffer("biased_min", torch.zeros(1))
        self.register_buffer("biased_max", torch.zeros(1))

    def forward(self, x):
        if not self.enabled or not torch.is_tensor(x) or not x.is_floating_point():
            return x
        if self.dynamic or (self.observing and self.training) or not self.observed:
            self.observe(x)
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.qmin, self.qmax)

    @torch.no_grad()
    def observe(self, x):
        mn, mx = torch.aminmax(x.detach())
        self.observed = True
        if self.dynamic:
            self.set_range(mn, mx)
            return
        self.num_updates += 1
        weight = 1.0 - self.ema_decay
        self.biased_min.lerp_(mn.float().reshape(1), weight)
        self.biased_max.lerp_(mx.float().reshape(1), weight)
        correction = 1.0 - torch.pow(self.ema_decay, self.num_updates).float()
        scale, zero_point = qparams_from_range(
            self.biased_min / correction, self.biased_max / correction, self.bits, self.mode
        )
        self.scale.copy_(scale)
        self.zero_point.copy_(zero_point)

    @torch.no_grad()
    def set_range(self, lo, hi):
        """Quantize to [lo, hi] from now on (calibrated post-training ranges)."""
        lo = torch.as_tensor(lo, dtype=torch.float32, device=self.scale.device).reshape(1)
        hi = torch.as_tensor(hi, dtype=torch.float32, device=self.scale.device).reshape(1)
        scale, zero_point = qparams_from_range(lo, hi, self.bits, self.mode)
        self.scale.copy_(scale)
        self.zero_point.copy_(zero_point)
        self.biased_min.copy_(lo)
        self.biased_max.copy_(hi)
        self.num_updates.fill_(0)
        self.observed = True

    @torch.no_grad()
    def init_range(self, lo, hi):
        """Start the moving average from [lo, hi] (calibrate-then-train): later batches move it as usual."""
        self.set_range(lo, hi)
        if self.ema_decay > 0:
            # enough pseudo-steps that the bias correction 1 - decay**n is 1 to float precision
            self.num_updates.fill_(int(math.ceil(math.log(1e-9) / math.log(self.ema_decay))))

    @property
    def range(self):
        """The (min, max) currently used, bias-corrected; None before the first observation."""
        if not self.observed:
            return None
        n = int(self.num_updates.item())
        correction = 1.0 - self.ema_decay**n if n else 1.0
        return (self.biased_min / correction).item(), (self.biased_max / correction).item()


class WeightFakeQuant(_FakeQuantBase):
    """Fake quantization of a parameter, per tensor or per output channel; used as a parametrization.

    The range is the parameter's current min/max, so the FP32 master weight is the only
    copy kept. When frozen (not observing), the last scale and zero point are reused.
    """

    def __init__(self, bits, mode, per_channel=False, channels=1, axis=0):
        super().__init__(bits, mode, channels if per_channel else 1)
        self.per_channel = per_channel
        self.axis = axis

    def forward(self, w):
        if not self.enabled:
            return w
        if self.observing or not self.observed:
            self.observe(w)
        if self.per_channel:
            return torch.fake_quantize_per_channel_affine(
                w, self.scale, self.zero_point, self.axis, self.qmin, self.qmax
            )
        return torch.fake_quantize_per_tensor_affine(w, self.scale, self.zero_point, self.qmin, self.qmax)

    @torch.no_grad()
    def observe(self, w):
        self.observed = True
        if self.per_channel:
            mn, mx = torch.aminmax(w.detach().transpose(0, self.axis).flatten(1), dim=1)
        else:
            mn, mx = torch.aminmax(w.detach())
            mn, mx = mn.reshape(1), mx.reshape(1)
        scale, zero_point = qparams_from_range(mn, mx, self.bits, self.mode)
        self.scale.copy_(scale)
        self.zero_point.copy_(zero_point)

    def extra_repr(self):
        return super().extra_repr() + f", per_channel={self.per_channel}"
