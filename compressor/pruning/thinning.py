"""Thinning: physically remove pruned channels, so the model is a smaller dense model (Distiller's ``net_thinner``).

A channel of a group (``graph.channel_groups``) goes when it is dead everywhere: either every producer's path
outputs exactly zero for it (filter, bias and the batch-norm channel after it all masked/zero: what filter pruning
leaves), or no consumer reads it (its input channel is zero in every consumer: what channel pruning leaves). Either
way removing it does not change the model's function, so the thinned model computes what the pruned one did (a
test checks it). Frozen groups (concatenations, depthwise convolutions, the model's output) are left whole and the
report says why.

The result is a ``record``: {module name: {"out": kept output indices, "in": kept input indices}}. It is kept in
checkpoints (the scheduler's state), so a fresh model of the architecture is cut to the same shapes before the
thinned weights load into it (``apply_record``).
"""

import logging

import torch
import torch.nn as nn

from compressor.core.errors import CheckpointError
from compressor.pruning.graph import channel_groups

log = logging.getLogger(__name__)


def _zero(t):
    return t is None or not bool(t.detach().any())


def _silent_norm(norm, c, input_zero):
    """True when batch-norm channel ``c`` outputs exactly 0: gamma = beta = 0, or a zero input with zero mean and
    beta (in training mode a zero input normalizes to 0, in eval mode to -mean / std)."""
    if norm.affine and _zero(norm.weight[c]) and _zero(norm.bias[c]):
        return True
    return input_zero and _zero(norm.running_mean[c]) and (not norm.affine or _zero(norm.bias[c]))


def dead_channels(model, group, mode="filters"):
    """Indices of channels of ``group`` that can go; ``mode``: 'filters' (outputs all zero) or 'channels'
    (no consumer reads them) or 'both'."""
    modules = dict(model.named_modules())
    direct = set(group.norm_of.values())
    later_norms = [(modules[n], off) for n, off in group.norms if n not in direct]
    channelwise = [(modules[n], off) for n, off in group.channelwise]
    consumers = [(modules[n], off) for n, off in group.consumers]
    dead = []
    for c in range(group.size):
        outputs_zero = bool(group.producers)
        for p in group.producers:
            m = modules[p]
            conv_zero = _zero(m.weight[c]) and (m.bias is None or _zero(m.bias[c]))
            norm = modules.get(group.norm_of.get(p))
            if not (conv_zero if norm is None else _silent_norm(norm, c, conv_zero)):
                outputs_zero = False
                break
        if outputs_zero:  # after depthwise convolutions, the zero channel meets their bias and their batch-norms
            outputs_zero = all(d.bias is None or _zero(d.bias[off + c]) for d, off in channelwise) and \
                all(_silent_norm(n, off + c, True) for n, off in later_norms)
        unread = bool(consumers) and all(_zero(q.weight[:, off + c]) for q, off in consumers)
        if (mode in ("filters", "both") and outputs_zero) or (mode in ("channels", "both") and unread):
            dead.append(c)
    return dead


def _slice_param(module, attr, dim, keep, optimizer):
    """Replace ``module.attr`` by its slice; a parameter becomes a new Parameter (autograd caches a leaf's shape,
    so resizing ``.data`` in place fails in the next backward pass) that takes the old one's place in the
    optimizer, with its state (momentum, Adam's moments) sliced alike."""
    p = getattr(module, attr, None)
    if p is None:
        return
    index = torch.as_tensor(keep, dtype=torch.long, device=p.device)
    new = p.detach().index_select(dim, index).contiguous()
    if not isinstance(p, nn.Parameter):
        setattr(module, attr, new)  # a buffer (running statistics)
        return
    param = nn.Parameter(new, requires_grad=p.requires_grad)
    if optimizer is not None:
        for group in optimizer.param_groups:
            group["params"] = [param if q is p else q for q in group["params"]]
        if p in optimizer.state:
            state = optimizer.state.pop(p)
            optimizer.state[param] = {k: v.index_select(dim, index.to(v.device)).contiguous()
                                      if isinstance(v, torch.Tensor) and v.shape == p.shape else v
                                      for k, v in state.items()}
    setattr(module, attr, param)


def _cut(module, out_keep=None, in_keep=None, optimizer=None):
    """Cut one module to the kept output/input indices, in place, attributes included."""
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        for attr in ("weight", "bias", "running_mean", "running_var"):
            _slice_param(module, attr, 0, out_keep, optimizer)
        module.num_features = len(out_keep)
        return
    if out_keep is not None:
        _slice_param(module, "weight", 0, out_keep, optimizer)
        _slice_param(module, "bias", 0, out_keep, optimizer)
    if in_keep is not None:
        _slice_param(module, "weight", 1, in_keep, optimizer)
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif module.groups != 1 and in_keep is None:  # depthwise: one filter per channel
        module.out_channels = module.in_channels = module.groups = module.weight.shape[0]
    else:
        module.out_channels, module.in_channels = module.weight.shape[0], module.weight.shape[1] * module.groups


