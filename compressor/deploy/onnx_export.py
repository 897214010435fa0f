"""Reference graph -> ONNX QDQ, written with the ``onnx`` helper API from our quantizer's own parameters.

No torch.onnx and no torch.ao: every QuantizeLinear/DequantizeLinear carries the simulation's scale
and zero point, weights are the simulation's integers with their own zero points (asymmetric grids
export exactly), and onnxruntime fuses DQ -> Conv/Gemm/Add/Concat -> Q into its integer kernels
(QLinearConv, QGemm, QLinearAdd, QLinearConcat; tested). Opset 13 (per-channel DequantizeLinear).

Activations are stored as uint8 (zero point shifted by -qmin, so 7-bit activations stay in [0, 127]);
weights as int8 (u8s8: the fast kernels, exact where products accumulate in 32 bits) or uint8 (u8u8:
exact with 8-bit activations on AVX2-only CPUs), as ``target.choose_format`` decides. Sub-8-bit
activations saturate in DequantizeLinear -> Clip -> QuantizeLinear after the quantizer.

The same writer exports FP32 models (no quantizers in the graph: plain Conv/Gemm).
"""

import logging
import os

import numpy as np
import torch

from compressor.core.errors import ExportError
from compressor.core.io import atomic_write
from compressor.deploy.reference import IntWeight, RefOp, reference_graph

log = logging.getLogger(__name__)
OPSET = 13
_RANGES = {"int8": (-128, 127), "uint8": (0, 255)}
_MOVES_VALUES = ("transpose", "reshape", "slice")  # reference ops that select or move values, computing none


def _onnx():
    try:
        import onnx
    except ImportError as exc:
        raise ExportError("ONNX export needs the 'onnx' package: pip install -e '.[deploy]'") from exc
    return onnx


def storage_integers(weight, dtype):
    """(integers, zero points) of ``weight`` shifted into ``dtype``'s range, with the same q - zero_point.

    One shift for all channels when one fits (a constant zero point is what onnxruntime's integer
    convolution takes), else one per channel. Symmetric weights (zero point 0) keep zero point 0 and
    clamp instead: only -128 negated by a negative batch-norm scale moves, one step, on that value.
    Returns (q, zp, clamped count).
    """
    lo, hi = _RANGES[dtype]
    q, zp = weight.q.clone(), weight.zero_point.clone()
    if not zp.any():
        shift = 0 if dtype == "int8" else 128  # symmetric as uint8: zero point 128, the same values
        q, zp = q + shift, zp + shift
        clamped = int(((q < lo) | (q > hi)).sum())
        return q.clamp(lo, hi), zp, clamped
    flat = q.reshape(q.shape[0], -1)
    mn = torch.minimum(flat.amin(1), zp)
    mx = torch.maximum(flat.amax(1), zp)
    shift = max(lo - int(mn.min()), min(0, hi - int(mx.max())))
    if lo <= int(mn.min()) + shift and int(mx.max()) + shift <= hi:
        return q + shift, zp + shift, 0
    shift = torch.maximum(lo - mn, torch.clamp(hi - mx, max=0))
    shape = (-1,) + (1,) * (q.dim() - 1)
    q, zp = q + shift.view(shape), zp + shift
    clamped = int(((q < lo) | (q > hi)).sum())
    return q.clamp(lo, hi), zp.clamp(lo, hi), clamped


