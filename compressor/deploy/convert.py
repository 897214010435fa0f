"""Simulated quantized model -> PyTorch int8 model (torch.ao.nn.quantized modules, quantized ops).

Deprecated upstream: PyTorch deprecates torch.ao.quantization and quantized tensors (each
conversion warns). This is the only module that uses them; the ONNX export does not (it is
written from ``reference.reference_graph``), so ``--export-onnx`` outlives this path.

The prepared model's fx graph is walked once. A conv/linear whose input is quantized and whose
output chain (batch-norm, ReLU) ends in an activation fake-quantizer becomes one quantized
module (ConvReLU2d etc.) with that quantizer's scale and zero point; a batch-norm left in the
chain (QAT) is folded into the integer weights' per-channel scales, so the integers are those
the simulation used. Adds and concatenations followed by a quantizer become quantized ops;
pooling, flattening and ReLU run on quantized tensors as they are. Anything else runs in
floating point between a dequantize and a quantize, so any traceable model converts.

Limits, said where they apply: weights must be symmetric to be used as they are (the integer
kernels take weight zero point 0); asymmetric ones are re-quantized symmetric per channel
(logged, close but not bit-exact). Fewer than 8 bits are computed as 8-bit integers on the
same grid (a runtime has no INT4 kernels here).
"""

import copy
import logging
import operator

import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils import parametrize

from compressor.core.errors import ConversionError
from compressor.quantization.fake_quant import ActivationFakeQuant, WeightFakeQuant
from compressor.quantization.graph.sites import NORM_TYPES
from compressor.quantization.linear.integer_sim import integer_bias
from compressor.quantization.quant_module import QuantModule

log = logging.getLogger(__name__)



_QUANTIZED_LAYERS = {  # float type -> (quantized type, quantized type with ReLU fused)
    nn.Conv1d: (nnq.Conv1d, nniq.ConvReLU1d),
    nn.Conv2d: (nnq.Conv2d, nniq.ConvReLU2d),
    nn.Conv3d: (nnq.Conv3d, nniq.ConvReLU3d),
    nn.Linear: (nnq.Linear, nniq.LinearReLU),
}
_ADDS = {operator.add, operator.iadd, torch.add}
_CATS = {torch.cat, torch.concat}
_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_}
# ops that work on quantized tensors and keep the input's scale and zero point
_PASS_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                 nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.Flatten, nn.ReLU, nn.Dropout,
                 nn.Identity)
_PASS_FUNCTIONS = {torch.flatten, F.max_pool1d, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
                   F.adaptive_avg_pool1d, F.relu, torch.relu, operator.getitem, torch.reshape, F.dropout}
_PASS_METHODS = {"view", "reshape", "flatten", "relu", "contiguous", "size", "dim", "permute", "transpose"}


def _u8_params(quant):
    """(scale, zero point) of an 8-bit-or-less activation quantizer as quint8 (signed grids shift by 128)."""
    if quant.bits > 8:
        raise ConversionError(f"activations at {quant.bits} bits have no 8-bit integer kernel")
    scale = float(quant.scale.item())
    zp = int(quant.zero_point.item()) + (128 if quant.qmin < 0 else 0)
    return scale, zp


