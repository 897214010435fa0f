"""Data-free quantization's cross-layer equalization and high-bias absorption (Nagel et al. 2019, "DFQ").

Per-tensor weight quantization fails where one layer's output channels have ranges far apart (MobileNet-V2's
depthwise convs: ImageNet top-1 71.7 % -> 0.1 % at W8A8 in the paper). For two layers joined by a positively
homogeneous activation (``relu(x / s) = relu(x) / s`` for ``s > 0``), scaling output channel ``i`` of the first
layer by ``1 / s_i`` and input channel ``i`` of the second by ``s_i`` leaves the network's function unchanged;
``s_i = sqrt(r1_i / r2_i)`` (``r`` the channel's largest absolute weight) gives both layers the same range per
channel, ``sqrt(r1_i * r2_i)``. Chains (expand 1x1 -> depthwise 3x3 -> project 1x1) are equalized pair by pair
until the scales stop moving.

Equalization can leave large biases, hence activations whose range starts far above 0: when the pre-activation of
channel ``i`` (the folded batch-norm's mean ``beta_i`` and std ``|gamma_i|``) stays above
``c_i = max(0, beta_i - 3 |gamma_i|)``, ``c_i`` is moved out of the first layer's bias into the second layer's
(``relu(x - c) = relu(x) - c`` where ``x >= c``): the absorbed part costs no activation range. Padding in the second
layer makes this inexact at image borders, as in the paper.

ReLU6 is not positively homogeneous (its clip at 6 would move); as the paper and AIMET do, a ReLU6 between a pair
becomes a ReLU (``relu6="replace"``, which changes the FP32 model where activations exceed 6, so the FP32 top-1 of
the equalized model is what to compare against), or the pair is left alone (``relu6="skip"``: exact).

Works on a model whose batch-norms are folded (``fold_bn.fold_batchnorm``); pairs are found on its torch.fx graph.
"""

import dataclasses

import torch
from torch import nn

from compressor.core.spec import Bool, Choice, Config, Float, setting
from compressor.quantization.graph import sites

HOMOGENEOUS = (nn.ReLU, nn.Identity, nn.Dropout, nn.PReLU, nn.LeakyReLU)  # f(x / s) = f(x) / s for s > 0
RELU_FUNCTIONS = {torch.relu, torch.nn.functional.relu}


@dataclasses.dataclass(frozen=True, kw_only=True)
class EqualizationConfig(Config):
    """DFQ's data-free steps before calibration (PostTrainLinearQuantizer keys; they need fold_bn)."""

    cross_layer_equalization: bool = setting(Bool(False), "equalize the weight ranges of layer pairs joined by a "
                                             "ReLU (or nothing) channel by channel, FP32 function unchanged (DFQ)")
    equalization_relu6: str = setting(Choice("REPLACE", ["REPLACE", "SKIP"]), "a ReLU6 between a pair: REPLACE it by "
                                      "ReLU (as DFQ and AIMET; changes FP32 where activations exceed 6) or SKIP the "
                                      "pair")
    high_bias_absorption: bool = setting(Bool(True), "with cross_layer_equalization: move the part of each ReLU "
                                         "input's bias it always exceeds (batch-norm mean - n std) into the next layer")
    high_bias_absorption_n_std: float = setting(Float(3.0, lo=0.0), "high_bias_absorption: standard deviations kept "
                                                "below the mean")


@dataclasses.dataclass
class Pair:
    """Two layers whose channel ``i`` (output of ``first``, input of ``second``) may be rescaled together."""

    first: str
    second: str
    activation: str | None  # module name of the activation between them (None: a functional ReLU or none)
    relu: bool  # the path clips at 0 (what high-bias absorption needs)
    relu6: str | None = None  # a ReLU6 module on the path (replaced by ReLU, or the pair is skipped)


def _is_depthwise(conv):
    return isinstance(conv, nn.Conv2d) and conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1