class _Writer:
    def __init__(self, onnx, weights):
        self.onnx = onnx
        self.helper = onnx.helper
        self.weights = weights
        self.nodes, self.initializers = [], []
        self.count = 0
        self.reserved = set()  # the reference graph's value names
        self.quantized = False  # a QuantizeLinear was written
        self.clamped = 0
        self.varying_zero_points = []  # layers whose weight zero points differ per channel
        self.stored = {}  # a dequantized value's name -> (its uint8 tensor, scale, zero point)

    def name(self, base):
        """A fresh value name, never one of the reference graph's own (fx names such as ``mul_19``)."""
        self.count += 1
        while f"{base}_{self.count}" in self.reserved:
            self.count += 1
        return f"{base}_{self.count}"

    def const(self, base, array):
        from onnx import numpy_helper

        name = self.name(base)
        self.initializers.append(numpy_helper.from_array(np.array(array, order="C"), name))  # 0-d stays 0-d
        return name

    def node(self, op, inputs, output=None, **attrs):
        output = output or self.name(op.lower())
        self.nodes.append(self.helper.make_node(op, inputs, [output], name=self.name(op), **attrs))
        return output

    def quantize(self, op):
        self.quantized = True
        a = op.attrs
        zp = a["zero_point"] - a["qmin"]
        hi = a["qmax"] - a["qmin"]
        scale = self.const(f"{op.output}_scale", np.array(a["scale"], dtype=np.float32))
        zero = self.const(f"{op.output}_zero_point", np.array(zp, dtype=np.uint8))
        q = self.node("QuantizeLinear", [op.inputs[0], scale, zero])
        if hi < 255:
            lo_v = self.const(f"{op.output}_min", np.array((0 - zp) * a["scale"], dtype=np.float32))
            hi_v = self.const(f"{op.output}_max", np.array((hi - zp) * a["scale"], dtype=np.float32))
            clipped = self.node("Clip", [self.node("DequantizeLinear", [q, scale, zero]), lo_v, hi_v])
            q = self.node("QuantizeLinear", [clipped, scale, zero])
        self.stored[op.output] = (q, scale, zero)
        return self.node("DequantizeLinear", [q, scale, zero], op.output)

    def weight(self, op):
        w = op.attrs["weight"]
        if not isinstance(w, IntWeight):
            return self.const(f"{op.output}_weight", w.numpy().astype(np.float32))
        q, zp, clamped = storage_integers(w, self.weights)
        self.clamped += clamped
        dtype = np.int8 if self.weights == "int8" else np.uint8
        scale = w.scale.numpy().astype(np.float32)
        per_tensor = bool((zp == zp[0]).all()) and bool(np.all(scale == scale[0]))
        if not bool((zp == zp[0]).all()):
            self.varying_zero_points.append(op.output)
        qname = self.const(f"{op.output}_weight_q", q.numpy().astype(dtype))
        if per_tensor:
            sname = self.const(f"{op.output}_weight_scale", np.array(scale[0], dtype=np.float32))
            zname = self.const(f"{op.output}_weight_zero_point", np.array(zp[0].item(), dtype=dtype))
            return self.node("DequantizeLinear", [qname, sname, zname])
        sname = self.const(f"{op.output}_weight_scale", scale)
        zname = self.const(f"{op.output}_weight_zero_point", zp.numpy().astype(dtype))
        return self.node("DequantizeLinear", [qname, sname, zname], axis=0)

    def lower(self, op):
        a, x = op.attrs, op.inputs
        if op.kind == "quantize":
            return self.quantize(op)
        if op.kind == "conv":
            pads = list(a["padding"]) * 2
            bias = self.const(f"{op.output}_bias", a["bias"].numpy().astype(np.float32))
            return self.node("Conv", [x[0], self.weight(op), bias], op.output, strides=a["stride"], pads=pads,
                             dilations=a["dilation"], group=a["groups"])
        if op.kind == "linear":
            bias = self.const(f"{op.output}_bias", a["bias"].numpy().astype(np.float32))
            if a.get("out_shape") is None:
                return self.node("Gemm", [x[0], self.weight(op), bias], op.output, transB=1)
            # tokens: (batch, ..., features) -> 2-D for Gemm and back (onnxruntime moves Q/DQ across Reshape)
            flat = self.node("Reshape", [x[0], self.ints("flat", [-1, int(a["weight"].q.shape[1]
                                                                        if isinstance(a["weight"], IntWeight)
                                                                        else a["weight"].shape[1])])])
            gemm = self.node("Gemm", [flat, self.weight(op), bias], transB=1)
            return self.node("Reshape", [gemm, self.ints("tokens", a["out_shape"])], op.output)
        if op.kind == "batchnorm":
            params = [self.const(f"{op.output}_{k}", a[k].numpy()) for k in ("weight", "bias", "mean", "var")]
            return self.node("BatchNormalization", [x[0], *params], op.output, epsilon=a["eps"])
        simple = {"relu": "Relu", "add": "Add", "global_avgpool": "GlobalAveragePool"}
        if op.kind in simple:
            return self.node(simple[op.kind], x, op.output)
        if op.kind == "clip":
            bounds = [self.const(f"{op.output}_{k}", np.array(a[k], dtype=np.float32)) for k in ("min", "max")]
            return self.node("Clip", [x[0], *bounds], op.output)
        if op.kind == "concat":
            return self.node("Concat", x, op.output, axis=a["axis"])
        if op.kind == "flatten":
            return self.node("Flatten", x, op.output, axis=a["axis"])
        if op.kind in ("maxpool", "avgpool"):
            extra = {"count_include_pad": int(a["count_include_pad"])} if op.kind == "avgpool" else {}
            return self.node("MaxPool" if op.kind == "maxpool" else "AveragePool", x, op.output,
                             kernel_shape=a["kernel"], strides=a["stride"], pads=list(a["padding"]) * 2,
                             ceil_mode=int(a["ceil_mode"]), **extra)
        return self.lower_float_op(op)

    def scalar(self, base, value):
        return self.const(base, np.array(value, dtype=np.float32))

    def ints(self, base, values):
        return self.const(base, np.array(values, dtype=np.int64))

    def lower_float_op(self, op):
        """Ops that run in float between DequantizeLinear and QuantizeLinear (opset 13 ops only)."""
        a, x, out = op.attrs, op.inputs, op.output
        if op.kind in _MOVES_VALUES and x[0] in self.stored:
            return self.moved(op)
        binary = {"mul": "Mul", "sub": "Sub", "div": "Div", "matmul": "MatMul"}
        if op.kind == "const":
            name = self.const(out, a["value"].numpy().astype(np.float32))
            return self.node("Identity", [name], out)
        if op.kind in binary:
            return self.node(binary[op.kind], x, out)
        if op.kind == "unary":
            return self.unary(a["fn"], x[0], out)
        if op.kind == "einsum":
            return self.node("Einsum", x, out, equation=a["equation"])
        if op.kind == "softmax":
            return self.node("Softmax", x, out, axis=a["axis"])
        if op.kind == "transpose":
            return self.node("Transpose", x, out, perm=a["perm"])
        if op.kind == "reshape":
            return self.node("Reshape", [x[0], self.ints(f"{out}_shape", a["shape"])], out)
        if op.kind == "expand":
            return self.expand(op)
        if op.kind == "mean":
            return self.node("ReduceMean", x, out, axes=a["axes"], keepdims=int(a["keepdim"]))
        if op.kind == "layernorm":
            return self.layernorm(op)
        if op.kind == "normalize":  # x / max(||x||_2, eps)
            norm = self.node("ReduceL2", x, axes=[a["axis"]], keepdims=1)
            return self.node("Div", [x[0], self.node("Max", [norm, self.scalar("eps", a["eps"])])], out)
        if op.kind == "slice":
            return self.slice(op)
        if op.kind == "pad":  # zeros at the ends: on an activation grid whose zero point represents 0.0 exactly
            return self.node("Pad", [x[0], self.ints(f"{out}_pads", a["pads"])], out)
        raise ExportError(f"no ONNX lowering for reference op {op.kind!r}")

    def moved(self, op):
        """Data movement of a quantized value, on its stored uint8 integers, then DequantizeLinear: exactly the same
        values, and the op reading them (a matmul) sees DequantizeLinear directly, which onnxruntime needs to fuse it
        into QLinearMatMul. It moves dequantized values across Reshape and Transpose itself, but not across Gather:
        Swin V2's attention-times-v matmuls ran in float (v is qkv[2]), and its export agreed on 93.3 %."""
        q, scale, zero = self.stored[op.inputs[0]]
        moved = RefOp(op.kind, [q], self.name(f"{op.output}_stored"), op.attrs)
        self.lower_float_op(moved)
        self.stored[op.output] = (moved.output, scale, zero)
        return self.node("DequantizeLinear", [moved.output, scale, zero], op.output)

    def unary(self, fn, x, out):
        if fn in ("sigmoid", "tanh"):
            return self.node(fn.capitalize(), [x], out)
        if fn == "hardsigmoid":  # relu6(x + 3) / 6
            return self.node("HardSigmoid", [x], out, alpha=1.0 / 6, beta=0.5)
        if fn == "hardswish":
            return self.node("Mul", [x, self.node("HardSigmoid", [x], alpha=1.0 / 6, beta=0.5)], out)
        if fn == "silu":
            return self.node("Mul", [x, self.node("Sigmoid", [x])], out)
        if fn == "mish":
            return self.node("Mul", [x, self.node("Tanh", [self.node("Softplus", [x])])], out)
        if fn == "gelu":  # x * (1 + erf(x / sqrt(2))) / 2
            erf = self.node("Erf", [self.node("Mul", [x, self.scalar("rsqrt2", 2**-0.5)])])
            half_x = self.node("Mul", [x, self.scalar("half", 0.5)])
            return self.node("Mul", [half_x, self.node("Add", [erf, self.scalar("one", 1.0)])], out)
        if fn == "gelu_tanh":  # x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3))) / 2
            cube = self.node("Mul", [self.node("Mul", [x, x]), x])
            inner = self.node("Add", [x, self.node("Mul", [cube, self.scalar("c", 0.044715)])])
            t = self.node("Tanh", [self.node("Mul", [inner, self.scalar("k", (2 / np.pi) ** 0.5)])])
            half_x = self.node("Mul", [x, self.scalar("half", 0.5)])
            return self.node("Mul", [half_x, self.node("Add", [t, self.scalar("one", 1.0)])], out)
        raise ExportError(f"no ONNX lowering for {fn}")

    def layernorm(self, op):
        a, x = op.attrs, op.inputs[0]
        mean = self.node("ReduceMean", [x], axes=a["axes"], keepdims=1)
        centred = self.node("Sub", [x, mean])
        var = self.node("ReduceMean", [self.node("Mul", [centred, centred])], axes=a["axes"], keepdims=1)
        std = self.node("Sqrt", [self.node("Add", [var, self.scalar("eps", a["eps"])])])
        normed = self.node("Div", [centred, std])
        weight = self.const(f"{op.output}_weight", a["weight"].numpy().astype(np.float32))
        bias = self.const(f"{op.output}_bias", a["bias"].numpy().astype(np.float32))
        return self.node("Add", [self.node("Mul", [normed, weight]), bias], op.output)

    def expand(self, op):
        """Expand to the op's shape with the batch of the model input (dim 0)."""
        batch = self.node("Slice", [self.node("Shape", [self.model_input]), self.ints("b0", [0]),
                                    self.ints("b1", [1])])
        shape = self.node("Concat", [batch, self.ints("rest", op.attrs["shape"][1:])], axis=0)
        return self.node("Expand", [op.inputs[0], shape], op.output)

    def slice(self, op):
        a = op.attrs
        x = op.inputs[0]
        last = not a["gather"]
        if a["axes"]:
            steps = [self.ints("steps", a["steps"])] if a.get("steps") else []
            x = self.node("Slice", [x, self.ints("starts", a["starts"]), self.ints("ends", a["ends"]),
                                    self.ints("axes", a["axes"]), *steps], op.output if last else None)
        for k, (axis, index) in enumerate(sorted(a["gather"], reverse=True)):  # highest axis first
            done = k == len(a["gather"]) - 1
            x = self.node("Gather", [x, self.ints("index", index)], op.output if done else None, axis=axis)
        if not a["axes"] and not a["gather"]:
            x = self.node("Identity", [x], op.output)
        return x