def _integer_weight(layer, w, wq, norm):
    """The layer's weight as a per-channel qint8 tensor (BN folded into scales), its float bias, and whether
    the simulation's integers had to be re-quantized (an asymmetric grid does not fit int8 with zero point 0).

    ``w`` is the simulated weight (the FP32 master weight where ``wq``, its fake-quantizer, is None).
    """
    w = w.detach().float()
    out_ch = w.shape[0]
    shape = (-1,) + (1,) * (w.dim() - 1)
    requantized = False
    if wq is None:  # FP32 weights in the simulation: quantize them per channel at 8 bits for the kernel
        scale, q = w.abs().flatten(1).amax(1).clamp_min(1e-12) / 127.0, None
    else:
        scale = wq.scale.detach().float().expand(out_ch).clone() if wq.scale.numel() == 1 else wq.scale.detach().float()
        zp = wq.zero_point.detach().expand(out_ch) if wq.zero_point.numel() == 1 else wq.zero_point.detach()
        q = torch.clamp(torch.round(w / scale.view(shape)) + zp.view(shape), wq.qmin, wq.qmax) - zp.view(shape)
        if q.min() < -128 or q.max() > 127:
            w = q * scale.view(shape)  # the simulated values, re-quantized symmetric per channel
            scale, q, requantized = w.abs().flatten(1).amax(1).clamp_min(1e-12) / 127.0, None, True
    if q is None:
        q = torch.clamp(torch.round(w / scale.view(shape)), -127, 127)
    bias = layer.bias.detach().float() if layer.bias is not None else torch.zeros(out_ch)
    if norm is not None:  # y = gamma * (conv - mean) / sqrt(var + eps) + beta, per output channel
        gamma = norm.weight.detach() if norm.affine else torch.ones(out_ch)
        beta = norm.bias.detach() if norm.affine else torch.zeros(out_ch)
        factor = gamma / torch.sqrt(norm.running_var + norm.eps)
        bias = (bias - norm.running_mean) * factor + beta
        dead = factor == 0  # a channel BN zeroes: its output is the bias alone
        q = torch.where(dead.view(shape), torch.zeros_like(q), q * torch.where(factor < 0, -1.0, 1.0).view(shape))
        q = q.clamp(-128, 127)  # -128 flipped by a negative gamma: one step off, on that value only
        scale = torch.where(dead, torch.ones_like(scale), scale * factor.abs())
    qweight = torch.quantize_per_channel(q * scale.view(shape), scale.double(), torch.zeros(out_ch, dtype=torch.long),
                                         0, torch.qint8)
    return qweight, bias.float(), requantized


def _make_quantized_layer(layer, w, wq, norm, relu, out_params, in_scale):
    qtype = _QUANTIZED_LAYERS[_float_type(layer)][1 if relu else 0]
    if isinstance(layer, nn.Linear):
        qlayer = qtype(layer.in_features, layer.out_features)
    else:
        if layer.padding_mode != "zeros":
            raise ConversionError(f"padding_mode {layer.padding_mode!r} has no quantized kernel")
        qlayer = qtype(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                       layer.dilation, layer.groups, True)
    qweight, bias, requantized = _integer_weight(layer, w, wq, norm)
    # the bias on the accumulator's grid (s_x * s_w), as the simulation and onnxruntime add it (int32): the x86
    # engine's oneDNN kernels add a float bias after scaling, which put 578 of 6.4M conv1 outputs of a resnet18
    # with non-zero batch-norm biases a step off (3 after); a bias already on the grid is the same either way
    in_scale, w_scale = torch.tensor(in_scale), qweight.q_per_channel_scales()
    bias = (integer_bias(bias, in_scale, w_scale) * (in_scale.float() * w_scale.float()).double()).float()
    qlayer.set_weight_bias(qweight, bias)
    qlayer.scale, qlayer.zero_point = out_params
    return qlayer, requantized


def _float_type(module):
    cls = type(module).__bases__[0] if parametrize.is_parametrized(module) else type(module)
    return cls if cls in _QUANTIZED_LAYERS else None


def _weight_quantizers(gm):
    """{module name: (weight, enabled weight fake-quantizer or None)} of parametrized layers: the simulated weight
    where a quantizer is enabled, else the FP32 master weight."""
    weights = {}
    for name, module in gm.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            wq = next((p for p in module.parametrizations.weight if isinstance(p, WeightFakeQuant) and p.enabled), None)
            # the simulated values (torch's fake-quant kernel rounds w * (1 / scale)): their integers are the
            # simulation's; rounding the master weight instead put 9 of resnet18's 9,408 conv1 integers a step off
            weight = module.weight if wq is not None else module.parametrizations.weight.original
            weights[name] = (weight.detach(), wq)
    return weights


