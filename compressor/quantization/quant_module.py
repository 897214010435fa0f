"""The one interface of every module a quantizer inserts: activation quantizers at graph sites and weight
quantizers registered as parametrizations, for the linear family and the low-bit family alike.

The quantization policy switches them (``set_state``); the per-layer table reads ``bits`` and
``METHOD``; the quantizer adds their own parameters to the optimizer in the group ``param_group()``
describes; the graph layer removes the activation a module stands in for when
``REPLACES_ACTIVATION``; deployment converts only ``EXPORTABLE`` modules. The switches travel in
``state_dict`` as extra state, so a checkpoint evaluates and resumes in the phase it was saved in.
"""

from typing import ClassVar

import torch
from torch import nn


def float32_arithmetic(forward):
    """Quantizer arithmetic in float32 under --amp: a bf16/fp16 input (autocast's conv output) is widened and
    ranges, scales and rounding are computed with autocast off, so the quantized values are the ones an FP32 run
    computes from the same input values (tests/unit/quantization/test_fake_quant.py)."""

    def wrapped(self, x):
        if torch.is_tensor(x) and x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        if torch.is_autocast_enabled(x.device.type if torch.is_tensor(x) else "cpu"):
            with torch.autocast(x.device.type, enabled=False):
                return forward(self, x)
        return forward(self, x)

    wrapped.__doc__ = forward.__doc__
    return wrapped


class QuantModule(nn.Module):
    METHOD: ClassVar[str] = ""  # how this module quantizes, for the per-layer table
    EXPORTABLE: ClassVar[bool] = False  # integer runtimes compute its levels as such (compressor.deploy)
    REPLACES_ACTIVATION: ClassVar[bool] = False  # placed on the activation's input; the activation is removed

    def __init__(self, bits):
        super().__init__()
        self.bits = bits
        self.enabled = False  # quantize at all
        self.observing = True  # update ranges (where the module has any)

    def set_state(self, enabled, observing):
        self.enabled = enabled
        self.observing = observing

    def param_group(self):
        """Options of the optimizer group this module's own parameters join (``name`` plus e.g. weight_decay),
        or None when it has no parameters of its own."""
        return None

    def get_extra_state(self):
        return {"enabled": self.enabled, "observing": self.observing}

    def set_extra_state(self, state):
        self.enabled = bool(state["enabled"])
        self.observing = bool(state.get("observing", True))

    def extra_repr(self):
        return f"bits={self.bits}, method={self.METHOD}, enabled={self.enabled}, observing={self.observing}"