def _without_redundant_relus(ops):
    """Drop a ReLU whose only consumer quantizes with the zero point at the bottom of its range.

    quantize(relu(x)) == quantize(x) there (both clamp at 0). onnxruntime removes such a ReLU itself
    before a convolution, but not before an Add, whose QLinearAdd fusion it then misses.
    """
    users = {}
    for op in ops:
        for name in op.inputs:
            users.setdefault(name, []).append(op)
    rename, kept = {}, []
    for op in ops:
        op.inputs = [rename.get(i, i) for i in op.inputs]
        after = users.get(op.output, [])
        if op.kind == "relu" and len(after) == 1 and after[0].kind == "quantize" and \
                after[0].attrs["zero_point"] == after[0].attrs["qmin"]:
            rename[op.output] = op.inputs[0]
            continue
        kept.append(op)
    return kept


def build_onnx(model, example_input, weights="int8", metadata=None, opset=OPSET):
    """The ONNX ModelProto of ``model`` (a simulated GraphModule, or an FP32 module) and the writer's notes."""
    onnx = _onnx()
    if weights not in _RANGES:
        raise ExportError(f"weights must be int8 or uint8, not {weights!r}")
    graph = reference_graph(model, example_input[:1])
    writer = _Writer(onnx, weights)
    writer.model_input = graph.input
    writer.reserved = {graph.input} | {op.output for op in graph.ops}
    for op in _without_redundant_relus(graph.ops):
        writer.lower(op)
    with torch.no_grad():
        out_shape = list(model(example_input[:1]).shape[1:])
    helper, tp = onnx.helper, onnx.TensorProto
    inputs = [helper.make_tensor_value_info(graph.input, tp.FLOAT, ["batch", *example_input.shape[1:]])]
    output = graph.output
    if output == graph.input:
        raise ExportError("the model's output is its input")
    outputs = [helper.make_tensor_value_info("logits", tp.FLOAT, ["batch", *out_shape])]
    writer.nodes.append(helper.make_node("Identity", [output], ["logits"], name="output"))
    proto = helper.make_model(helper.make_graph(writer.nodes, "compressor", inputs, outputs, writer.initializers),
                              opset_imports=[helper.make_opsetid("", opset)], producer_name="compressor")
    proto.ir_version = min(proto.ir_version, 8)  # readable by onnxruntime releases of the last years
    helper.set_model_props(proto, {k: str(v) for k, v in (metadata or {}).items()})
    onnx.checker.check_model(proto, full_check=True)
    return proto, writer


