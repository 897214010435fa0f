"""Simulated model -> a quantize/dequantize reference graph, backend-neutral, through per-pattern handlers.

The simulated GraphModule is walked once. Each fx node is handed to the handler registered for its
module type, function or method: conv[-bn] and linear (integer weights on the simulation's own grid,
batch-norm folded into per-channel scales), an activation quantizer (``quantize``: the simulation's
scale, zero point and integer range), add, cat, ReLU, pooling, flatten, and pass-through ops
(dropout, identity). A node no handler knows is refused with its name, so a backend never meets an
op it cannot write. The result is a short list of ``RefOp`` in float semantics where every quantized
value goes through ``quantize`` (= quantize then dequantize), which a backend lowers to its own
integer patterns (``onnx_export`` writes ONNX QDQ from it).

The weights keep the simulation's integers and zero points as they are (asymmetric grids included):
``value = (q - zero_point) * scale`` per output channel. Folding batch-norm multiplies the scales by
|gamma / sigma| and negates the integers (and zero points) of channels where that factor is negative,
so the folded weights are still exactly the simulation's.
"""

import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils import parametrize

from compressor.core.errors import ConversionError
from compressor.quantization.fake_quant import ActivationFakeQuant, WeightFakeQuant
from compressor.quantization.graph.sites import NORM_TYPES
from compressor.quantization.quant_module import QuantModule


@dataclass
class IntWeight:
    """Integer weights on the simulation's grid: value = (q - zero_point) * scale along axis 0."""

    q: torch.Tensor  # int64, the layer's weight shape
    zero_point: torch.Tensor  # int64, one per output channel
    scale: torch.Tensor  # float32, one per output channel
    bits: int

    def dequantize(self):
        shape = (-1,) + (1,) * (self.q.dim() - 1)
        return (self.q - self.zero_point.view(shape)).float() * self.scale.view(shape)


@dataclass
class RefOp:
    kind: str  # quantize, conv, linear, add, relu, clip, concat, maxpool, avgpool, global_avgpool, flatten, batchnorm
    inputs: list
    output: str
    attrs: dict = field(default_factory=dict)


@dataclass
class RefGraph:
    input: str
    output: str
    ops: list

    def quantizers(self):
        return [op for op in self.ops if op.kind == "quantize"]


_MODULE_HANDLERS = []  # (types, handler)
_FUNCTION_HANDLERS = {}  # callable -> handler
_METHOD_HANDLERS = {}  # method name -> handler


def _for_modules(*types):
    def register(fn):
        _MODULE_HANDLERS.append((types, fn))
        return fn

    return register


def _for_functions(*targets):
    def register(fn):
        _FUNCTION_HANDLERS.update(dict.fromkeys(targets, fn))
        return fn

    return register


def _for_methods(*names):
    def register(fn):
        _METHOD_HANDLERS.update(dict.fromkeys(names, fn))
        return fn

    return register


def _base_type(module):
    return type(module).__bases__[0] if parametrize.is_parametrized(module) else type(module)


class _Builder:
    def __init__(self, gm):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.ops = []
        self.env = {}  # fx node -> value name
        self.absorbed = {}  # fx node -> fx node whose value it is (batch-norm folded into a conv)
        self.input = None

    def value(self, node):
        if not isinstance(node, fx.Node):
            raise ConversionError(f"expected a tensor, got {node!r}")
        return self.env[node]

    def emit(self, node, kind, inputs, **attrs):
        self.env[node] = node.name
        self.ops.append(RefOp(kind, [self.value(i) for i in inputs], node.name, attrs))

    def alias(self, node, src):
        self.env[node] = self.value(src)

    def sole_user_module(self, node, types):
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module" and isinstance(self.modules[users[0].target], types):
            return users[0]
        return None

    def run(self):
        for node in self.gm.graph.nodes:
            if node in self.absorbed:
                self.env[node] = self.env[self.absorbed[node]]
                continue
            if node.op == "placeholder":
                if self.input is not None:
                    raise ConversionError("export takes models with one input tensor")
                self.input = self.env[node] = node.name
            elif node.op == "output":
                out = node.args[0]
                if not isinstance(out, fx.Node):
                    raise ConversionError("export takes models with one output tensor")
                return RefGraph(self.input, self.value(out), self.ops)
            else:
                _handler(self, node)(self, node)
        raise ConversionError("the model's graph has no output")


