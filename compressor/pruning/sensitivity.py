"""Pruning sensitivity analysis (Distiller's ``--sense``): prune one weight at a time to each of a range of
levels, evaluate, restore; the curve of accuracy against sparsity says which layers tolerate pruning.

``element``: the smallest magnitudes (SparsityLevelParameterPruner's rule); ``filter`` / ``channel``: the filters
or input channels with the smallest mean L1 norm (``floor(level x count)`` of them), each weight on its own.
"""

import torch

from compressor.pruning import criteria

KINDS = {"element": None, "filter": "FILTERS", "channel": "CHANNELS"}


def sensitivity_targets(model, kind):
    """{name: parameter} the analysis prunes: conv and linear weights (filter/channel: convolutions only)."""
    out = {}
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d) or (kind == "element" and isinstance(module, torch.nn.Linear)):
            if kind == "channel" and module.groups != 1:
                continue
            out[f"{module_name}.weight"] = module.weight
    return out


def level_keep_mask(weight, kind, level):
    if KINDS[kind] is None:
        return criteria.level_mask(weight, level)
    structure = KINDS[kind]
    scores = criteria.structure_scores(weight, structure)
    return criteria.expand_structures(weight, structure, criteria.bottom_structures(scores, level))


@torch.no_grad()
def pruning_sensitivity(model, evaluate, kind, levels, progress=None):
    """Rows (parameter, level, result of ``evaluate(model)``) for every target weight and level; the model's
    weights are restored after each. ``progress(iterable, desc)`` wraps the loop (a bar), if given."""
    if kind not in KINDS:
        raise ValueError(f"sensitivity kind {kind!r}; expected one of {sorted(KINDS)}")
    targets = sensitivity_targets(model, kind)
    work = [(name, level) for name in targets for level in levels]
    rows = []
    for name, level in (progress(work, "sensitivity") if progress else work):
        weight = targets[name]
        saved = weight.detach().clone()
        weight.mul_(level_keep_mask(weight, kind, level))
        try:
            rows.append((name, float(level), evaluate(model)))
        finally:
            weight.copy_(saved)
    return rows
