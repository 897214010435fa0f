"""Channel groups: the output channels of convolutions that the network ties together.

A filter removed from one convolution must go from everything that reads its channel: the batch-norm after it,
the input channels of the convolutions and linear layers that consume it, and, where outputs meet at a residual
add, the same channel of every other producer at that add. One ``ChannelGroup`` is such a set, found by tracing the
model with ``torch.fx``: producers (conv/linear outputs, dim 0 of their weights), batch-norms on the way, consumers
(conv/linear inputs, dim 1). Channel-wise ops that keep a zero channel zero (ReLU, ReLU6, hardswish, SiLU, GELU,
leaky ReLU, pooling, dropout, flatten after global pooling) pass a group on; anything else that reads it (a
concatenation, a product, a depthwise or grouped convolution, the model's output) freezes the group, with the
reason, and thinning leaves it alone.
"""

import operator
from dataclasses import dataclass, field

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

ZERO_KEEPING_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.Identity, nn.Dropout,
                        nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
ZERO_KEEPING_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.hardswish, F.silu, F.gelu, F.leaky_relu, F.dropout,
                          F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
ZERO_KEEPING_METHODS = {"relu", "relu_", "contiguous", "clone", "detach"}
ADDS = {operator.add, operator.iadd, torch.add}
FLATTENS = {torch.flatten}


@dataclass
class ChannelGroup:
    """Channels tied together; ``size`` channels, indexed alike in every member."""

    size: int
    producers: list = field(default_factory=list)  # module names whose weight dim 0 (and bias) are these channels
    norms: list = field(default_factory=list)  # batch-norm module names over these channels
    consumers: list = field(default_factory=list)  # module names whose weight dim 1 reads these channels
    norm_of: dict = field(default_factory=dict)  # producer -> the batch-norm that reads its output directly
    frozen: str | None = None  # why the group cannot be thinned (None: it can)

    def freeze(self, reason):
        self.frozen = self.frozen or reason


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

    def union(self, a, b):
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[b] = a
        return a


def _is_global_pool(module_or_fn, node):
    if isinstance(module_or_fn, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        size = module_or_fn.output_size
        return size in (1, (1, 1), [1, 1])
    if module_or_fn in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return size in (1, (1, 1), [1, 1])
    return False


def channel_groups(model):
    """{group id: ChannelGroup} and {module name: group id of its output} for a plain (unprepared) model.

    Raises ``ValueError`` naming the reason when ``torch.fx`` cannot trace the model."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # fx raises many kinds for untraceable Python control flow
        raise ValueError(f"the model cannot be traced with torch.fx ({type(exc).__name__}: {exc})") from None
    modules = dict(model.named_modules())
    sets, info = _Sets(), {}
    group_of = {}  # node -> group id of its output channels (None: not a tracked channel tensor)
    pooled = set()  # nodes whose output is a global pool (N, C, 1, 1)
    out_of_module = {}

    def group(gid):
        root = sets.find(gid)
        return info[root]

    def freeze_inputs(node, reason):
        for arg in node.all_input_nodes:
            gid = group_of.get(arg)
            if gid is not None:
                group(gid).freeze(reason)

    for node in graph.nodes:
        target = modules.get(node.target) if node.op == "call_module" else None
        tracked = [a for a in node.all_input_nodes if group_of.get(a) is not None]
        first = group_of.get(node.args[0]) if node.args and isinstance(node.args[0], torch.fx.Node) else None
        if node.op == "call_module" and isinstance(target, (nn.Conv2d, nn.Conv1d, nn.Linear)):
            grouped = isinstance(target, (nn.Conv2d, nn.Conv1d)) and target.groups != 1
            if first is not None:
                if grouped:
                    group(first).freeze(f"{node.target} is a grouped/depthwise convolution")
                else:
                    group(first).consumers.append(node.target)
            if grouped:
                group_of[node] = None
                continue
            gid = sets.new()
            info[gid] = ChannelGroup(size=target.weight.shape[0], producers=[node.target])
            group_of[node] = gid
            out_of_module[node.target] = gid
        elif node.op == "call_module" and isinstance(target, (nn.BatchNorm2d, nn.BatchNorm1d)) and first is not None:
            group(first).norms.append(node.target)
            src = node.args[0]
            if src.op == "call_module" and src.target in out_of_module:
                group(first).norm_of[src.target] = node.target
            group_of[node] = first
        elif first is not None and (
            (node.op == "call_module" and isinstance(target, ZERO_KEEPING_MODULES))
            or (node.op == "call_function" and node.target in ZERO_KEEPING_FUNCTIONS)
            or (node.op == "call_method" and node.target in ZERO_KEEPING_METHODS)
        ) and len(tracked) == 1:
            group_of[node] = first
            if _is_global_pool(target if node.op == "call_module" else node.target, node):
                pooled.add(node)
        elif node.op in ("call_function", "call_method") and node.target in (*ADDS, "add", "add_") and \
                len(node.args) == 2 and all(isinstance(a, torch.fx.Node) for a in node.args):
            gids = [group_of.get(a) for a in node.args]
            if all(g is not None for g in gids):
                ra, rb = sets.find(gids[0]), sets.find(gids[1])
                if ra != rb:
                    a, b = info[ra], info[rb]
                    a.producers += b.producers
                    a.norms += b.norms
                    a.consumers += b.consumers
                    a.norm_of.update(b.norm_of)
                    a.freeze(b.frozen)
                    sets.union(ra, rb)  # ra stays the root
                group_of[node] = ra
            else:
                freeze_inputs(node, f"{node.name} adds a tensor whose channels are not tracked")
                group_of[node] = None
        elif first is not None and node.args[0] in pooled and (
            (node.op == "call_function" and node.target in FLATTENS)
            or (node.op == "call_method" and node.target in ("flatten", "squeeze"))
        ):
            group_of[node] = first  # (N, C, 1, 1) -> (N, C): channel c stays feature c
        else:
            if tracked:
                what = node.target if node.op != "call_function" else getattr(node.target, "__name__", node.target)
                freeze_inputs(node, f"{node.op} {what} reads the channels" if node.op != "output"
                              else "the model's output")
            group_of[node] = None
    groups = {}
    for gid in info:
        root = sets.find(gid)
        groups[root] = info[root]
    owner = {name: sets.find(gid) for name, gid in out_of_module.items()}
    return groups, owner