def _describe(builder, node):
    if node.op == "call_module":
        return f"{node.target} ({type(builder.modules[node.target]).__name__})"
    return f"{node.name} ({node.op} {getattr(node.target, '__name__', node.target)})"


def _handler(builder, node):
    if node.op == "call_module":
        module = builder.modules[node.target]
        for types, fn in _MODULE_HANDLERS:
            if isinstance(module, types) or _base_type(module) in types:
                return fn
    elif node.op == "call_function" and node.target in _FUNCTION_HANDLERS:
        return _FUNCTION_HANDLERS[node.target]
    elif node.op == "call_method" and node.target in _METHOD_HANDLERS:
        return _METHOD_HANDLERS[node.target]
    raise ConversionError(
        f"no export handler for {_describe(builder, node)}; exportable ops: conv, linear, "
        "batch-norm, ReLU, ReLU6/hardtanh, add, cat, max/avg pooling, global average pooling, flatten, dropout"
    )


# -- handlers -----------------------------------------------------------------------------------


@_for_modules(ActivationFakeQuant)
def _activation_quantizer(b, node):
    quant = b.modules[node.target]
    if not quant.enabled:
        return b.alias(node, node.args[0])
    if getattr(quant, "dynamic", False):
        raise ConversionError(
            "activation ranges are dynamic (no calibration): an integer model needs fixed "
            "ranges; calibrate (--qe-calibration / calibration data) or give stats first"
        )
    if quant.bits > 8:
        raise ConversionError(f"{node.target}: activations at {quant.bits} bits have no 8-bit integer kernel")
    b.emit(
        node,
        "quantize",
        [node.args[0]],
        scale=float(quant.scale.item()),
        zero_point=int(quant.zero_point.item()),
        qmin=int(quant.qmin),
        qmax=int(quant.qmax),
        bits=int(quant.bits),
    )


def _weight(b, node, layer):
    """The layer's weight: IntWeight when the simulation fake-quantizes it, else the float tensor."""
    if not parametrize.is_parametrized(layer, "weight"):
        return layer.weight.detach().float().clone()
    chain = layer.parametrizations.weight
    others = [p for p in chain if not isinstance(p, WeightFakeQuant)]
    if others:
        raise ConversionError(f"{node.target}: weight parametrization {type(others[0]).__name__} cannot be exported")
    fq = [p for p in chain if p.enabled]
    if not fq:
        return chain.original.detach().float().clone()
    wq = fq[-1]
    simulated = layer.weight.detach().float()  # torch's own fake-quant kernel made these values
    out = simulated.shape[0]
    shape = (-1,) + (1,) * (simulated.dim() - 1)
    scale = wq.scale.detach().float().expand(out).clone()
    zp = wq.zero_point.detach().long().expand(out).clone()
    q = torch.round(simulated / scale.view(shape)).long() + zp.view(shape)
    return IntWeight(q.clamp(wq.qmin, wq.qmax), zp, scale, int(wq.bits))


def _fold_norm(weight, bias, norm):
    """Batch-norm (eval statistics) folded into the weight and bias of the layer before it."""
    if norm.training:
        raise ConversionError("convert a model in eval mode")
    factor = norm.weight.detach().float() if norm.affine else torch.ones_like(norm.running_var)
    factor = factor / torch.sqrt(norm.running_var.float() + norm.eps)
    beta = norm.bias.detach().float() if norm.affine else torch.zeros_like(factor)
    bias = (bias - norm.running_mean.float()) * factor + beta
    if not isinstance(weight, IntWeight):
        return weight * factor.view((-1,) + (1,) * (weight.dim() - 1)), bias
    shape = (-1,) + (1,) * (weight.q.dim() - 1)
    sign = torch.where(factor < 0, -1, 1)
    dead = factor == 0  # a channel batch-norm zeroes: integers at the zero point, output is the bias
    q = torch.where(dead.view(shape), weight.zero_point.view(shape), weight.q * sign.view(shape))
    zp = weight.zero_point * sign
    scale = torch.where(dead, torch.ones_like(factor), weight.scale * factor.abs())
    return IntWeight(q, zp, scale, weight.bits), bias