def _plain_copy(module):
    """A copy without parametrizations or hooks, holding the simulated (fake-quantized) parameter values.

    (Removing parametrizations from a deep copy would also break the original: they share the
    parametrized class.)
    """
    if not parametrize.is_parametrized(module):
        clone = copy.deepcopy(module)
    else:
        base = type(module).__bases__[0]
        clone = base.__new__(base)
        state = {k: v for k, v in module.__dict__.items() if k not in ("_modules", "_parameters", "forward")}
        clone.__dict__.update(copy.deepcopy(state))
        clone._modules = {k: copy.deepcopy(v) for k, v in module._modules.items() if k != "parametrizations"}
        clone._parameters = {k: copy.deepcopy(v) for k, v in module._parameters.items()}
        for pname in module.parametrizations.keys():
            clone._parameters[pname] = nn.Parameter(getattr(module, pname).detach().clone(), requires_grad=False)
    clone.__dict__.pop("forward", None)  # the integer-arithmetic simulation's forward (IntegerArithmetic.attach)
    clone._forward_hooks.clear()  # e.g. the integer-arithmetic simulation hook
    clone._forward_pre_hooks.clear()
    return clone


class _Converter:
    def __init__(self, gm, for_onnx=False, engine="x86"):
        # qnnpack's clamp of a quantized tensor is wrong (measured: 114 output steps off at 7 bits), so it
        # saturates in floating point between dequantize and quantize, as the ONNX form does
        self.float_clamp = for_onnx or engine == "qnnpack"
        self.weights = _weight_quantizers(gm)
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.env = {}  # old node -> new node
        self.qparams = {}  # old node -> (scale, zp) when its value is a quantized tensor
        self.absorbed = {}  # old node -> old node whose result it is (ops fused into a quantized layer)
        self.count = 0
        self.converted = []
        self.requantized = []  # layers whose asymmetric weights were re-quantized symmetric
        self.weight_bits = {}  # quantized module name -> bits of its weights in the simulation

    def module(self, node):
        return self.modules.get(node.target) if node.op == "call_module" else None

    def add_module(self, base, module):
        self.count += 1
        name = f"{base.replace('.', '_')}_{self.count}"
        self.root.add_module(name, module)
        return name

    def activation_quant(self, node):
        q = self.module(node)
        return q if isinstance(q, ActivationFakeQuant) and q.enabled else None

    def single_user(self, node):
        users = list(node.users)
        return users[0] if len(users) == 1 else None

    def chain_to_quantizer(self, node, allow_norm):
        """(norm, relu, quantizer node) following ``node`` through single users, or None."""
        norm = relu = None
        cur = self.single_user(node)
        if allow_norm and cur is not None and isinstance(self.module(cur), NORM_TYPES):
            norm, cur = cur, self.single_user(cur)
        if cur is not None and (isinstance(self.module(cur), nn.ReLU) or
                                (cur.op == "call_function" and cur.target in _RELU_FUNCTIONS) or
                                (cur.op == "call_method" and cur.target in ("relu", "relu_"))):
            relu, cur = cur, self.single_user(cur)
        if cur is not None and self.activation_quant(cur) is not None:
            return norm, relu, cur
        return None

    # -- value helpers ------------------------------------------------------------------------
    def saturate(self, new, qnode):
        """Clamp to the simulation's integer range where it is narrower than quint8's (below 8 bits, restricted)."""
        quant = self.activation_quant(qnode)
        shift = 128 if quant.qmin < 0 else 0
        if quant.qmin + shift <= 0 and quant.qmax + shift >= 255:
            return new
        scale, zp = float(quant.scale.item()), int(quant.zero_point.item())
        if not self.float_clamp:  # clamp works on quantized tensors, in the integer domain
            return self.graph.call_function(torch.clamp, (new, (quant.qmin - zp) * scale, (quant.qmax - zp) * scale))
        # dequantize -> clamp -> quantize: exports to ONNX as DQ -> Clip -> Q (a clamp on a quantized tensor does not)
        value = self.graph.call_method("dequantize", (new,))
        value = self.graph.call_function(torch.clamp, (value, (quant.qmin - zp) * scale, (quant.qmax - zp) * scale))
        return self.graph.call_function(torch.quantize_per_tensor, (value, *_u8_params(quant), torch.quint8))

    def quantized(self, old, params):
        new = self.env[old]
        if self.qparams.get(old) == params:
            return new
        if old in self.qparams:
            new = self.graph.call_method("dequantize", (new,))
        return self.graph.call_function(torch.quantize_per_tensor, (new, params[0], params[1], torch.quint8))

    def floating(self, value):
        if isinstance(value, fx.Node) and value in self.qparams:
            return self.graph.call_method("dequantize", (self.env[value],))
        if isinstance(value, fx.Node):
            return self.env[value]
        if isinstance(value, (list, tuple)):
            return type(value)(self.floating(v) for v in value)
        return value

    def mapped(self, value):
        return fx.node.map_arg(value, lambda n: self.env[n])

    # -- the walk -------------------------------------------------------------------------------
    def run(self):
        for node in self.gm.graph.nodes:
            if node in self.absorbed:
                src = self.absorbed[node]
                self.env[node] = self.env[src]
                if src in self.qparams:
                    self.qparams[node] = self.qparams[src]
                continue
            getattr(self, f"do_{node.op}")(node)
        return fx.GraphModule(self.root, self.graph)

    def do_placeholder(self, node):
        self.env[node] = self.graph.placeholder(node.target)

    def do_output(self, node):
        self.graph.output(fx.node.map_arg(node.args[0], lambda n: self.floating(n)))

    def do_get_attr(self, node):
        value = self.gm
        for part in node.target.split("."):
            value = getattr(value, part)
        name = self.add_module("const", nn.Module())
        setattr(self.root, name + "_value", value)
        self.env[node] = self.graph.get_attr(name + "_value")

    def do_call_module(self, node):
        module = self.module(node)
        quant = self.activation_quant(node)
        if quant is not None:
            params = _u8_params(quant)
            if getattr(quant, "dynamic", False):
                raise ConversionError("activation ranges are dynamic (no calibration): an integer model needs fixed "
                                      "ranges; calibrate (--qe-calibration / calibration data) or give stats first")
            self.env[node] = self.saturate(self.quantized(node.args[0], params), node)
            self.qparams[node] = params
            return
        if isinstance(module, (ActivationFakeQuant,)):  # disabled quantizer: identity
            self.env[node] = self.env[node.args[0]]
            if node.args[0] in self.qparams:
                self.qparams[node] = self.qparams[node.args[0]]
            return
        if _float_type(module) is not None and self.convert_layer(node, module):
            return
        if isinstance(module, _PASS_MODULES) and node.args[0] in self.qparams:
            self.copy_module(node, module, keep_quantized=True)
            return
        self.copy_module(node, module, keep_quantized=False)

    def convert_layer(self, node, layer):
        src = node.args[0]
        chain = self.chain_to_quantizer(node, allow_norm=True)
        if src not in self.qparams or chain is None:
            return False
        norm, relu, qnode = chain
        if norm is not None and self.module(norm).training:
            raise ConversionError("convert a model in eval mode")
        w, wq = self.weights.get(node.target, (layer.weight, None))
        params = _u8_params(self.activation_quant(qnode))
        qlayer, requantized = _make_quantized_layer(layer, w, wq, self.module(norm) if norm else None,
                                                    relu is not None, params, self.qparams[src][0])
        name = self.add_module(node.target, qlayer)
        self.weight_bits[name] = wq.bits if wq is not None else 8
        self.env[node] = self.saturate(self.graph.call_module(name, (self.env[src],)), qnode)
        self.qparams[node] = params
        for n in (norm, relu):
            if n is not None:
                self.absorbed[n] = node
        self.converted.append(node.target)
        if requantized:
            self.requantized.append(node.target)
            self.weight_bits[name] = 8
        return True

    def copy_module(self, node, module, keep_quantized):
        name = self.add_module(node.target, _plain_copy(module))
        if keep_quantized:
            self.env[node] = self.graph.call_module(name, self.mapped(node.args), self.mapped(node.kwargs))
            self.qparams[node] = self.qparams[node.args[0]]
        else:
            self.env[node] = self.graph.call_module(name, self.floating(node.args), self.floating(node.kwargs))

    def do_call_function(self, node):
        if node.target in _ADDS or node.target in _CATS:
            chain = self.chain_to_quantizer(node, allow_norm=False)
            tensors = node.args[0] if node.target in _CATS else node.args[:2]
            if chain is not None and all(isinstance(t, fx.Node) for t in tensors) and not node.kwargs:
                _, relu, qnode = chain
                params = _u8_params(self.activation_quant(qnode))
                if node.target in _CATS:
                    dim = node.args[1] if len(node.args) > 1 else 0
                    inputs = [self.quantized(t, params) for t in tensors]
                    self.env[node] = self.saturate(
                        self.graph.call_function(torch.ops.quantized.cat, (inputs, dim, *params)), qnode)
                else:
                    inputs = [self.quantized(t, self.qparams.get(t) or params) for t in tensors]
                    op = torch.ops.quantized.add_relu if relu is not None else torch.ops.quantized.add
                    self.env[node] = self.saturate(self.graph.call_function(op, (*inputs, *params)), qnode)
                self.qparams[node] = params
                if relu is not None:
                    self.absorbed[relu] = node
                return
        if node.target in _PASS_FUNCTIONS and node.args and node.args[0] in self.qparams:
            self.env[node] = self.graph.call_function(node.target, self.mapped(node.args), self.mapped(node.kwargs))
            self.qparams[node] = self.qparams[node.args[0]]  # indexing a quantized tensor keeps its parameters
            return
        self.env[node] = self.graph.call_function(node.target, self.floating(node.args), self.floating(node.kwargs))

    def do_call_method(self, node):
        if node.target in _PASS_METHODS and node.args[0] in self.qparams:
            self.env[node] = self.graph.call_method(node.target, self.mapped(node.args), self.mapped(node.kwargs))
            if node.target not in ("size", "dim"):
                self.qparams[node] = self.qparams[node.args[0]]
            return
        self.env[node] = self.graph.call_method(node.target, self.floating(node.args), self.floating(node.kwargs))


