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
from compressor.quantization.graph import capture
from compressor.quantization.graph.sites import NORM_TYPES, call_args
from compressor.quantization.linear.integer_sim import norm_fold
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
    kind: str  # quantize, conv, linear, add, relu, clip, concat, maxpool, avgpool, global_avgpool, flatten, batchnorm,
    # const, unary (attrs fn), mul, sub, div, matmul, einsum, layernorm, softmax, transpose, reshape, expand, mean,
    # slice, pad (zeros), normalize
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


class _Recorder(fx.Interpreter):
    """Runs the graph once, keeping every node's value and whether it depends on the model input."""

    def __init__(self, gm):
        super().__init__(gm)
        self.values, self.varying = {}, set()

    def run_node(self, node):
        value = super().run_node(node)
        self.values[node] = value
        if node.op == "placeholder" or any(a in self.varying for a in node.all_input_nodes):
            self.varying.add(node)
        return value


def _record(gm, example_input):
    """({node: value}, ({node: shape at batch 1}, {node: shape at batch 2}), nodes depending on the input); the
    values are the second run's (the folded ones, computed from parameters alone, are the same in both)."""
    shapes = []
    for batch in (1, 2):
        recorder = _Recorder(gm)
        recorder.run(example_input[:1].expand(batch, *example_input.shape[1:]).clone())
        shapes.append({n: tuple(v.shape) for n, v in recorder.values.items() if isinstance(v, torch.Tensor)})
    return recorder.values, shapes, recorder.varying


@dataclass
class _Chunks:
    """``torch.chunk``/``split`` output: pieces of ``source`` along ``dim``, read one by one through getitem."""

    source: str
    dim: int
    bounds: list  # (start, end) per piece


class _Builder:
    def __init__(self, gm, example_input=None):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.ops = []
        self.env = {}  # fx node -> value name
        self.absorbed = {}  # fx node -> fx node whose value it is (batch-norm folded into a conv)
        self.input = None
        self.values, self.shapes, self.varying = {}, ({}, {}), None
        if example_input is not None:
            self.values, self.shapes, self.varying = _record(gm, example_input)

    def shape(self, node):
        """The node's output shape at batch 1 (needs the example input)."""
        if node not in self.shapes[0]:
            raise ConversionError(f"{node.name}: its shape is unknown (export needs an example input)")
        return self.shapes[0][node]

    def batch_shape(self, node):
        """The node's output shape with -1 at dim 0, which must be the only dim that grows with the batch."""
        one, two = self.shape(node), self.shapes[1][node]
        if one[1:] != two[1:] or not one or two[0] != 2 * one[0]:
            raise ConversionError(
                f"{node.name}: its output shape {one} at batch 1 is {two} at batch 2; export needs the batch in "
                "dim 0 alone")
        return [-1, *one[1:]]

    def const(self, node, value):
        self.env[node] = node.name
        self.ops.append(RefOp("const", [], node.name, {"value": value.detach().float().clone()}))

    def _constant(self, node):
        """A node computed from parameters and buffers alone (ViT's class token, a relative position bias)."""
        value = self.values[node]
        if isinstance(value, torch.Tensor):
            return self.const(node, value)
        self.env[node] = None

    def value(self, node):
        if isinstance(node, str):  # a value emitted without an fx node (a constant operand)
            return node
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
            elif self.varying is not None and node not in self.varying and node in self.values:
                self._constant(node)  # computed from parameters and buffers alone: folded
            elif node in self.values and not _holds_tensor(self.values[node]):
                self.env[node] = None  # a size or a check on sizes (x.shape[0] // p, torch._assert): no tensor
            else:
                _handler(self, node)(self, node)
        raise ConversionError("the model's graph has no output")


def _holds_tensor(value):
    if isinstance(value, (list, tuple)):
        return any(_holds_tensor(v) for v in value)
    return isinstance(value, torch.Tensor)


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
        f"no export handler for {_describe(builder, node)}: the simulation computes it in FP32, but no ONNX or "
        "PyTorch int8 lowering exists for it; evaluate the quantized model in simulation (no --export-onnx), or "
        "report the op. Exportable: conv, linear, batch/layer norm, ReLU/ReLU6/hardtanh, hardswish, hardsigmoid, "
        "SiLU, sigmoid, tanh, GELU, softmax, add, sub, mul, div, matmul, einsum, cat, pooling, mean, reshape/view/"
        "flatten/permute/transpose, chunk/split/indexing, dropout, stochastic depth"
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
    factor, beta = norm_fold(norm)
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
        tokens = b.shapes[0] and len(b.shape(node.args[0])) > 2  # (batch, tokens, features): Gemm takes 2-D
        return b.emit(node, "linear", [node.args[0]], weight=weight, bias=bias,
                      out_shape=b.batch_shape(node) if tokens else None)
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
    x, lo, hi = call_args(node, ["input", "min_val", "max_val"], {"min_val": -1.0, "max_val": 1.0})
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


