"""Observers: what range a tensor has, kept apart from how it is fake-quantized (as torch.ao separates them).

``EmaMinMaxObserver`` is Distiller's QAT range tracker: a moving average of each batch's min and max
with the bias correction 1 - decay^n, so the first batches are not pulled towards 0.
``MinMaxObserver`` is the current tensor's own range, per tensor or per channel (weights, and
dynamic/online post-training activations). Both return (lo, hi) tensors; fake quantizers turn a
range into scale and zero point.
"""

import math

import torch
from torch import nn


class EmaMinMaxObserver(nn.Module):
    """Bias-corrected exponential moving average of per-batch min/max (Distiller's QAT)."""

    def __init__(self, ema_decay=0.999):
        super().__init__()
        self.ema_decay = float(ema_decay)
        # buffers, not Python numbers: DataParallel keeps in-place buffer updates of replica 0
        self.register_buffer("num_updates", torch.zeros(1, dtype=torch.int64))
        self.register_buffer("biased_min", torch.zeros(1))
        self.register_buffer("biased_max", torch.zeros(1))

    @torch.no_grad()
    def update(self, mn, mx):
        """Fold one batch's min and max into the average; returns the bias-corrected (lo, hi)."""
        self.num_updates += 1
        weight = 1.0 - self.ema_decay
        self.biased_min.lerp_(mn.float().reshape(1), weight)
        self.biased_max.lerp_(mx.float().reshape(1), weight)
        return self.corrected()

    def corrected(self):
        """The bias-corrected (lo, hi) after at least one update."""
        correction = 1.0 - torch.pow(self.ema_decay, self.num_updates).float()
        return self.biased_min / correction, self.biased_max / correction

    @torch.no_grad()
    def reset(self, lo, hi, settled=False):
        """Start over from [lo, hi]; ``settled``: as if after enough batches that the bias correction is 1,
        so later batches move the average from [lo, hi] at the normal rate (calibrate-then-train)."""
        self.biased_min.copy_(lo)
        self.biased_max.copy_(hi)
        steps = 0
        if settled and self.ema_decay > 0:
            steps = int(math.ceil(math.log(1e-9) / math.log(self.ema_decay)))  # decay**steps < 1e-9
        self.num_updates.fill_(steps)


class MinMaxObserver(nn.Module):
    """The tensor's own min/max, per tensor or per channel along ``axis``; keeps no state."""

    def __init__(self, per_channel=False, axis=0):
        super().__init__()
        self.per_channel, self.axis = per_channel, axis

    @torch.no_grad()
    def forward(self, x):
        if self.per_channel:
            return torch.aminmax(x.detach().transpose(0, self.axis).flatten(1), dim=1)
        mn, mx = torch.aminmax(x.detach())
        return mn.reshape(1), mx.reshape(1)
