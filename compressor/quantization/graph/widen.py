"""Widen a model's conv/linear layers by an integer factor (WRPN, Mishra et al. 2018), keeping its function.

Each widened layer gets its output channels replicated ``factor`` times and the weights
of replicated input channels divided by ``factor`` (Net2WiderNet, Chen et al. 2016), so a
trained FP32 model widened this way computes what it computed before, and fine-tuning
starts from it. A small noise breaks the symmetry between replicas. The model's first
layer keeps its input channels and its last layer its outputs (the classes).
"""

import torch
from torch import fx, nn

from compressor.core.errors import WidenError
from compressor.quantization.graph.sites import LAYER_TYPES, NORM_TYPES, trace

SYMMETRY_NOISE = 0.01  # relative to each tensor's std



def plan_widening(model):
    """{module name: (input widened, output widened)} for conv/linear/batch-norm modules."""
    gm = trace(model)
    modules = dict(gm.named_modules())
    is_layer = lambda n: n.op == "call_module" and isinstance(modules[n.target], LAYER_TYPES)  # noqa: E731
    output = next(n for n in gm.graph.nodes if n.op == "output")
    last, stack, seen = set(), list(output.all_input_nodes), set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if is_layer(node):
            last.add(node.target)
        else:
            stack.extend(node.all_input_nodes)
    wide, plan = {}, {}
    for node in gm.graph.nodes:
        inputs = [a for a in node.all_input_nodes if isinstance(a, fx.Node)]
        in_wide = any(wide.get(a, False) for a in inputs)
        if node.op == "placeholder":
            wide[node] = False
        elif is_layer(node):
            wide[node] = node.target not in last
            plan[node.target] = (in_wide, wide[node])
        else:
            wide[node] = in_wide
            if node.op == "call_module" and isinstance(modules[node.target], NORM_TYPES):
                plan[node.target] = (in_wide, in_wide)
    return plan


def _wider(module, factor, in_wide, out_wide):
    fi, fo = (factor if in_wide else 1), (factor if out_wide else 1)
    if isinstance(module, nn.Linear):
        return nn.Linear(module.in_features * fi, module.out_features * fo, module.bias is not None)
    if isinstance(module, NORM_TYPES):
        return type(module)(module.num_features * fo, module.eps, module.momentum, module.affine,
                            module.track_running_stats)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and type(module) in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        if module.groups != 1:
            raise WidenError("widening grouped/depthwise convolutions is not supported")
        return type(module)(module.in_channels * fi, module.out_channels * fo, module.kernel_size, module.stride,
                            module.padding, module.dilation, 1, module.bias is not None, module.padding_mode)
    raise WidenError(f"cannot widen {type(module).__name__}")


def widen_tensor(key, value, plan, factor, generator=None):
    """The widened version of one state-dict entry (``None`` plan entry: unchanged)."""
    module = key.split(".parametrizations.")[0] if ".parametrizations." in key else key.rsplit(".", 1)[0]
    if module not in plan or not torch.is_tensor(value) or value.dim() == 0:
        return value
    in_wide, out_wide = plan[module]
    fo, fi = (factor if out_wide else 1), (factor if in_wide else 1)
    if value.dim() == 1:
        return value.repeat(fo)
    reps = [fo, fi] + [1] * (value.dim() - 2)
    wide = value.repeat(*reps) / fi
    if fo > 1 or fi > 1:
        noise = torch.randn(wide.shape, generator=generator, dtype=wide.dtype) * value.float().std() * SYMMETRY_NOISE
        wide = wide + noise
    return wide


def widen_state_dict(state, plan, factor, seed=0):
    """Widen a narrow state dict (plain or prepared key names) by ``plan``; Net2Net-style, function-preserving."""
    generator = torch.Generator().manual_seed(seed)
    return {k: widen_tensor(k, v, plan, factor, generator) for k, v in state.items()}


def widen_model(model, factor, seed=0):
    """Replace ``model``'s layers by wider ones holding its current weights, widened; returns the plan."""
    plan = plan_widening(model)
    narrow = {k: v for k, v in model.state_dict().items() if k.rsplit(".", 1)[0] in plan}
    device = next(model.parameters()).device
    for name, (in_wide, out_wide) in plan.items():
        parent, _, attr = name.rpartition(".")
        old = model.get_submodule(name)
        setattr(model.get_submodule(parent) if parent else model, attr,
                _wider(old, factor, in_wide, out_wide).to(device))
    model.load_state_dict(widen_state_dict(narrow, plan, factor, seed), strict=False)
    return plan
