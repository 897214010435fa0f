"""Integer-only arithmetic for quantized conv/linear layers, as an integer kernel computes it.

The layer sees integer inputs ``q_x - z_x`` and integer weights ``q_w - z_w``; products are summed,
with an int32 bias ``round(b / (s_x * s_w))``, in an accumulator of ``bits_accum`` bits that
saturates; the sum is requantized to the output grid with the multiplier
``M = s_x * s_w / s_y``: as a float, as a fixed-point multiplier plus shift (gemmlowp style,
``scale_approx_mult_bits``), or as a power of two (shift only, Courbariaux et al.). Values are
held in float64, which represents every integer an accumulator of up to 53 bits can hold, so the
arithmetic is exact. It runs as a forward hook that replaces the layer's output with the
dequantized integer result, so the graph, the module names and the checkpoints stay as they are.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def approx_multiplier(m, mult_bits):
    """(mult, shift) with mult / 2**shift ~= m and mult < 2**mult_bits (Distiller's formula)."""
    m = torch.as_tensor(m, dtype=torch.float64)
    shift = torch.floor(torch.log2((2**mult_bits - 1) / m))
    mult = torch.floor(m * 2**shift)
    return mult, shift


def power_of_two(m):
    """The power of two nearest (in log scale) to ``m``: requantization by a shift alone."""
    m = torch.as_tensor(m, dtype=torch.float64)
    return torch.pow(2.0, torch.round(torch.log2(m)))


class IntegerArithmetic:
    """Forward hook of a conv/linear whose input, weights and output are all quantized."""

    def __init__(self, weight_quant, in_quant, out_quant, bits_accum=32, mult_bits=None, pow2=False):
        self.weight_quant, self.in_quant, self.out_quant = weight_quant, in_quant, out_quant
        self.bits_accum, self.mult_bits, self.pow2 = bits_accum, mult_bits, pow2
        self.enabled = True  # off: the layer keeps its fake-quantized float32 output (fast calibration passes)

    @staticmethod
    def _conv(layer, x, w):
        if isinstance(layer, nn.Linear):
            return F.linear(x, w)
        dims = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}
        fn = next(f for t, f in dims.items() if isinstance(layer, t))
        if layer.padding_mode != "zeros":
            raise NotImplementedError("integer simulation supports zero padding only")
        return fn(x, w, None, layer.stride, layer.padding, layer.dilation, layer.groups)

    def multiplier(self):
        s_x, s_w, s_y = (q.scale.double() for q in (self.in_quant, self.weight_quant, self.out_quant))
        m = s_x * s_w / s_y
        if self.pow2:
            return power_of_two(m)
        if self.mult_bits:
            mult, shift = approx_multiplier(m, self.mult_bits)
            return mult / torch.pow(2.0, shift)
        return m

    def active(self):
        quants = (self.in_quant, self.out_quant, self.weight_quant)
        # a dynamic output range is only known after the layer ran: keep the float path then
        return (
            self.enabled
            and all(q.enabled and q.observed for q in quants)
            and not self.out_quant.dynamic
            and not self.in_quant.dynamic
        )

    @torch.no_grad()
    def __call__(self, layer, inputs, output):
        if not self.active():
            return None
        return self.compute(layer, inputs[0]).to(output.dtype)

    def compute(self, layer, x):
        """The dequantized output of the integer computation; x and the weight are on their grids."""
        w = layer.weight  # fake-quantized by the parametrization
        s_x = self.in_quant.scale.double()
        s_w = self.weight_quant.scale.double()
        shape = (-1,) + (1,) * (w.dim() - 1)
        q_w = torch.round(w.double() / s_w.view(shape))  # q_w - z_w
        q_x = torch.round(x.double() / s_x)  # q_x - z_x
        acc = self._conv(layer, q_x, q_w)
        channel = (1, -1) + (1,) * (acc.dim() - 2)
        if layer.bias is not None:
            acc = acc + integer_bias(layer.bias, self.in_quant.scale, self.weight_quant.scale).view(channel)
        lim = 2 ** (self.bits_accum - 1)
        acc = acc.clamp(-lim, lim - 1)
        out = self.out_quant
        if self.pow2 or self.mult_bits:
            q_y = torch.round(acc * self.multiplier().view(channel))
        else:  # float32, as onnxruntime (MLAS) and fbgemm requantize: float(acc) * float32 multiplier
            m = self.in_quant.scale.float() * self.weight_quant.scale.float() / out.scale.float()
            q_y = torch.round(acc.float() * m.view(channel)).double()
        q_y = q_y + out.zero_point.double()
        q_y = q_y.clamp(out.qmin, out.qmax)
        return (q_y - out.zero_point.double()) * out.scale.double()


def integer_bias(bias, in_scale, weight_scale):
    """The int32 bias on the accumulator's grid (scale ``s_x * s_w``), rounded in float32 as a QDQ
    runtime quantizes it (onnxruntime's BiasQuantization); the ONNX writer stores these integers."""
    return torch.round(bias.detach().float() / (in_scale.float() * weight_scale.float())).double()


def accumulator_bits(w_bits, a_bits, fan_in):
    return w_bits + a_bits + math.ceil(math.log2(max(fan_in, 1)))
