"""Quantization-aware training with range-based linear quantization (Distiller's
``QuantAwareTrainRangeLinearQuantizer``): weights fake-quantized from their current
range, activations from an EMA of their range, straight-through gradients."""

from compressor.core.spec import Bits, Bool, Float
from compressor.quantization.modes import Mode
from compressor.quantization.fake_quant import ActivationFakeQuant, WeightFakeQuant
from compressor.quantization.graph.sites import LAYER_TYPES
from compressor.quantization.modes import parse_mode
from compressor.quantization.quantizer import FP_BITS, Quantizer, is_quantized

_QAT_BITS = dict(lo=2, hi=16, fp_values=(FP_BITS,))


class QuantAwareTrainRangeLinearQuantizer(Quantizer):
    EXPORTABLE = True
    PARAMS = {
        **Quantizer.PARAMS,
        "bits_activations": Bits(FP_BITS, **_QAT_BITS),
        "bits_weights": Bits(FP_BITS, **_QAT_BITS),
        "bits_bias": Bits(FP_BITS, **_QAT_BITS),
        "mode": Mode("SYMMETRIC"),
        "ema_decay": Float(0.999, lo=0.0, hi=1.0, hi_open=True),
        "per_channel_wts": Bool(False),
        "quantize_inputs": Bool(True),
        "num_bits_inputs": Bits(None, **_QAT_BITS),
    }
    LAYER_KEYS = {"bits_activations", "bits_weights", "bits_bias", "mode", "ema_decay", "per_channel_wts"}

    def make_activation_quantizer(self, site, settings):
        bits = settings["bits_activations"]
        if site.name == "input" and self.config["num_bits_inputs"] is not None:
            bits = self.config["num_bits_inputs"]
        if not is_quantized(bits):
            return None
        acts_mode, _ = parse_mode(settings["mode"])
        return ActivationFakeQuant(bits, acts_mode, settings["ema_decay"])

    def make_weight_quantizer(self, module, pname, param, settings):
        bits = settings["bits_weights" if pname == "weight" else "bits_bias"]
        if not is_quantized(bits):
            return None
        _, wts_mode = parse_mode(settings["mode"])
        per_channel = settings["per_channel_wts"] and pname == "weight" and param.dim() > 1
        axis = 1 if isinstance(module, LAYER_TYPES) and "Transpose" in type(module).__name__ else 0
        return WeightFakeQuant(bits, wts_mode, per_channel, param.shape[axis], axis)
