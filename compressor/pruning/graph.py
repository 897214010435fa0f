"""Channel groups: the output channels of convolutions that the network ties together.

A filter removed from one convolution must go from everything that reads its channel: the batch-norm after it,
the input channels of the convolutions and linear layers that consume it, and, where outputs meet at a residual
add, the same channel of every other producer at that add. One ``ChannelGroup`` is such a set, found by tracing the
model with ``torch.fx``: producers (conv/linear outputs, dim 0 of their weights), batch-norms on the way, consumers
(conv/linear inputs, dim 1), and depthwise convolutions (channel-wise: one filter per channel, cut along dim 0,
as MobileNet's). A concatenation (DenseNet, Inception, SqueezeNet) places each input's channels at an offset, so a
member reads a group's channel ``c`` at ``offset + c``. Channel-wise ops that keep a zero channel zero (ReLU, ReLU6,
hardswish, SiLU, GELU, leaky ReLU, pooling, dropout, stochastic depth, flatten after global pooling) pass a group
on; anything else that reads it (a product, a grouped convolution, a permute, the model's output) freezes the
group, with the reason, and thinning leaves it alone.
"""

import operator
from dataclasses import dataclass, field

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
import torchvision

ZERO_KEEPING_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.Identity, nn.Dropout,
                        nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
                        torchvision.ops.StochasticDepth)
ZERO_KEEPING_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.hardswish, F.silu, F.gelu, F.leaky_relu, F.dropout,
                          F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
                          torchvision.ops.stochastic_depth}
ZERO_KEEPING_METHODS = {"relu", "relu_", "contiguous", "clone", "detach"}
ADDS = {operator.add, operator.iadd, torch.add}
FLATTENS = {torch.flatten}


@dataclass
class ChannelGroup:
    """Channels tied together; ``size`` channels, channel ``c`` at ``offset + c`` in each member's dimension."""

    size: int
    producers: list = field(default_factory=list)  # module names whose weight dim 0 (and bias) are these channels
    norms: list = field(default_factory=list)  # (batch-norm name, offset) over these channels
    consumers: list = field(default_factory=list)  # (module name, offset) whose weight dim 1 reads them
    channelwise: list = field(default_factory=list)  # (depthwise convolution name, offset), dim 0 each
    norm_of: dict = field(default_factory=dict)  # producer -> the batch-norm that reads its output directly
    frozen: str | None = None  # why the group cannot be thinned (None: it can)

    def freeze(self, reason):
        self.frozen = self.frozen or reason

    def absorb(self, other):
        self.producers += other.producers
        self.norms += other.norms
        self.consumers += other.consumers
        self.channelwise += other.channelwise
        self.norm_of.update(other.norm_of)
        self.freeze(other.frozen)


class _Sets:
    """Union-find over group ids."""

    def __init__(self):
        self.parent = []

    def new(self):
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, i):
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i