def _second_ok(module):
    """A layer whose input channel i reads only channel i's values in one place: a dense conv/linear or depthwise."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and (module.groups == 1 or _is_depthwise(module))


def find_pairs(model, relu6="replace"):
    """Every (conv/linear -> [identity, dropout, ReLU or ReLU6] -> conv/linear) path where each tensor has one user;
    with ``relu6="skip"``, those through a ReLU6 are left out."""
    if relu6 not in ("replace", "skip"):
        raise ValueError(f"relu6: expected 'replace' or 'skip', got {relu6!r}")
    gm = sites.trace(model)
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), (nn.Conv2d, nn.Linear)):
            continue
        cur, activation, relu, through_relu6, ok = node, None, False, None, True
        while ok:
            if len(cur.users) != 1:
                ok = False
                break
            cur = next(iter(cur.users))
            if cur.op == "call_module":
                module = gm.get_submodule(cur.target)
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    break
                if isinstance(module, nn.ReLU6) and activation is None:
                    through_relu6, activation, relu = cur.target, cur.target, True
                elif isinstance(module, (nn.Identity, nn.Dropout)):
                    continue
                elif isinstance(module, nn.ReLU) and activation is None:
                    activation, relu = cur.target, True
                else:
                    ok = False
            elif cur.op == "call_function" and cur.target in RELU_FUNCTIONS and activation is None and relu is False:
                relu = True
            else:
                ok = False
        if not ok or cur.op != "call_module":
            continue
        first, second = gm.get_submodule(node.target), gm.get_submodule(cur.target)
        channels = first.out_channels if isinstance(first, nn.Conv2d) else first.out_features
        needed = second.in_channels if isinstance(second, nn.Conv2d) else second.in_features
        if channels == needed and _second_ok(second) and not (relu6 == "skip" and through_relu6):
            pairs.append(Pair(node.target, cur.target, activation, relu, through_relu6))
    return pairs


def _out_range(layer):
    w = layer.weight.detach()
    return w.abs().reshape(w.shape[0], -1).amax(dim=1)


def _in_range(layer):
    w = layer.weight.detach()
    if _is_depthwise(layer):
        return w.abs().reshape(w.shape[0], -1).amax(dim=1)
    return w.abs().transpose(0, 1).reshape(w.shape[1], -1).amax(dim=1)


def _scale_pair(first, second, s):
    """first's output channel i / s_i, second's input channel i * s_i (exact for a homogeneous activation)."""
    with torch.no_grad():
        shape = (-1,) + (1,) * (first.weight.dim() - 1)
        first.weight.div_(s.reshape(shape))
        if first.bias is not None:
            first.bias.div_(s)
        if _is_depthwise(second):
            second.weight.mul_(s.reshape((-1,) + (1,) * (second.weight.dim() - 1)))
        else:
            second.weight.mul_(s.reshape((1, -1) + (1,) * (second.weight.dim() - 2)))


def equalize(model, pairs=None, relu6="replace", iterations=100, tolerance=1e-6):
    """Cross-layer equalization of ``model`` (folded, in place) over ``pairs`` (default: ``find_pairs(model, relu6)``;
    a ReLU6 in a pair becomes a ReLU). Returns a report: the pairs, the iterations run,
    the ReLU6 modules replaced, and each pair's largest-to-smallest channel range ratio before and after."""
    pairs = find_pairs(model, relu6) if pairs is None else pairs
    replaced = sorted({p.relu6 for p in pairs if p.relu6})
    for name in replaced:
        model.set_submodule(name, nn.ReLU(inplace=getattr(model.get_submodule(name), "inplace", False)))

    def spread(layer):
        r = _out_range(layer)
        return float(r.max() / r[r > 0].min()) if bool((r > 0).any()) else 1.0

    firsts = {p.first for p in pairs}
    before = {name: spread(model.get_submodule(name)) for name in firsts}
    # each first layer's outputs end divided by the product of its scales (a second layer's outputs are unchanged)
    scales = {name: torch.ones_like(_out_range(model.get_submodule(name))) for name in firsts}
    done = 0
    for done in range(1, iterations + 1):  # noqa: B007 - the count is reported
        moved = 0.0
        for p in pairs:
            first, second = model.get_submodule(p.first), model.get_submodule(p.second)
            r1, r2 = _out_range(first), _in_range(second)
            s = torch.where((r1 > 0) & (r2 > 0), torch.sqrt(r1 / r2.clamp_min(1e-30)), torch.ones_like(r1))
            _scale_pair(first, second, s)
            scales[p.first] = scales[p.first] * s
            moved = max(moved, float(s.log().abs().max()))
        if moved < tolerance:
            break
    after = {name: spread(model.get_submodule(name)) for name in firsts}
    return {"pairs": [dataclasses.asdict(p) for p in pairs], "iterations": done, "relu6_replaced": replaced,
            "range_ratio_before": before, "range_ratio_after": after, "scales": scales}