def to_torch_int8(model, engine="x86", for_onnx=False):
    """A quantized copy of the simulated, prepared ``model`` (a GraphModule), for the ``engine`` kernels.

    ``for_onnx``: express the saturation of sub-8-bit activations with ops torch.onnx can export
    (slower in PyTorch than clamping the quantized tensor).

    Returns (int8 GraphModule, names of the layers that run on integer kernels).
    """
    if engine not in torch.backends.quantized.supported_engines:
        raise ConversionError(f"quantized engine {engine!r} is not available; this torch has "
                              f"{torch.backends.quantized.supported_engines}")
    if not isinstance(model, fx.GraphModule):
        raise ConversionError("convert the quantizer's prepared model (scheduler.model / quantizer.prepared)")

    others = sorted({type(m).__name__ for m in model.modules() if isinstance(m, QuantModule) and not m.EXPORTABLE})
    if others:
        raise ConversionError(f"export covers the linear quantizers (QuantAwareTrainRangeLinearQuantizer, "
                              f"PostTrainLinearQuantizer); this model uses {', '.join(others)}, whose levels no "
                              "integer runtime here computes as such")
    if next(model.parameters()).device.type != "cpu":
        raise ConversionError("move the model to the CPU before converting it (integer kernels run on the CPU)")
    engine_before, was_training = torch.backends.quantized.engine, model.training
    torch.backends.quantized.engine = engine  # packed weights are made for the engine that runs them
    try:
        model.eval()
        converter = _Converter(model, for_onnx, engine)
        with torch.no_grad():
            int8 = converter.run()
    except BaseException:
        torch.backends.quantized.engine = engine_before
        raise
    finally:
        model.train(was_training)
    if not converter.converted:
        torch.backends.quantized.engine = engine_before
        raise ConversionError("no layer could run on integer kernels: conv/linear layers need a quantized input "
                              "and an activation quantizer after them")
    int8.eval()
    int8.weight_bits = converter.weight_bits
    if converter.requantized:
        log.info("%d layers have weights outside int8 with zero point 0 (asymmetric grid); the integer kernels take "
                 "zero point 0, so they were re-quantized symmetric per channel (close to the simulation, not "
                 "bit-exact): %s", len(converter.requantized), ", ".join(converter.requantized[:5]) +
                 (", ..." if len(converter.requantized) > 5 else ""))
    return int8, converter.converted