@_for_modules(nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
def _conv_or_linear(b, node, layer=None):
    layer = b.modules[node.target]
    weight = _weight(b, node, layer)
    out_ch = layer.weight.shape[0]
    bias = layer.bias.detach().float().clone() if layer.bias is not None else torch.zeros(out_ch)
    norm = b.sole_user_module(node, NORM_TYPES)
    if norm is not None:
        weight, bias = _fold_norm(weight, bias, b.modules[norm.target])
        b.absorbed[norm] = node
    if isinstance(layer, nn.Linear):
        return b.emit(node, "linear", [node.args[0]], weight=weight, bias=bias)
    if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        raise ConversionError(
            f"{node.target}: padding {layer.padding!r} / padding_mode {layer.padding_mode!r} "
            "cannot be exported (explicit zero padding only)"
        )
    b.emit(
        node,
        "conv",
        [node.args[0]],
        weight=weight,
        bias=bias,
        stride=list(layer.stride),
        padding=list(layer.padding),
        dilation=list(layer.dilation),
        groups=layer.groups,
    )


@_for_modules(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
def _batchnorm(b, node):
    norm = b.modules[node.target]
    if norm.training:
        raise ConversionError("convert a model in eval mode")
    ones = torch.ones_like(norm.running_var)
    b.emit(
        node,
        "batchnorm",
        [node.args[0]],
        eps=float(norm.eps),
        mean=norm.running_mean.float().clone(),
        var=norm.running_var.float().clone(),
        weight=norm.weight.detach().float().clone() if norm.affine else ones,
        bias=norm.bias.detach().float().clone() if norm.affine else torch.zeros_like(ones),
    )


@_for_modules(nn.ReLU)
def _relu_module(b, node):
    b.emit(node, "relu", [node.args[0]])


@_for_functions(F.relu, torch.relu, torch.relu_)
@_for_methods("relu", "relu_")
def _relu(b, node):
    b.emit(node, "relu", [node.args[0]])


@_for_modules(nn.ReLU6, nn.Hardtanh)
def _clip_module(b, node):
    m = b.modules[node.target]
    b.emit(node, "clip", [node.args[0]], min=float(m.min_val), max=float(m.max_val))


@_for_functions(F.relu6, F.hardtanh)
def _clip_function(b, node):
    if node.target is F.relu6:
        return b.emit(node, "clip", [node.args[0]], min=0.0, max=6.0)
    x, lo, hi = _call_args(node, ["input", "min_val", "max_val"], {"min_val": -1.0, "max_val": 1.0})
    b.emit(node, "clip", [x], min=float(lo), max=float(hi))


@_for_functions(operator.add, operator.iadd, torch.add)
@_for_methods("add", "add_")
def _add(b, node):
    if node.kwargs or len(node.args) != 2 or not all(isinstance(a, fx.Node) for a in node.args):
        raise ConversionError(f"{node.name}: only the sum of two tensors is exported (no alpha, no constants)")
    b.emit(node, "add", list(node.args))


@_for_functions(torch.cat, torch.concat)
def _cat(b, node):
    tensors = node.args[0]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    b.emit(node, "concat", list(tensors), axis=int(dim))


def _pair(v, n=2):
    return list(v) if isinstance(v, (list, tuple)) else [v] * n


def _pool_attrs(kernel, stride, padding, ceil_mode):
    return {
        "kernel": _pair(kernel),
        "stride": _pair(stride if stride not in (None, ()) else kernel),
        "padding": _pair(padding),
        "ceil_mode": bool(ceil_mode),
    }


@_for_modules(nn.MaxPool2d)
def _maxpool_module(b, node):
    m = b.modules[node.target]
    if _pair(m.dilation) != [1, 1] or m.return_indices:
        raise ConversionError(f"{node.target}: max pooling with dilation or indices cannot be exported")
    b.emit(node, "maxpool", [node.args[0]], **_pool_attrs(m.kernel_size, m.stride, m.padding, m.ceil_mode))


@_for_modules(nn.AvgPool2d)
def _avgpool_module(b, node):
    m = b.modules[node.target]
    if m.divisor_override is not None:
        raise ConversionError(f"{node.target}: avg pooling with divisor_override cannot be exported")
    b.emit(
        node,
        "avgpool",
        [node.args[0]],
        count_include_pad=bool(m.count_include_pad),
        **_pool_attrs(m.kernel_size, m.stride, m.padding, m.ceil_mode),
    )


def _call_args(node, names, defaults):
    values = dict(zip(names, node.args))
    values.update(node.kwargs)
    return [values.get(n, defaults.get(n)) for n in names]


@_for_functions(F.max_pool2d)
def _maxpool_function(b, node):
    x, k, s, p, d, ceil, ret = _call_args(
        node,
        ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"],
        {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False},
    )
    if _pair(d) != [1, 1] or ret:
        raise ConversionError(f"{node.name}: max pooling with dilation or indices cannot be exported")
    b.emit(node, "maxpool", [x], **_pool_attrs(k, s, p, ceil))


@_for_functions(F.avg_pool2d, torch._C._nn.avg_pool2d)
def _avgpool_function(b, node):
    x, k, s, p, ceil, include, divisor = _call_args(
        node,
        ["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"],
        {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True},
    )
    if divisor is not None:
        raise ConversionError(f"{node.name}: avg pooling with divisor_override cannot be exported")
    b.emit(node, "avgpool", [x], count_include_pad=bool(include), **_pool_attrs(k, s, p, ceil))


def _global_pool(b, node, size):
    if _pair(size) != [1, 1]:
        raise ConversionError(
            f"{_describe(b, node)}: adaptive average pooling to {size} cannot be exported (to 1x1 only)"
        )
    b.emit(node, "global_avgpool", [node.args[0]])


@_for_modules(nn.AdaptiveAvgPool2d)
def _adaptive_module(b, node):
    _global_pool(b, node, b.modules[node.target].output_size)


@_for_functions(F.adaptive_avg_pool2d)
def _adaptive_function(b, node):
    _global_pool(b, node, _call_args(node, ["input", "output_size"], {})[1])


def _flatten_to(b, node, x, start, end):
    if end not in (-1,):
        raise ConversionError(f"{node.name}: flatten up to dim {end} cannot be exported (to the last dim only)")
    b.emit(node, "flatten", [x], axis=int(start))


@_for_modules(nn.Flatten)
def _flatten_module(b, node):
    m = b.modules[node.target]
    _flatten_to(b, node, node.args[0], m.start_dim, m.end_dim)


@_for_functions(torch.flatten)
@_for_methods("flatten")
def _flatten(b, node):
    x, start, end = _call_args(node, ["input", "start_dim", "end_dim"], {"start_dim": 0, "end_dim": -1})
    _flatten_to(b, node, x, start, end)


@_for_methods("view", "reshape")
@_for_functions(torch.reshape)
def _view(b, node):
    """x.view(x.size(0), -1) (the classic classifier flatten) -> flatten from dim 1."""
    x, *shape = node.args
    if len(shape) == 1 and isinstance(shape[0], (list, tuple)):
        shape = list(shape[0])
    batch = shape[0] if shape else None
    is_batch = (
        isinstance(batch, fx.Node)
        and batch.op == "call_method"
        and batch.target == "size"
        and batch.args[0] is x
        and (batch.args[1:] == (0,) or batch.kwargs.get("dim") == 0)
    )
    if len(shape) == 2 and shape[1] == -1 and is_batch:
        return b.emit(node, "flatten", [x], axis=1)
    raise ConversionError(
        f"{node.name}: {node.target}{tuple(shape)} cannot be exported; only x.{node.target}(x.size(0), -1)"
    )


@_for_methods("size")
def _size(b, node):
    b.env[node] = None  # only used by the view handler, which reads the fx node itself


@_for_modules(nn.Dropout, nn.Identity)
@_for_functions(F.dropout)
@_for_methods("contiguous")
def _pass(b, node):
    b.alias(node, node.args[0])


def reference_graph(model):
    """The reference graph of a simulated (prepared) GraphModule, or of a plain FP32 module (traced here)."""
    if not isinstance(model, fx.GraphModule):
        try:
            model = fx.symbolic_trace(model)
        except Exception as exc:  # noqa: BLE001 (torch.fx raises many types; its first line names the construct)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConversionError(f"torch.fx cannot trace the model for export: {first}") from None
    others = sorted({type(m).__name__ for m in model.modules() if isinstance(m, QuantModule) and not m.EXPORTABLE})
    if others:
        raise ConversionError(
            f"export covers the linear quantizers (QuantAwareTrainRangeLinearQuantizer, "
            f"PostTrainLinearQuantizer); this model uses {', '.join(others)}, whose levels no "
            "integer runtime here computes as such"
        )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return _Builder(model).run()
    finally:
        model.train(was_training)
