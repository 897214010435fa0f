"""Find where a model produces activations to quantize, with torch.fx, so model code needs no rewrite.

Functional ops (``x + y``, ``F.relu``, ``torch.cat``) and every call of a reused
module become their own quantization site. Ops that a deployed integer kernel
fuses are one site at the end of the chain: conv/linear -> batch-norm -> ReLU,
and add/cat -> ReLU.

Site names: a module call is named by its module (``layer1.0.relu``), a second
call of the same module ``layer1.0.relu@1`` (torch.fx's convention), a
functional op by its enclosing module and op (``layer1.0.add``, de-duplicated
with ``_1``), the model input ``input``.
"""

import operator
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from compressor.core.errors import TraceError
from compressor.quantization.graph import capture
from compressor.quantization.quant_module import QuantModule

LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
WEIGHT_TYPES = LAYER_TYPES + (nn.Embedding,)
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
ACT_TYPES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU)
ACT_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.hardtanh, F.leaky_relu, torch.relu_}
ACT_METHODS = {"relu", "relu_"}
JOIN_FUNCTIONS = {operator.add, operator.iadd, torch.add, torch.cat, torch.concat, operator.mul, torch.mul}
JOIN_METHODS = {"add", "add_", "mul", "mul_"}
# Ops whose output is a new value, quantized at its own site and fused with nothing: a deployed integer model
# runs them in float between dequantize and quantize (or on kernels such as QLinearSigmoid / QLinearMatMul),
# while the conv before them keeps its own integer kernel (conv -> bn is a site, then hardswish is one).
OP_TYPES = (nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.Sigmoid, nn.GELU, nn.Tanh, nn.Mish, nn.LayerNorm,
            nn.GroupNorm, nn.Softmax, capture.MatMul)
OP_FUNCTIONS = {F.hardswish, F.hardsigmoid, F.silu, F.sigmoid, torch.sigmoid, F.gelu, F.tanh, torch.tanh, F.mish,
                F.layer_norm, F.group_norm, F.softmax, torch.softmax, torch.matmul, operator.matmul, torch.bmm,
                torch.einsum, F.scaled_dot_product_attention, capture.window_softmax, F.normalize}
OP_METHODS = {"sigmoid", "tanh", "softmax", "matmul", "bmm"}
# Average pooling inside the network (squeeze-excitation: pool -> conv) is quantized so that the convs after it run
# on integer kernels (QLinearGlobalAveragePool -> QLinearConv); the classifier's pooling (pool -> flatten -> fc)
# stays as it was (docs/distiller.md: Distiller quantizes that input only through input_overrides).
# Inception's branches pool inside a block (avg_pool2d -> conv): quantized there too, onnxruntime's
# QLinearAveragePool -> QLinearConv (inception_v3's random-weight export agreed on 95.8 % with those convs in float).
POOL_TYPES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AvgPool2d)
POOL_FUNCTIONS = {F.adaptive_avg_pool2d, F.adaptive_avg_pool1d, F.avg_pool2d, torch._C._nn.avg_pool2d}

# kind of producer -> kinds it may be fused into
_FUSES_INTO = {"layer": {"norm", "act"}, "norm": {"act"}, "join": {"act"}}


def trace(model):
    """Symbolically trace ``model``; a clear error when it cannot be traced.

    Calls of ``nn.Identity`` (e.g. a batch-norm folded away) are dropped from the graph, so
    the ops around them fuse as if it were not there.
    """
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module  # the wrapper's forward scatters and gathers (data-dependent): trace what it wraps
    capture.swap_attention(model)
    try:
        gm = capture.symbolic_trace(model)
    except Exception as exc:  # fx raises many types for untraceable code
        raise TraceError(
            f"cannot trace {type(model).__name__} with torch.fx to find what to quantize: {exc}. "
            "Models with data-dependent control flow need that part wrapped with torch.fx.wrap."
        ) from exc
    changed = False
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Identity):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            changed = True
    changed = _matmuls_as_modules(gm) or changed
    if changed:
        gm.graph.lint()
        gm.recompile()
    return gm


