"""Bounded, quantized activations that stand in for ReLU (DoReFa, WRPN, PACT) and binary activations.

Each module sits after a ReLU site: clamping a ReLU's output to [0, clip] is the
clipped ReLU these methods replace ReLU with, so model code needs no change.
"""

import torch
from torch import nn

from compressor.quantization.low_bit.ste import ClipQuantize, SignSTE
from compressor.quantization.quant_module import QuantModule, float32_arithmetic


class ClippedLinearQuant(QuantModule):
    """clamp(x, 0, clip) quantized to 2^bits - 1 uniform steps; a fixed clip (DoReFa and WRPN use 1)."""

    METHOD = "clipped"

    def __init__(self, bits, clip_val=1.0):
        super().__init__(bits)
        self.levels = float(2**bits - 1)
        self.register_buffer("clip_val", torch.tensor([float(clip_val)]))

    @float32_arithmetic
    def forward(self, x):
        if not self.enabled:
            return x
        return ClipQuantize.apply(x, self.clip_val, self.levels)

    def extra_repr(self):
        return super().extra_repr() + f", clip_val={self.clip_val.item():.4g}"


class LearnedClipQuant(ClippedLinearQuant):
    """PACT: the clip value is a parameter learned per layer; L2 decay on it through its optimizer group."""

    METHOD = "pact"

    def __init__(self, bits, clip_val=8.0, clip_decay=0.0):
        super().__init__(bits, clip_val)
        del self.clip_val
        self.clip_val = nn.Parameter(torch.tensor([float(clip_val)]))
        self.clip_decay = float(clip_decay)

    def param_group(self):
        return {"name": "pact_clip_values", "weight_decay": self.clip_decay}


class BinaryActivation(QuantModule):
    """sign(x) in {-1, +1} in place of the ReLU it follows (binary activations, XNOR-Net/BNN)."""

    METHOD = "binary"
    REPLACES_ACTIVATION = True  # placed on the activation's input: the ReLU itself is removed

    def __init__(self):
        super().__init__(1)

    def forward(self, x):
        if not self.enabled:
            return torch.relu(x)  # the ReLU it replaced, while the model is still FP32
        return SignSTE.apply(x)
