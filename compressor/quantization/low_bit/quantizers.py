"""Training-based low-bit quantizers with Distiller's names: DoReFa, WRPN and PACT.

They share one shape: weights through a low-bit weight transform (DoReFa's, WRPN's, or per
layer binary/ternary ones), and every ReLU output clamped and quantized, which bounds the
activation as these methods require. Non-ReLU activations (e.g. a residual add without a
ReLU after it) stay in floating point, as in Distiller.
"""

import dataclasses
import logging

from compressor.core.spec import Bits, Bool, Choice, Float, Int, setting
from compressor.quantization.graph.widen import widen_model, widen_state_dict
from compressor.quantization.low_bit.activations import BinaryActivation, ClippedLinearQuant, LearnedClipQuant
from compressor.quantization.low_bit.weights import FIXED_BITS, WEIGHT_METHODS
from compressor.quantization.quantizer import FP_BITS, Quantizer, QuantizerConfig, is_quantized

log = logging.getLogger(__name__)
_LOW_BITS = dict(lo=1, hi=16, fp_values=(FP_BITS,))


@dataclasses.dataclass(frozen=True, kw_only=True)
class LowBitConfig(QuantizerConfig):
    bits_activations: int | None = setting(
        Bits(FP_BITS, **_LOW_BITS), "bits of ReLU outputs; 32 or null keep FP32", layer=True
    )
    bits_weights: int | None = setting(Bits(FP_BITS, **_LOW_BITS), "bits of conv/linear weights", layer=True)
    bits_bias: int | None = setting(Bits(FP_BITS, **_LOW_BITS), "bits of biases", layer=True)
    weights_method: str | None = setting(
        Choice(None, list(WEIGHT_METHODS)),
        "DOREFA, WRPN, XNOR (binary: layers at 1 bit), TWN or TTQ (ternary: layers "
        "at 2 bits); layers at other widths keep the class's own method",
        layer=True,
    )
    binary_activations: bool = setting(Bool(False), "sign(x) in place of ReLU (XNOR-Net/BNN)", layer=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class WRPNConfig(LowBitConfig):
    width_multiplier: int = setting(
        Int(1, lo=1, hi=16), "widen conv/linear layers (Net2Net-style, function-preserving)"
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class PACTConfig(LowBitConfig):
    act_clip_init_val: float = setting(Float(8.0, lo=0.0, lo_open=True), "initial learned clip value of each ReLU")
    act_clip_decay: float = setting(Float(0.0, lo=0.0), "weight decay of the clip values (their own optimizer group)")


class ClippedReLUQuantizer(Quantizer):
    """Base: subclasses set ``WEIGHTS`` (default weight method) and ``make_clipped_activation``."""

    CONFIG = LowBitConfig
    WEIGHTS = "DOREFA"

    def make_activation_quantizer(self, site, settings):
        if not site.relu:
            return None
        if settings.binary_activations:
            return BinaryActivation()
        bits = settings.bits_activations
        return self.make_clipped_activation(bits) if is_quantized(bits) else None

    def make_clipped_activation(self, bits):
        return ClippedLinearQuant(bits, 1.0)

    def make_weight_quantizer(self, module, pname, param, settings):
        bits = settings.bits_weights if pname == "weight" else settings.bits_bias
        if not is_quantized(bits):
            return None
        method = (settings.weights_method or self.WEIGHTS).upper() if pname == "weight" else self.WEIGHTS
        if FIXED_BITS.get(method, bits) != bits:
            method = self.WEIGHTS  # a binary/ternary method covers the layers at its width; others keep the class's
        if bits < 2 and method in ("WRPN",):
            raise ValueError(f"{method} weights need at least 2 bits; use weights_method: XNOR for binary weights")
        return WEIGHT_METHODS[method](bits)


class DorefaQuantizer(ClippedReLUQuantizer):
    """DoReFa-Net (Zhou S. et al. 2016): tanh-normalised weights, activations clipped to [0, 1]."""


class WRPNQuantizer(ClippedReLUQuantizer):
    """WRPN (Mishra et al. 2018): weights clamped to [-1, 1], activations to [0, 1], layers
    ``width_multiplier`` wider."""

    CONFIG = WRPNConfig
    WEIGHTS = "WRPN"

    def prepare_model(self):
        factor = self.config.width_multiplier
        if self.prepared is None and factor > 1:
            old = dict(self.model.named_parameters())
            self.plan = widen_model(self.model, factor)
            new = dict(self.model.named_parameters())
            swap = {id(old[k]): new[k] for k in old if k in new and new[k] is not old[k]}
            for group in self.optimizer.param_groups if self.optimizer else []:
                group["params"] = [swap.get(id(p), p) for p in group["params"]]
            log.info("WRPN: conv/linear layers widened %dx", factor)
        return super().prepare_model()

    def adapt_weights(self, state):
        """Narrow FP32 weights (the model before widening) are widened to fit; wide ones pass as they are."""
        plan = getattr(self, "plan", None)
        if not plan:
            return state
        target = self.prepared.state_dict()
        probe = next((k for k in state if k.rsplit(".", 1)[0] in plan and k.endswith("weight")), None)
        if probe is None:
            return state
        wide_key = probe if probe in target else probe.rsplit(".", 1)[0] + ".parametrizations.weight.original"
        if wide_key in target and tuple(state[probe].shape) == tuple(target[wide_key].shape):
            return state
        log.info("WRPN: widening the loaded FP32 weights %dx", self.config.width_multiplier)
        return widen_state_dict(state, plan, self.config.width_multiplier)


class PACTQuantizer(ClippedReLUQuantizer):
    """PACT (Choi et al. 2018): DoReFa weights, activations clipped at a value learned per layer."""

    CONFIG = PACTConfig

    def make_clipped_activation(self, bits):
        return LearnedClipQuant(bits, self.config.act_clip_init_val, self.config.act_clip_decay)
