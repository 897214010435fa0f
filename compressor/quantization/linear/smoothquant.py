"""SmoothQuant's scale migration (Xiao et al. 2023) for linear layers fed by a LayerNorm.

Transformers carry a few activation channels 10-100x larger than the rest at LayerNorm outputs; a per-tensor 8-bit
activation grid sized for them leaves the other channels a handful of levels. For a LayerNorm whose output feeds only
linear layers (ViT's ``ln_1`` -> the attention's q/k/v projection, ``ln_2`` -> the MLP; ConvNeXt's ``norm`` -> its
first pointwise linear), dividing channel ``j`` of the LayerNorm's affine weight and bias by ``s_j`` and multiplying
column ``j`` of every consumer's weight by ``s_j`` leaves the function unchanged. With
``s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha)`` (``X_j`` the channel's calibration values, ``W_:,j`` the column
over all consumers) the activation outliers move into the weights, which per-channel weight quantization absorbs;
``alpha = 0.5`` is the paper's default for most models.

A linear fed by GELU (the MLP's second layer) cannot take the scale this way: GELU is not positively homogeneous,
so the factor would have to become an extra per-channel multiply in the graph; not done.
"""

import dataclasses

import torch
from torch import nn

from compressor.core import distributed
from compressor.core.spec import Config, OptionalFloat, setting
from compressor.quantization.graph import sites


@dataclasses.dataclass(frozen=True, kw_only=True)
class SmoothQuantConfig(Config):
    """PostTrainLinearQuantizer key; per LayerNorm through overrides naming it (null there switches it off)."""

    smoothquant_alpha: float | None = setting(OptionalFloat(None, lo=0.0, hi=1.0), "migrate activation outliers of "
                                              "LayerNorm outputs into the linear layers they feed (SmoothQuant), "
                                              "with this alpha (0.5 typical); null: off", layer=True)


def norm_linear_groups(model):
    """[(LayerNorm name, [names of the Linear layers reading its output])] where the output goes nowhere else
    (sizes read from it aside)."""
    gm = sites.trace(model)
    groups = []
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        norm = gm.get_submodule(node.target)
        if not isinstance(norm, nn.LayerNorm) or not norm.elementwise_affine or norm.bias is None:
            continue
        readers = [u for u in node.users if not sites.is_shape_value(u)]
        linears = [u.target for u in readers if u.op == "call_module" and isinstance(gm.get_submodule(u.target),
                                                                                      nn.Linear)]
        channels = norm.weight.numel()
        if readers and len(linears) == len(readers) and all(
                gm.get_submodule(name).in_features == channels for name in linears):
            groups.append((node.target, linears))
    return groups


@torch.no_grad()
def channel_maxima(model, norm_names, loader, device="cpu", max_batches=None):
    """{LayerNorm name: per-channel max |output|} over the images of ``loader`` (last dim = channels), over every
    process's images under torchrun (each process then applies the same scales)."""
    maxima, handles = {}, []

    def hook(name):
        def record(module, inputs, output):
            m = output.detach().abs().reshape(-1, output.shape[-1]).amax(dim=0)
            maxima[name] = torch.maximum(maxima[name], m) if name in maxima else m
        return record

    for name in norm_names:
        handles.append(model.get_submodule(name).register_forward_hook(hook(name)))
    try:
        for i, (x, _) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            model(x.to(device))
    finally:
        for h in handles:
            h.remove()
    if distributed.is_distributed():
        for name in sorted(maxima):
            torch.distributed.all_reduce(maxima[name], op=torch.distributed.ReduceOp.MAX)
    return maxima


def fp32_weight(module):
    """The FP32 master weight (under a quantizer's parametrization, or the plain one)."""
    plist = getattr(getattr(module, "parametrizations", None), "weight", None)
    return plist.original if plist is not None else module.weight


@torch.no_grad()
def migrate(model, groups, maxima, alpha_for, floor=1e-5):
    """Apply the scales in place; ``alpha_for(norm name)`` gives alpha (None: leave that LayerNorm). Returns
    {norm: {"alpha", "act_max_ratio_before", "act_max_ratio_after"}} (largest over median channel max)."""
    report = {}
    for norm_name, linears in groups:
        alpha = alpha_for(norm_name)
        if alpha is None or norm_name not in maxima:
            continue
        norm = model.get_submodule(norm_name)
        act = maxima[norm_name].clamp_min(floor)
        weights = [fp32_weight(model.get_submodule(name)) for name in linears]
        w_max = torch.stack([w.abs().amax(dim=0) for w in weights]).amax(dim=0).clamp_min(floor)
        s = (act.pow(alpha) / w_max.pow(1 - alpha)).clamp_min(floor)
        norm.weight.div_(s)
        norm.bias.div_(s)
        for w in weights:
            w.mul_(s)
        after = act / s
        report[norm_name] = {"alpha": alpha, "linears": linears,
                             "act_max_ratio_before": float(act.max() / act.median()),
                             "act_max_ratio_after": float(after.max() / after.median())}
    return report