def _is_global_pool(module_or_fn, node):
    if isinstance(module_or_fn, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return module_or_fn.output_size in (1, (1, 1), [1, 1])
    if module_or_fn in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return size in (1, (1, 1), [1, 1])
    return False


def _cat_inputs(node):
    """The tensors of ``torch.cat(tensors, dim=1)``, or None when it is another concatenation."""
    if node.op != "call_function" or node.target is not torch.cat:
        return None
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if dim != 1 or not isinstance(tensors, (list, tuple)) or not all(isinstance(t, torch.fx.Node) for t in tensors):
        return None
    return list(tensors)


class _Tracer:
    """Walks the graph once; ``layout[node]`` is the channel layout of a node's output: a list of (group id,
    size) segments in channel order (one segment, or several after a concatenation), or None (not tracked)."""

    def __init__(self, model):
        self.modules = dict(model.named_modules())
        self.sets, self.info, self.layout, self.pooled, self.owner = _Sets(), {}, {}, set(), {}

    def group(self, gid):
        return self.info[self.sets.find(gid)]

    def segments(self, layout):
        """(group, offset) of each segment of a layout."""
        offset, out = 0, []
        for gid, size in layout:
            out.append((self.group(gid), offset))
            offset += size
        return out

    def freeze(self, layout, reason):
        for g, _ in self.segments(layout or []):
            g.freeze(reason)

    def union(self, a, b):
        ra, rb = self.sets.find(a), self.sets.find(b)
        if ra != rb:
            self.info[ra].absorb(self.info[rb])
            self.sets.parent[rb] = ra

    def visit(self, node):
        target = self.modules.get(node.target) if node.op == "call_module" else None
        inputs = [a for a in node.all_input_nodes if self.layout.get(a)]
        first = self.layout.get(node.args[0]) if node.args and isinstance(node.args[0], torch.fx.Node) else None
        if node.op == "call_module" and isinstance(target, (nn.Conv2d, nn.Conv1d, nn.Linear)):
            return self.layer(node, target, first)
        if node.op == "call_module" and isinstance(target, (nn.BatchNorm2d, nn.BatchNorm1d)) and first:
            for g, off in self.segments(first):
                g.norms.append((node.target, off))
            src = node.args[0]
            if len(first) == 1 and src.op == "call_module" and src.target in self.owner:
                self.group(first[0][0]).norm_of[src.target] = node.target
            return first
        if first and len(inputs) == 1 and (
            (node.op == "call_module" and isinstance(target, ZERO_KEEPING_MODULES))
            or (node.op == "call_function" and node.target in ZERO_KEEPING_FUNCTIONS)
            or (node.op == "call_method" and node.target in ZERO_KEEPING_METHODS)
        ):
            if _is_global_pool(target if node.op == "call_module" else node.target, node):
                self.pooled.add(node)
            return first
        if node.op in ("call_function", "call_method") and node.target in (*ADDS, "add", "add_") and \
                len(node.args) == 2 and all(isinstance(a, torch.fx.Node) for a in node.args):
            a, b = (self.layout.get(x) for x in node.args)
            if a and b and [s for _, s in a] == [s for _, s in b]:
                for (ga, _), (gb, _) in zip(a, b):
                    self.union(ga, gb)
                return a
            self.freeze(a, f"{node.name} adds tensors whose channels are not tied alike")
            self.freeze(b, f"{node.name} adds tensors whose channels are not tied alike")
            return None
        cat = _cat_inputs(node)
        if cat is not None and all(self.layout.get(t) for t in cat):
            return [seg for t in cat for seg in self.layout[t]]
        if first and node.args[0] in self.pooled and (
            (node.op == "call_function" and node.target in FLATTENS)
            or (node.op == "call_method" and node.target in ("flatten", "squeeze"))
        ):
            return first  # (N, C, 1, 1) -> (N, C): channel c stays feature c
        for arg in inputs:
            what = node.target if node.op != "call_function" else getattr(node.target, "__name__", node.target)
            self.freeze(self.layout[arg], f"{node.op} {what} reads the channels" if node.op != "output"
                        else "the model's output")
        return None

    def layer(self, node, target, first):
        grouped = isinstance(target, (nn.Conv2d, nn.Conv1d)) and target.groups != 1
        if grouped and target.groups == target.in_channels == target.out_channels and first:
            for g, off in self.segments(first):  # depthwise: channel c in, channel c out
                g.channelwise.append((node.target, off))
            return first
        if first:
            if grouped:
                self.freeze(first, f"{node.target} is a grouped convolution")
            else:
                for g, off in self.segments(first):
                    g.consumers.append((node.target, off))
        if grouped:
            return None
        gid = self.sets.new()
        self.info[gid] = ChannelGroup(size=target.weight.shape[0], producers=[node.target])
        self.owner[node.target] = gid
        return [(gid, target.weight.shape[0])]


def channel_groups(model):
    """{group id: ChannelGroup} and {module name: group id of its output} for a plain (unprepared) model.

    Raises ``ValueError`` naming the reason when ``torch.fx`` cannot trace the model."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # fx raises many kinds for untraceable Python control flow
        raise ValueError(f"the model cannot be traced with torch.fx ({type(exc).__name__}: {exc})") from None
    tracer = _Tracer(model)
    for node in graph.nodes:
        tracer.layout[node] = tracer.visit(node)
    groups = {}
    for gid in tracer.info:
        root = tracer.sets.find(gid)
        groups[root] = tracer.info[root]
    owner = {name: tracer.sets.find(gid) for name, gid in tracer.owner.items()}
    return groups, owner

