"""Quantization-aware training with range-based linear quantization (Distiller's
``QuantAwareTrainRangeLinearQuantizer``): weights fake-quantized from their current
range, activations from an EMA of their range, straight-through gradients."""

import dataclasses

from compressor.core.spec import Bits, Bool, Float, setting
from compressor.quantization.fake_quant import ActivationFakeQuant, WeightFakeQuant
from compressor.quantization.modes import Mode, parse_mode
from compressor.quantization.quantizer import FP_BITS, Quantizer, QuantizerConfig, is_quantized

_QAT_BITS = dict(lo=2, hi=16, fp_values=(FP_BITS,))


@dataclasses.dataclass(frozen=True, kw_only=True)
class LinearConfig(QuantizerConfig):
    """Settings shared by the range-based linear quantizers (QAT and post-training)."""

    bits_activations: int | None = setting(Bits(FP_BITS, **_QAT_BITS), "bits of activations; 32 or null keep FP32",
                                           layer=True)
    bits_weights: int | None = setting(Bits(FP_BITS, **_QAT_BITS), "bits of conv/linear/embedding weights",
                                       layer=True)
    bits_bias: int | None = setting(Bits(FP_BITS, **_QAT_BITS), "bits of biases", layer=True)
    mode: str | dict = setting(Mode("SYMMETRIC"), "range mapping: symmetric around 0, or asymmetric with a zero point "
                               "(one mode for both, or one each)", layer=True)
    per_channel_wts: bool = setting(Bool(False), "one scale per output channel for weights", layer=True)
    quantize_inputs: bool = setting(Bool(True), "quantize the model input")

    @property
    def acts_mode(self):
        return parse_mode(self.mode)[0]

    @property
    def wts_mode(self):
        return parse_mode(self.mode)[1]


@dataclasses.dataclass(frozen=True, kw_only=True)
class QATConfig(LinearConfig):
    ema_decay: float = setting(Float(0.999, lo=0.0, hi=1.0, hi_open=True),
                               "decay of the bias-corrected moving average of activation min/max", layer=True)
    num_bits_inputs: int | None = setting(Bits(None, **_QAT_BITS), "bits of the model input (null: bits_activations)")


def make_linear_weight_quantizer(module, param, bits, settings):
    """The linear family's weight fake-quantizer: per tensor, or per output channel (axis 1 for transposed convs)."""
    per_channel = settings.per_channel_wts and param.dim() > 1
    axis = 1 if "Transpose" in type(module).__name__ else 0
    return WeightFakeQuant(bits, settings.wts_mode, per_channel, param.shape[axis], axis)


class QuantAwareTrainRangeLinearQuantizer(Quantizer):
    CONFIG = QATConfig
    EXPORTABLE = True

    def quantize_inputs(self):
        return self.config.quantize_inputs

    def make_activation_quantizer(self, site, settings):
        bits = settings.bits_activations
        if site.name == "input" and self.config.num_bits_inputs is not None:
            bits = self.config.num_bits_inputs
        if not is_quantized(bits):
            return None
        return ActivationFakeQuant(bits, settings.acts_mode, settings.ema_decay)

    def make_weight_quantizer(self, module, pname, param, settings):
        bits = settings.bits_weights if pname == "weight" else settings.bits_bias
        if not is_quantized(bits):
            return None
        if pname != "weight":  # biases: one scale
            settings = dataclasses.replace(settings, per_channel_wts=False)
        return make_linear_weight_quantizer(module, param, bits, settings)