@_for_functions(F.max_pool2d)
def _maxpool_function(b, node):
    x, k, s, p, d, ceil, ret = call_args(
        node,
        ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"],
        {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False},
    )
    if _pair(d) != [1, 1] or ret:
        raise ConversionError(f"{node.name}: max pooling with dilation or indices cannot be exported")
    b.emit(node, "maxpool", [x], **_pool_attrs(k, s, p, ceil))


@_for_functions(F.avg_pool2d, torch._C._nn.avg_pool2d)
def _avgpool_function(b, node):
    x, k, s, p, ceil, include, divisor = call_args(
        node,
        ["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"],
        {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True},
    )
    if divisor is not None:
        raise ConversionError(f"{node.name}: avg pooling with divisor_override cannot be exported")
    b.emit(node, "avgpool", [x], count_include_pad=bool(include), **_pool_attrs(k, s, p, ceil))


def _global_pool(b, node, size):
    if _pair(size) == [1, 1]:
        return b.emit(node, "global_avgpool", [node.args[0]])
    out = [o if o is not None else i for o, i in zip(_pair(size), b.shape(node.args[0])[-2:])] \
        if b.shapes[0] else None
    have = list(b.shape(node.args[0])[-2:]) if out else None
    if out is None or any(i % o for i, o in zip(have, out)):
        raise ConversionError(
            f"{_describe(b, node)}: adaptive average pooling from {have} to {size} cannot be exported "
            "(to 1x1, or to a size that divides the input's: VGG and AlexNet at 224x224)")
    kernel = [i // o for i, o in zip(have, out)]
    b.emit(node, "avgpool", [node.args[0]], count_include_pad=False, **_pool_attrs(kernel, kernel, 0, False))


@_for_modules(nn.AdaptiveAvgPool2d)
def _adaptive_module(b, node):
    _global_pool(b, node, b.modules[node.target].output_size)


@_for_functions(F.adaptive_avg_pool2d)
def _adaptive_function(b, node):
    _global_pool(b, node, call_args(node, ["input", "output_size"], {})[1])


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
    x, start, end = call_args(node, ["input", "start_dim", "end_dim"], {"start_dim": 0, "end_dim": -1})
    _flatten_to(b, node, x, start, end)


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



# -- ops beyond conv nets: element-wise nonlinearities, normalization, attention, tensor plumbing -------------
# They run in float between dequantize and quantize in the integer model (the quantizer at their output gives
# the next layer integer inputs); onnxruntime fuses what it has kernels for (QLinearMatMul, QLinearSigmoid...).

_UNARY_MODULES = {nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid",
                  nn.SiLU: "silu", nn.Mish: "mish"}
_UNARY_FUNCTIONS = {torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.tanh: "tanh", F.tanh: "tanh",
                    F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid", F.silu: "silu", F.mish: "mish"}


@_for_modules(*_UNARY_MODULES)
def _unary_module(b, node):
    b.emit(node, "unary", [node.args[0]], fn=_UNARY_MODULES[_base_type(b.modules[node.target])])


@_for_functions(*_UNARY_FUNCTIONS)
def _unary_function(b, node):
    b.emit(node, "unary", [node.args[0]], fn=_UNARY_FUNCTIONS[node.target])


@_for_methods("sigmoid", "tanh")
def _unary_method(b, node):
    b.emit(node, "unary", [node.args[0]], fn=node.target)


def _gelu(b, node, x, approximate):
    if approximate not in ("none", "tanh"):
        raise ConversionError(f"{node.name}: GELU approximation {approximate!r} cannot be exported")
    b.emit(node, "unary", [x], fn="gelu" if approximate == "none" else "gelu_tanh")


@_for_modules(nn.GELU)
def _gelu_module(b, node):
    _gelu(b, node, node.args[0], b.modules[node.target].approximate)


@_for_functions(F.gelu)
def _gelu_function(b, node):
    x, approximate = call_args(node, ["input", "approximate"], {"approximate": "none"})
    _gelu(b, node, x, approximate)


def _operand(b, node, value):
    """The value name of a binary op's operand: a tensor node, or a Python number made a constant."""
    if isinstance(value, fx.Node):
        return value
    if isinstance(value, (int, float)):
        name = f"{node.name}_const{len(b.ops)}"
        b.ops.append(RefOp("const", [], name, {"value": torch.tensor(float(value))}))
        return name
    raise ConversionError(f"{node.name}: operand {value!r} cannot be exported")


def _binary(kind):
    def handler(b, node):
        if node.kwargs or len(node.args) != 2:
            raise ConversionError(f"{node.name}: only {kind}(a, b) is exported (no alpha, no out)")
        b.emit(node, kind, [_operand(b, node, a) for a in node.args])
    return handler


_for_functions(operator.mul, torch.mul)(_for_methods("mul", "mul_")(_binary("mul")))
_for_functions(operator.sub, torch.sub)(_for_methods("sub")(_binary("sub")))
_for_functions(operator.truediv, torch.div)(_for_methods("div")(_binary("div")))
_for_modules(capture.MatMul)(_for_functions(torch.matmul, operator.matmul, torch.bmm)(
    _for_methods("matmul", "bmm")(_binary("matmul"))))


@_for_functions(torch.einsum)
def _einsum(b, node):
    equation, *operands = node.args
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = list(operands[0])
    b.emit(node, "einsum", operands, equation=equation.replace(" ", ""))


def _layernorm(b, node, x, normalized_shape, weight, bias, eps):
    shape = normalized_shape if isinstance(normalized_shape, (list, tuple)) else [normalized_shape]
    size = [int(d) for d in shape]
    ones = torch.ones(size)
    b.emit(node, "layernorm", [x], axes=list(range(-len(size), 0)), eps=float(eps),
           weight=ones if weight is None else weight.detach().float().clone(),
           bias=torch.zeros(size) if bias is None else bias.detach().float().clone())


@_for_modules(nn.LayerNorm)
def _layernorm_module(b, node):
    m = b.modules[node.target]
    _layernorm(b, node, node.args[0], m.normalized_shape, m.weight, m.bias, m.eps)


@_for_functions(F.layer_norm)
def _layernorm_function(b, node):
    x, shape, weight, bias, eps = call_args(node, ["input", "normalized_shape", "weight", "bias", "eps"],
                                             {"weight": None, "bias": None, "eps": 1e-5})
    weight, bias = (_parameter(b, node, t) for t in (weight, bias))
    _layernorm(b, node, x, shape, weight, bias, eps)


def _parameter(b, node, value):
    """A weight given to a functional op: a get_attr node's tensor (folded), or None."""
    if value is None:
        return None
    if isinstance(value, fx.Node) and isinstance(b.values.get(value), torch.Tensor):
        return b.values[value]
    raise ConversionError(f"{node.name}: a weight computed from the input cannot be exported")


def _softmax(b, node, x, dim):
    if dim is None:
        raise ConversionError(f"{node.name}: softmax without dim cannot be exported")
    b.emit(node, "softmax", [x], axis=int(dim))


@_for_modules(nn.Softmax)
def _softmax_module(b, node):
    _softmax(b, node, node.args[0], b.modules[node.target].dim)


@_for_functions(F.softmax, torch.softmax)
@_for_methods("softmax")
def _softmax_function(b, node):
    x, dim = call_args(node, ["input", "dim"], {"dim": None})
    _softmax(b, node, x, dim)


@_for_functions(F.normalize)
def _normalize(b, node):
    """``x / max(||x||_p, eps)`` along ``dim`` (Swin V2's cosine attention): p = 2 only."""
    x, p, dim, eps = call_args(node, ["input", "p", "dim", "eps"], {"p": 2.0, "dim": 1, "eps": 1e-12})
    if float(p) != 2.0:
        raise ConversionError(f"{node.name}: normalize with p={p} is not exported (p=2 is)")
    rank = _rank(b, x)
    b.emit(node, "normalize", [x], axis=int(dim) % rank, eps=float(eps))


def _rank(b, node):
    return len(b.shape(node))


@_for_methods("permute")
@_for_functions(torch.permute)
def _permute(b, node):
    x, *dims = node.args
    dims = list(dims[0]) if len(dims) == 1 and isinstance(dims[0], (list, tuple)) else list(dims or node.kwargs["dims"])
    rank = _rank(b, x)
    b.emit(node, "transpose", [x], perm=[d % rank for d in dims])


@_for_methods("transpose", "swapaxes")
@_for_functions(torch.transpose, torch.swapaxes)
def _transpose(b, node):
    x, d0, d1 = node.args
    rank = _rank(b, x)
    perm = list(range(rank))
    perm[d0 % rank], perm[d1 % rank] = perm[d1 % rank], perm[d0 % rank]
    b.emit(node, "transpose", [x], perm=perm)


def _reshape_to(b, node, x):
    b.emit(node, "reshape", [x], shape=b.batch_shape(node))


@_for_methods("unsqueeze", "squeeze")
@_for_functions(torch.unsqueeze, torch.squeeze)
def _unsqueeze(b, node):
    _reshape_to(b, node, node.args[0])


@_for_methods("expand")
def _expand(b, node):
    b.emit(node, "expand", [node.args[0]], shape=b.batch_shape(node))


@_for_methods("mean")
@_for_functions(torch.mean)
def _mean(b, node):
    x, dim, keepdim = call_args(node, ["input", "dim", "keepdim"], {"dim": None, "keepdim": False})
    if dim is None:
        raise ConversionError(f"{node.name}: a mean over every dim (batch included) cannot be exported")
    dims = list(dim) if isinstance(dim, (list, tuple)) else [dim]
    rank = _rank(b, x)
    b.emit(node, "mean", [x], axes=[d % rank for d in dims], keepdim=bool(keepdim))


@_for_methods("chunk")
@_for_functions(torch.chunk)
def _chunk(b, node):
    x, chunks, dim = call_args(node, ["input", "chunks", "dim"], {"dim": 0})
    size = b.shape(x)[dim]
    step = -(-size // chunks)
    b.env[node] = _Chunks(b.value(x), dim % _rank(b, x), [(i, min(i + step, size)) for i in range(0, size, step)])


@_for_methods("split")
@_for_functions(torch.split)
def _split(b, node):
    x, split, dim = call_args(node, ["input", "split_size_or_sections", "dim"], {"dim": 0})
    size = b.shape(x)[dim]
    sizes = list(split) if isinstance(split, (list, tuple)) else [split] * -(-size // split)
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    b.env[node] = _Chunks(b.value(x), dim % _rank(b, x), [(s, min(s + n, size)) for s, n in zip(starts, sizes)])


@_for_functions(operator.getitem)
def _getitem(b, node):
    src, index = node.args
    pieces = b.env.get(src)
    if isinstance(pieces, _Chunks):
        start, end = pieces.bounds[index]
        b.env[node] = node.name
        b.ops.append(RefOp("slice", [pieces.source], node.name,
                           {"starts": [start], "ends": [end], "axes": [pieces.dim], "gather": []}))
        return
    index = index if isinstance(index, tuple) else (index,)
    rank = _rank(b, src)
    if any(i is Ellipsis or i is None or isinstance(i, (fx.Node, list, torch.Tensor)) for i in index) or \
            len(index) > rank:
        raise ConversionError(f"{node.name}: indexing with {index!r} cannot be exported (ints and slices only)")
    starts, ends, axes, gather = [], [], [], []
    for axis, i in enumerate(index):
        if isinstance(i, int):
            gather.append((axis, i))
        elif isinstance(i, slice):
            if i == slice(None):
                continue
            if i.step not in (None, 1):
                raise ConversionError(f"{node.name}: a slice with a step cannot be exported")
            starts.append(0 if i.start is None else i.start)
            ends.append(2**62 if i.stop is None else i.stop)
            axes.append(axis)
    b.emit(node, "slice", [src], starts=starts, ends=ends, axes=axes, gather=gather)


@_for_methods("view", "reshape")
@_for_functions(torch.reshape)
def _view_or_reshape(b, node):
    try:
        return _view(b, node)
    except ConversionError:
        if not b.shapes[0]:
            raise
    _reshape_to(b, node, node.args[0])


class _Steps:
    """Consecutive reference ops of one fx node: each step reads the previous one's value, the last is the node's."""

    def __init__(self, b, node, source):
        self.b, self.node, self.value, self.count = b, node, b.value(source), 0

    def add(self, kind, extra_inputs=(), **attrs):
        self.count += 1
        out = f"{self.node.name}_step{self.count}"
        self.b.ops.append(RefOp(kind, [self.value, *extra_inputs], out, attrs))
        self.value = out
        return self

    def roll(self, shifts):
        """torch.roll over dims 1 and 2 (positive: towards higher indices) as slices and a concat per dim."""
        for dim, shift in zip((1, 2), shifts):
            if shift:
                source = self.value
                tail = self.add("slice", starts=[-shift], ends=[2**62], axes=[dim], gather=[]).value
                self.value = source
                head = self.add("slice", starts=[0], ends=[-shift], axes=[dim], gather=[]).value
                self.value = tail
                self.add("concat", [head], axis=dim)
        return self

    def done(self):
        if self.count == 0:
            self.b.env[self.node] = self.value
            return
        self.b.ops[-1].output = self.node.name
        self.b.env[self.node] = self.node.name


def _window_args(b, node, x):
    window, shift = (list(v) for v in node.args[-2:])
    _, height, width, channels = b.shape(x)
    ph, pw, shift = capture.window_layout(height, width, window, shift)
    return window, shift, height, width, channels, ph, pw


@_for_functions(capture.window_partition)
def _window_partition(b, node):
    x = node.args[0]
    window, shift, height, width, channels, ph, pw = _window_args(b, node, x)
    steps = _Steps(b, node, x)
    if (ph, pw) != (height, width):
        steps.add("pad", pads=[0, 0, 0, 0, 0, ph - height, pw - width, 0])
    steps.roll([-shift[0], -shift[1]])
    steps.add("reshape", shape=[-1, ph // window[0], window[0], pw // window[1], window[1], channels])
    steps.add("transpose", perm=[0, 1, 3, 2, 4, 5])
    steps.add("reshape", shape=[-1, window[0] * window[1], channels]).done()


@_for_functions(capture.window_merge)
def _window_merge(b, node):
    windows, x = node.args[:2]
    window, shift, height, width, channels, ph, pw = _window_args(b, node, x)
    steps = _Steps(b, node, windows)
    steps.add("reshape", shape=[-1, ph // window[0], pw // window[1], window[0], window[1], channels])
    steps.add("transpose", perm=[0, 1, 3, 2, 4, 5])
    steps.add("reshape", shape=[-1, ph, pw, channels])
    steps.roll(shift)
    if (ph, pw) != (height, width):
        steps.add("slice", starts=[0, 0], ends=[height, width], axes=[1, 2], gather=[])
    steps.done()


def _patch_merging_pad_function():
    try:
        from torchvision.models.swin_transformer import _patch_merging_pad
    except ImportError:
        return None
    return _patch_merging_pad


def _patch_merging_pad(b, node):
    """Swin's patch merging (fx-wrapped in torchvision): odd H/W padded by one, then the four 2x2-strided
    sub-grids concatenated on the channels."""
    x = node.args[0]
    shape = b.shape(x)
    rank, (height, width) = len(shape), shape[-3:-1]
    h, w = rank - 3, rank - 2
    steps = _Steps(b, node, x)
    if height % 2 or width % 2:
        pads = [0] * (2 * rank)
        pads[rank + h], pads[rank + w] = height % 2, width % 2
        steps.add("pad", pads=pads)
    padded, parts = steps.value, []
    for dh, dw in ((0, 0), (1, 0), (0, 1), (1, 1)):
        steps.value = padded
        parts.append(steps.add("slice", starts=[dh, dw], ends=[2**62, 2**62], axes=[h, w], gather=[],
                               steps=[2, 2]).value)
    steps.value = parts[0]
    steps.add("concat", parts[1:], axis=rank - 1).done()


if _patch_merging_pad_function() is not None:
    _for_functions(_patch_merging_pad_function())(_patch_merging_pad)


@_for_functions(capture.window_softmax)
def _window_softmax(b, node):
    attn, x = node.args[:2]
    window, shift, _, _, _, ph, pw = _window_args(b, node, x)
    steps = _Steps(b, node, attn)
    if shift[0] or shift[1]:
        mask = capture.shift_window_mask(ph, pw, window, shift).unsqueeze(1)  # (windows, 1, tokens, tokens)
        heads, tokens = b.shape(attn)[1], mask.shape[-1]
        name = f"{node.name}_mask"
        b.ops.append(RefOp("const", [], name, {"value": mask}))
        steps.add("reshape", shape=[-1, mask.shape[0], heads, tokens, tokens])
        steps.add("add", [name])
        steps.add("reshape", shape=[-1, heads, tokens, tokens])
    steps.add("softmax", axis=-1).done()


@_for_modules(nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, *capture.leaf_types())
def _pass_in_eval(b, node):
    """Identity in evaluation (dropout, stochastic depth)."""
    b.alias(node, node.args[0])


@_for_modules(nn.AdaptiveAvgPool1d)
def _adaptive_1d(b, node):
    _global_pool(b, node, [b.modules[node.target].output_size] * 2)


def reference_graph(model, example_input=None):
    """The reference graph of a simulated (prepared) GraphModule, or of a plain FP32 module (traced here).

    ``example_input`` (one batch or one image) gives the shapes that reshapes, transposes and slices need and
    folds what is computed from parameters alone; without it, only models of conv/linear/pooling/flatten ops
    convert."""
    if not isinstance(model, fx.GraphModule):
        try:
            capture.swap_attention(model)
            model = capture.symbolic_trace(model)
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
            return _Builder(model, example_input).run()
    finally:
        model.train(was_training)
