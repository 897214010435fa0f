"""Weight quantizers of the training-based low-bit methods, used as parametrizations of conv/linear weights.

Each maps the FP32 master weight (the only copy kept) to a few levels in the forward pass;
gradients reach the master weight straight through (or as the method's paper says).
"""

import torch
from torch import nn

from compressor.quantization.low_bit.ste import RoundSTE, TernarizeTTQ
from compressor.quantization.quant_module import QuantModule


def _straight_through(w, quantized):
    """``quantized`` forward, identity gradient to ``w``."""
    return w + (quantized - w).detach()


class DorefaWeight(QuantModule):
    """DoReFa (Zhou S. et al. 2016): tanh-normalise to [0, 1], quantize to 2^bits - 1 steps, map to [-1, 1].

    One bit: sign(w) scaled by E|w| (a constant in the backward pass), straight-through gradient.
    """

    METHOD = "dorefa"

    def forward(self, w):
        if not self.enabled:
            return w
        if self.bits == 1:
            scale = w.detach().abs().mean()
            return _straight_through(w, torch.where(w >= 0, scale, -scale))
        t = torch.tanh(w)
        t = t / (2 * t.abs().max()) + 0.5
        levels = 2**self.bits - 1
        return 2 * RoundSTE.apply(t * levels) / levels - 1


class WRPNWeight(QuantModule):
    """WRPN (Mishra et al. 2018): clamp to [-1, 1], quantize symmetrically to 2^(bits-1) - 1 steps per side."""

    METHOD = "wrpn"

    def forward(self, w):
        if not self.enabled:
            return w
        n = 2 ** (self.bits - 1) - 1
        return RoundSTE.apply(w.clamp(-1, 1) * n) / n


class XnorWeight(QuantModule):
    """XNOR-Net binary weights (Rastegari et al. 2016): sign(w) times mean |w| of each output channel."""

    METHOD = "xnor"

    def __init__(self, bits=1):
        super().__init__(1)

    def forward(self, w):
        if not self.enabled:
            return w
        dims = tuple(range(1, w.dim()))
        alpha = w.detach().abs().mean(dim=dims, keepdim=True) if dims else w.detach().abs()
        return _straight_through(w, torch.where(w >= 0, alpha, -alpha))


class TernaryWeight(QuantModule):
    """Ternary Weight Networks (Li et al. 2016): threshold 0.7 mean|w|, scale = mean |w| above it; per layer."""

    METHOD = "twn"
    THRESHOLD = 0.7

    def __init__(self, bits=2):
        super().__init__(2)

    def forward(self, w):
        if not self.enabled:
            return w
        wd = w.detach()
        delta = self.THRESHOLD * wd.abs().mean()
        keep = wd.abs() > delta
        alpha = (wd.abs() * keep).sum() / keep.sum().clamp(min=1)  # 0 with none kept; no branch, no device sync
        return _straight_through(w, alpha * torch.sign(wd) * keep.to(wd.dtype))


class TrainedTernaryWeight(QuantModule):
    """Trained Ternary Quantization (Zhu et al. 2016): {+wp, 0, -wn} with wp, wn learned per layer.

    The threshold is 0.05 max|w|; wp and wn start, the first time the layer is quantized, at the
    mean magnitude of the weights above and below it (so fine-tuning from FP32 starts close to it).
    """

    METHOD = "ttq"
    def param_group(self):
        return {"name": "ttq_scales", "weight_decay": 0.0}
    THRESHOLD = 0.05

    def __init__(self, bits=2):
        super().__init__(2)
        self.wp = nn.Parameter(torch.ones(1))
        self.wn = nn.Parameter(torch.ones(1))
        self.register_buffer("initialized", torch.zeros(1, dtype=torch.bool))
        self._ready = False

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._ready = False  # look at the loaded ``initialized`` once more
    def forward(self, w):
        if not self.enabled:
            return w
        delta = self.THRESHOLD * w.detach().abs().max()
        if not self._ready:  # a Python flag: reading the buffer every step would sync a GPU each step
            self._init_scales(w.detach(), delta)
            self._ready = True
        return TernarizeTTQ.apply(w, self.wp, self.wn, delta)

    @torch.no_grad()
    def _init_scales(self, w, delta):
        """Start the scales at the mean of the weights above +delta and below -delta (delta where there are none),
        unless ``initialized`` (loaded): tensor arithmetic only, so torch.compile traces it without a break."""
        pos, neg = w > delta, w < -delta
        wp = torch.where(pos.any(), (w * pos).sum() / pos.sum().clamp(min=1), delta)
        wn = torch.where(neg.any(), -(w * neg).sum() / neg.sum().clamp(min=1), delta)
        self.wp.copy_(torch.where(self.initialized, self.wp, wp.reshape(1)))
        self.wn.copy_(torch.where(self.initialized, self.wn, wn.reshape(1)))
        self.initialized.fill_(True)


WEIGHT_METHODS = {"DOREFA": DorefaWeight, "WRPN": WRPNWeight, "XNOR": XnorWeight, "TWN": TernaryWeight,
                  "TTQ": TrainedTernaryWeight}
# bits a method stores per weight, whatever bits_weights says (binary: 1, ternary: 2)
FIXED_BITS = {"XNOR": 1, "TWN": 2, "TTQ": 2}
