"""Incremental Network Quantization (Zhou A. et al. 2017): quantize a growing share of each layer's weights
to powers of two, keep that share frozen, and retrain the rest in between.

The recipe's quantizer policy lists the epochs (``epochs: [0, 3, 6, 9]``) and the quantizer
the accumulated portions (``accumulated_portions: [0.5, 0.75, 0.875, 1.0]``): at the k-th
listed epoch the largest-magnitude weights not yet frozen are quantized until the layer's
frozen share reaches the k-th portion. Masks and frozen values are buffers, so a resumed run
continues exactly.
"""

import dataclasses
import math

import torch

from compressor.core.spec import Bits, Config, Overrides, Spec, setting
from compressor.quantization.quant_module import QuantModule
from compressor.quantization.quantizer import FP_BITS, Quantizer, is_quantized


class Portions(Spec):
    def check(self, value):
        ok = isinstance(value, list) and value and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1 for v in value)
        if not ok or any(b <= a for a, b in zip(value, value[1:])):
            return f"expected an increasing list of fractions in (0, 1], e.g. [0.5, 0.75, 0.875, 1.0], got {value!r}"
        return None


def power_of_two_levels(w, n1, bits):
    """Nearest value of {0, ±2^n2, ..., ±2^n1} with n2 = n1 + 1 - 2^(bits-1)/2 (INQ's codebook)."""
    n2 = n1 + 1 - 2 ** (bits - 1) // 2
    a = w.abs()
    k = torch.floor(torch.log2(a.clamp_min(2.0**n2))).clamp(n2, n1)
    low = torch.pow(2.0, k)
    q = torch.where((a >= 1.5 * low) & (k < n1), 2 * low, low)
    q = torch.where(a < 2.0 ** (n2 - 1), torch.zeros_like(q), q)
    return q * torch.sign(w)


class INQWeight(QuantModule):
    METHOD = "inq"

    def __init__(self, shape, bits):
        super().__init__(bits)
        self.register_buffer("mask", torch.zeros(shape, dtype=torch.bool))
        self.register_buffer("frozen", torch.zeros(shape))
        self.register_buffer("portion", torch.zeros(1))
        self.register_buffer("n1", torch.zeros(1, dtype=torch.int64))

    def forward(self, w):
        if not self.enabled:
            return w
        return torch.where(self.mask, self.frozen, w)

    @torch.no_grad()
    def freeze_to(self, w, portion):
        """Quantize and freeze the largest unfrozen weights until ``portion`` of them are frozen."""
        if portion <= self.portion.item():
            return
        if self.portion.item() == 0:
            self.n1.fill_(math.floor(math.log2(4 * w.abs().max().item() / 3)))
        target = round(portion * w.numel())
        needed = target - int(self.mask.sum())
        if needed > 0:
            score = w.abs().flatten().masked_fill(self.mask.flatten(), -1.0)
            chosen = torch.topk(score, needed).indices
            self.mask.view(-1)[chosen] = True
            self.frozen.view(-1)[chosen] = power_of_two_levels(w.flatten()[chosen], int(self.n1), self.bits)
        self.portion.fill_(portion)


@dataclasses.dataclass(frozen=True, kw_only=True)
class INQConfig(Config):
    bits_weights: int | None = setting(Bits(5, lo=2, hi=8, fp_values=(FP_BITS,)),
                                       "bits of the power-of-two weights (INQ uses 5)", layer=True)
    accumulated_portions: list = setting(Portions(), "share of each layer frozen at each epoch the policy lists, "
                                         "e.g. [0.5, 0.75, 0.875, 1.0]")
    overrides: dict | None = setting(Overrides(), "per-layer settings: module name or regex -> per-layer keys")


class INQQuantizer(Quantizer):
    """Weights only, to ``bits_weights``-bit powers of two (INQ uses 5), frozen in growing portions."""

    CONFIG = INQConfig

    @staticmethod
    def check_policy_epochs(args, epochs):
        """A message when the policy's epochs do not pair with the portions (one freezing step per epoch listed)."""
        portions = args.get("accumulated_portions")
        if isinstance(portions, list) and len(portions) != len(epochs):
            return (f"INQQuantizer has {len(portions)} accumulated_portions but its policy lists "
                    f"{len(epochs)} epochs; each listed epoch takes the next portion")
        return None

    def make_activation_quantizer(self, site, settings):
        return None

    def make_weight_quantizer(self, module, pname, param, settings):
        if pname != "weight" or not is_quantized(settings.bits_weights):
            return None
        return INQWeight(param.shape, settings.bits_weights)

    def schedule_epoch(self, epoch, epochs):
        """Called by the quantization policy at each epoch start: freeze the portion due by ``epoch``."""
        due = [p for e, p in zip(epochs, self.config.accumulated_portions) if e <= epoch]
        if not due:
            return
        for key, quant in self.weight_quantizers.items():
            module_name, pname = key.rsplit(".", 1)
            module = self.prepared.get_submodule(module_name)
            quant.freeze_to(module.parametrizations[pname].original.detach(), due[-1])