def _matmuls_as_modules(gm):
    """Put a ``capture.MatMul`` call in place of each matmul of ``gm``, held in ``gm.matmuls`` (the model's own
    modules stay as they were) and named for its site as the functional op was (``find_activation_sites``' names).
    Returns the number replaced."""
    namer = _Namer(name for name, _ in gm.named_modules())
    names = {node: namer.name(gm, node) for node in gm.graph.nodes
             if node.op in ("placeholder", "call_module", "call_function", "call_method")}
    replaced = 0
    for node in gm.graph.nodes:
        if capture.is_matmul(node):
            target = "matmuls." + re.sub(r"[^0-9a-zA-Z_]", "_", names[node])
            gm.add_submodule(target, capture.MatMul(names[node]))
            node.op, node.target = "call_module", target
            replaced += 1
    return replaced


_SHAPE_METHODS = {"size", "dim", "numel", "shape"}


_ARITHMETIC = {operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv, operator.mod,
               operator.neg, operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge, torch.add,
               torch.mul, operator.iadd}


def is_shape_value(node):
    """True for values computed from sizes (``x.size(0) * x.size(1)``, ``x.shape[2] // p``), not activations."""
    if isinstance(node, (list, tuple)):
        return all(is_shape_value(a) for a in node)
    if not isinstance(node, fx.Node):
        return not isinstance(node, torch.Tensor)
    if node.op == "call_method" and node.target in _SHAPE_METHODS:
        return True
    if node.op == "call_function" and node.target in (getattr, len):
        return True
    if node.op == "call_function" and node.target is operator.getitem:
        return is_shape_value(node.args[0])
    if node.op == "call_function" and node.target in _ARITHMETIC:
        return all(is_shape_value(a) for a in node.args)
    return False


def softmax_dim(gm, node):
    """The dim of a softmax node (``nn.Softmax``, ``F.softmax``, ``torch.softmax``, ``x.softmax``, Swin's
    ``window_softmax``), else None: what ONNX Runtime runs on its QLinearSoftmax kernel when both sides are
    quantized."""
    if not isinstance(node, fx.Node):
        return None
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        return mod.dim if isinstance(mod, nn.Softmax) else None
    if node.op == "call_function" and node.target is capture.window_softmax:
        return -1  # Swin's: a plain softmax where no shift applies (QLinearSoftmax), masked first where one does
    plain = (node.op == "call_function" and node.target in (F.softmax, torch.softmax)) or (
        node.op == "call_method" and node.target == "softmax")
    if not plain or node.kwargs.get("dtype") is not None or len(node.args) > 2:
        return None
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    return dim if isinstance(dim, int) else None


def node_kind(gm, node):
    if node is None:
        return None
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        if isinstance(mod, LAYER_TYPES):
            return "layer"
        if isinstance(mod, NORM_TYPES):
            return "norm"
        if isinstance(mod, ACT_TYPES):
            return "act"
        if isinstance(mod, OP_TYPES) or (isinstance(mod, POOL_TYPES) and _feeds_convs(gm, node)):
            return "op"
        return None
    if node.op == "call_function":
        if node.target in ACT_FUNCTIONS:
            return "act"
        if node.target in JOIN_FUNCTIONS and not is_shape_value(node):
            return "join"
        if node.target in OP_FUNCTIONS or (node.target in POOL_FUNCTIONS and _feeds_convs(gm, node)):
            return "op"
    if node.op == "call_method":
        if node.target in ACT_METHODS:
            return "act"
        if node.target in JOIN_METHODS and not is_shape_value(node):
            return "join"
        if node.target in OP_METHODS:
            return "op"
    return None


def call_args(node, names, defaults):
    """The values of a call node's arguments ``names`` (positional or keyword), ``defaults`` for those not given."""
    values = dict(zip(names, node.args))
    values.update(node.kwargs)
    return [values.get(n, defaults.get(n)) for n in names]


def _feeds_convs(gm, node):
    """True when every user of ``node`` is a convolution module (a squeeze-excitation block's pooling)."""
    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return bool(node.users) and all(u.op == "call_module" and isinstance(gm.get_submodule(u.target), convs)
                                    for u in node.users)


@dataclass
class ActivationSite:
    """One tensor to fake-quantize: the output of ``node`` (the end of a fused chain)."""

    name: str
    node: fx.Node
    head_name: str  # first op of the chain: settings fall back to it (e.g. ``conv1`` for conv1->bn1->relu)
    chain: tuple
    relu: bool = False  # the chain ends with a ReLU (low-bit methods replace it with a clipped one)