def absorb_high_bias(model, pairs, preact_stats, n_std=3.0):
    """Move ``c_i = max(0, mean_i - n_std * std_i)`` of each ReLU pair's pre-activation from the first layer's bias
    into the second's. ``preact_stats``: {first layer name: (mean, std)} of its output before the ReLU (the folded
    batch-norm's beta and |gamma|, scaled as equalization scaled the layer). Returns {first: channels absorbed}."""
    absorbed = {}
    for p in pairs:
        if not p.relu or p.first not in preact_stats:
            continue
        first, second = model.get_submodule(p.first), model.get_submodule(p.second)
        mean, std = preact_stats[p.first]
        c = (mean - n_std * std).clamp_min(0)
        if first.bias is None or not bool((c > 0).any()):
            continue
        with torch.no_grad():
            first.bias.sub_(c)
            w = second.weight.detach()
            if _is_depthwise(second):
                shift = w.reshape(w.shape[0], -1).sum(dim=1) * c
            else:
                shift = (w.reshape(w.shape[0], w.shape[1], -1).sum(dim=2) * c).sum(dim=1)
            if second.bias is None:
                second.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype))
            second.bias.add_(shift)
        absorbed[p.first] = int((c > 0).sum())
    return absorbed


def batchnorm_preactivations(original, folded_names):
    """{folded layer: (mean, std)} of each folded layer's output, from the batch-norm folded into it (beta, |gamma|):
    the data-free estimate of the pre-activation distribution that high-bias absorption needs."""
    out = {}
    for layer, bn_name in folded_names.items():
        bn = original.get_submodule(bn_name)
        if getattr(bn, "weight", None) is None or getattr(bn, "bias", None) is None:
            continue
        out[layer] = (bn.bias.detach().clone(), bn.weight.detach().abs().clone())
    return out


def scale_stats(preact_stats, scales):
    """Pre-activation stats after equalization: divided per channel as the layer's outputs were."""
    return {name: ((mean / scales[name], std / scales[name]) if name in scales else (mean, std))
            for name, (mean, std) in preact_stats.items()}


def cross_layer_equalization(model, original, folded_names, relu6="replace", absorb_bias=True, n_std=3.0):
    """DFQ on a folded ``model`` (in place): equalization, then high-bias absorption with the batch-norm statistics
    of ``original`` (the model before folding; ``folded_names`` from ``fold_batchnorm``). Returns the report."""
    pairs = find_pairs(model, relu6)
    report = equalize(model, pairs)
    scales = report.pop("scales")
    report["high_bias_absorbed"] = {}
    if absorb_bias:
        stats = scale_stats(batchnorm_preactivations(original, folded_names), scales)
        report["high_bias_absorbed"] = absorb_high_bias(model, pairs, stats, n_std)
    report["largest_range_ratio"] = [max(report[key].values(), default=1.0)
                                     for key in ("range_ratio_before", "range_ratio_after")]
    return report
