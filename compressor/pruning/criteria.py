"""Which weights a pruning criterion removes: boolean keep-masks (True = kept) of a weight's shape.

Element-wise: the smallest magnitudes to a sparsity level, or below a threshold (absolute, or a multiple of the
weight's standard deviation: Han et al.'s sensitivity rule). Structures (Distiller's ``group_type``): filters
(output channels, dim 0), channels (input channels, dim 1 of a conv), rows (input features, dim 1 of a linear
layer: Distiller's name, from its transposed view of linear weights), ranked by mean L1 norm; ``floor(fraction *
count)`` structures go, as in Distiller. N:M: in every block of M consecutive input weights, the N largest stay.
"""

import math

import torch

STRUCTURES = ("FILTERS", "CHANNELS", "ROWS")


def level_mask(weight, sparsity):
    """Keep all but the ``round(sparsity * numel)`` smallest-magnitude elements (ties broken by position)."""
    n = weight.numel()
    k = int(round(sparsity * n))
    keep = torch.ones(n, dtype=torch.bool, device=weight.device)
    if k > 0:
        order = weight.detach().abs().flatten().argsort(stable=True)
        keep[order[: min(k, n)]] = False
    return keep.view_as(weight)


def threshold_mask(weight, threshold):
    """Keep the elements whose magnitude is above ``threshold`` (Distiller: at or below it are pruned)."""
    return weight.detach().abs() > threshold


def sensitivity_mask(weight, sensitivity):
    """Han et al.: the threshold is ``sensitivity`` standard deviations of the weight."""
    return threshold_mask(weight, sensitivity * weight.detach().std().item())


def structure_dim(group_type):
    """The weight dimension a structure indexes: 0 for filters, 1 for channels and rows."""
    return 0 if group_type.upper() == "FILTERS" else 1


def structure_scores(weight, group_type, norm=1):
    """Mean absolute value (``norm=1``) or root mean square (``norm=2``) of each structure (filter, channel or row)
    of ``weight``."""
    dim = structure_dim(group_type)
    w = weight.detach().transpose(0, dim)
    w = w.reshape(w.shape[0], -1)
    return w.abs().mean(dim=1) if norm == 1 else w.pow(2).mean(dim=1).sqrt()


def bottom_structures(scores, fraction, kept=None, group_size=1):
    """The structures to prune: the ``floor(fraction * n / group_size) * group_size`` lowest scores.

    ``group_size`` (Distiller's key) prunes in multiples, so the kept count stays a multiple where the count was
    one: CPU convolution kernels work on blocks of 8 channels (AVX2; 16 on AVX-512), and a 23-channel layer costs
    about what a 32-channel one does (measured in docs/performance.md). ``kept`` (bool per structure) keeps pruned
    structures pruned: those already gone count first, so a growing schedule never revives a structure (their
    scores are 0 after masking anyway). A layer never vanishes: at least ``group_size`` structures stay."""
    n = scores.numel()
    k = int(math.floor(fraction * n / group_size + 1e-9)) * group_size
    k = min(k, (n - group_size) // group_size * group_size)  # a multiple too, and group_size or more stay
    if k <= 0:
        return torch.empty(0, dtype=torch.long)
    s = scores.detach().clone().float()
    if kept is not None:
        s[~kept] = float("-inf")
    return s.argsort(stable=True)[:k]


def expand_structures(weight, group_type, pruned):
    """The element keep-mask of ``weight`` with the structures ``pruned`` (indices along its dim) removed."""
    dim = structure_dim(group_type)
    keep = torch.ones(weight.shape[dim], dtype=torch.bool, device=weight.device)
    keep[pruned] = False
    shape = [1] * weight.dim()
    shape[dim] = -1
    return keep.view(shape).expand_as(weight).clone()


def n_of_m_mask(weight, n=2, m=4):
    """Keep the ``n`` largest of every ``m`` consecutive weights along the input dimension (2:4 sparsity, the
    pattern sparse tensor cores accelerate). The input size (times the kernel area) must divide by ``m``."""
    w = weight.detach().abs()
    rows = w.reshape(w.shape[0], -1)
    if rows.shape[1] % m:
        raise ValueError(f"{n}:{m} sparsity needs the input size ({rows.shape[1]}) to divide by {m}")
    blocks = rows.reshape(rows.shape[0], -1, m)
    top = blocks.topk(n, dim=2).indices
    keep = torch.zeros_like(blocks, dtype=torch.bool)
    keep.scatter_(2, top, True)
    return keep.reshape(weight.shape)