def export_onnx(model, example_input, path, weights="int8", metadata=None, opset=OPSET):
    """Write ``model`` (simulated GraphModule from the quantizer, or an FP32 module) to ``path`` as ONNX.

    ``weights``: 'int8' (u8s8) or 'uint8' (u8u8) storage of integer weights; ``metadata`` goes to
    the model's metadata_props (the int8 target and format among them). Returns the path.
    """
    onnx = _onnx()
    example_input = example_input.detach().cpu()
    proto, writer = build_onnx(model, example_input, weights, metadata, opset)
    if writer.clamped:
        log.info("%d weight integers of channels with a negative batch-norm scale were clamped by one step to fit "
                 "%s", writer.clamped, weights)
    if writer.varying_zero_points:
        log.info("%d layers keep per-channel weight zero points (asymmetric per-channel weights, exported as they "
                 "are; onnxruntime 1.32 fuses them into QLinearConv, tested): %s",
                 len(writer.varying_zero_points), ", ".join(writer.varying_zero_points[:5]))
    atomic_write(path, lambda tmp: onnx.save(proto, tmp))
    kind = f"QDQ, opset {opset}, {weights} weights" if writer.quantized else f"FP32: no quantizer, opset {opset}"
    log.info("ONNX (%s) written to %s (%.1f KiB)", kind, path, os.path.getsize(path) / 1024)
    return path