def _fused_into_user(gm, node):
    users = list(node.users)
    if len(users) != 1:
        return False
    kind, user_kind = node_kind(gm, node), node_kind(gm, users[0])
    return user_kind in _FUSES_INTO.get(kind, ()) and users[0].args and users[0].args[0] is node


class _Namer:
    def __init__(self, module_names=()):
        self.taken = set()
        self.reserved = set(module_names)  # functional ops never take a module's name

    def name(self, gm, node):
        if node.op == "placeholder":
            base = "input" if "input" not in self.taken else f"input_{node.name}"
            self.taken.add(base)
            return base
        stack = node.meta.get("nn_module_stack") or {}
        scope = list(stack.keys())[-1] if stack else ""
        if node.op == "call_module":
            base = scope if scope and scope.split("@")[0] == node.target else node.target
            module = gm.get_submodule(node.target)
            if isinstance(module, capture.MatMul):  # a matmul keeps the name of its functional op's site
                base = module.site_name
            if base in self.taken:
                k = 1
                while f"{node.target}@{k}" in self.taken:
                    k += 1
                base = f"{node.target}@{k}"
        else:
            op = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "op")
            base = f"{scope}.{op}" if scope else op
            candidate, k = base, 0
            while candidate in self.taken or candidate in self.reserved:
                k += 1
                candidate = f"{base}_{k}"
            base = candidate
        self.taken.add(base)
        return base


def find_activation_sites(gm, quantize_inputs=True):
    """All places whose output is quantized, in graph order."""
    namer = _Namer(name for name, _ in gm.named_modules())
    names = {}
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "call_module", "call_function", "call_method"):
            names[node] = namer.name(gm, node)
    sites = []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if quantize_inputs:
                sites.append(ActivationSite(names[node], node, names[node], (names[node],)))
            continue
        if node_kind(gm, node) is None or _fused_into_user(gm, node):
            continue
        chain = [node]
        while True:
            prev = chain[0].args[0] if chain[0].args else None
            if isinstance(prev, fx.Node) and node_kind(gm, prev) and _fused_into_user(gm, prev):
                chain.insert(0, prev)
            else:
                break
        sites.append(ActivationSite(names[node], node, names[chain[0]], tuple(names[n] for n in chain),
                                    is_relu(gm, node)))
    return sites


_PASS_THROUGH_METHODS = {"view", "reshape", "flatten", "squeeze", "contiguous"}
_PASS_THROUGH_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze}


def is_model_boundary(site):
    """True for the model input and for a site whose value is the model's output (the logits),
    directly or through reshapes only."""
    if site.node.op == "placeholder":
        return True
    pending, seen = [site.node], set()
    while pending:
        node = pending.pop()
        for user in node.users:
            if user.op == "output":
                return True
            reshapes = (user.op == "call_method" and user.target in _PASS_THROUGH_METHODS) or \
                (user.op == "call_function" and user.target in _PASS_THROUGH_FUNCTIONS)
            if reshapes and user not in seen:
                seen.add(user)
                pending.append(user)
    return False


def is_relu(gm, node):
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)) is nn.ReLU
    if node.op == "call_function":
        return node.target in (F.relu, torch.relu, torch.relu_)
    return node.op == "call_method" and node.target in ACT_METHODS


def instrument(gm, sites, factory):
    """Insert ``factory(site)`` (when not None) after each site; returns {site name: module}.

    A QuantModule with ``REPLACES_ACTIVATION`` (e.g. binary activations) takes the place of the
    site's ReLU instead: it is inserted on the ReLU's input and the ReLU is removed.
    """
    inserted = {}
    for site in sites:
        module = factory(site)
        if module is None:
            continue
        attr = "activation_quantizers." + re.sub(r"[^0-9a-zA-Z_]", "_", site.name)
        node = site.node
        if isinstance(module, QuantModule) and module.REPLACES_ACTIVATION and site.relu:
            node = site.node.args[0]
            site.node.replace_all_uses_with(node)
            gm.graph.erase_node(site.node)
        insert_after(gm, node, attr, module)
        inserted[site.name] = module
    gm.recompile()
    return inserted


def insert_after(gm, node, module_name, module):
    """Insert ``module`` as a call after ``node``; every other user of ``node`` reads its output."""
    gm.add_submodule(module_name, module)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(module_name, (node,))
    node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
    return new


def weight_modules(model):
    """(name, module) of every module with a weight to quantize."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, WEIGHT_TYPES)]