def apply_record(model, record, optimizer=None):
    """Cut ``model`` to a thinning record's shapes (a fresh model before thinned weights load into it); a module
    already of the record's shape (cut before) is left as it is."""
    modules = dict(model.named_modules())
    missing = [name for name in record if name not in modules]
    if missing:
        raise ValueError(f"the thinning record names modules this model lacks: {missing[:5]}")
    for name, cut in record.items():
        module = modules[name]
        out_size = module.num_features if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) else \
            module.weight.shape[0]
        out_keep = cut.get("out") if cut.get("out") is not None and len(cut["out"]) != out_size else None
        in_keep = cut.get("in") if cut.get("in") is not None and len(cut["in"]) != module.weight.shape[1] else None
        if out_keep is not None or in_keep is not None:
            _cut(module, out_keep, in_keep, optimizer)


def restore_thinning(model, record, source):
    """Cut a fresh model to a thinned checkpoint's shapes; ``source`` names the file in the error."""
    try:
        apply_record(model, record)
    except (ValueError, IndexError, RuntimeError) as exc:
        raise CheckpointError(f"{source}: its thinning record does not fit this model: {exc}") from None
    log.info("Thinned model: %d modules cut to the shapes of %s", len(record), source)


def merge_records(old, new):
    """The record of thinning ``old``'s result again with ``new`` (indices of ``new`` are into the cut shapes)."""
    merged = {k: dict(v) for k, v in (old or {}).items()}
    for name, cut in new.items():
        entry = merged.setdefault(name, {})
        for side in ("out", "in"):
            if cut.get(side) is None:
                continue
            entry[side] = [entry[side][i] for i in cut[side]] if entry.get(side) is not None else list(cut[side])
    return merged


def thin(model, mode="filters", optimizer=None, masks=None):
    """Remove dead channels from ``model`` in place; returns (record of this thinning, report lines).

    ``masks`` (``ParameterMasks``) are cut alike, so they keep matching their weights."""
    groups, _ = channel_groups(model)
    modules = dict(model.named_modules())
    report, cuts = [], {}  # (module, side) -> {offset of the group's channels: (group size, kept indices)}
    for group in groups.values():
        if group.frozen:
            if group.producers and dead_channels(model, group, mode):
                report.append(f"left whole: {', '.join(group.producers)} ({group.frozen})")
            continue
        dead = set(dead_channels(model, group, mode))
        if not dead:
            continue
        keep = [c for c in range(group.size) if c not in dead] or [0]  # a layer never vanishes entirely
        for name in group.producers:
            cuts.setdefault((name, "out"), {})[0] = (group.size, keep)
        for name, offset in group.norms + group.channelwise:
            cuts.setdefault((name, "out"), {})[offset] = (group.size, keep)
        for name, offset in group.consumers:
            cuts.setdefault((name, "in"), {})[offset] = (group.size, keep)
        report.append(f"{', '.join(group.producers)}: {group.size} -> {len(keep)} channels")
    record = {}
    for (name, side), by_offset in cuts.items():
        module = modules[name]
        width = module.num_features if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) else \
            module.weight.shape[1 if side == "in" else 0]
        kept, position = [], 0
        for offset in sorted(by_offset):  # channels of other, untouched groups (a concatenation's) stay
            size, keep = by_offset[offset]
            kept += list(range(position, offset)) + [offset + k for k in keep]
            position = offset + size
        record.setdefault(name, {})[side] = kept + list(range(position, width))
    for name, cut in record.items():
        _cut(modules[name], cut.get("out"), cut.get("in"), optimizer)
        if masks is not None:
            _cut_masks(masks, name, modules[name], cut)
    return record, report


def _cut_masks(masks, module_name, module, cut):
    for attr in ("weight", "bias"):
        key = f"{module_name}.{attr}"
        if key not in masks:
            continue
        mask = masks[key]
        if cut.get("out") is not None:
            mask = mask.index_select(0, torch.as_tensor(cut["out"], dtype=torch.long))
        if cut.get("in") is not None and attr == "weight" and mask.dim() > 1:
            mask = mask.index_select(1, torch.as_tensor(cut["in"], dtype=torch.long))
        masks.set(key, mask)
