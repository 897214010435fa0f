"""Per-layer bit allocation under a weight-size budget: an exact multiple-choice knapsack by dynamic programming.

Each layer l picks one bit width b from the candidates; it costs ``n_l * b`` bits of storage and adds
``noise[l][b]`` to the model's output, where ``noise`` is the output noise-to-signal ratio measured
with that layer alone quantized at b bits (``10 ** (-SQNR / 10)``). Quantization noises of different
layers are close to independent, so their powers add: minimizing the sum is minimizing the output
noise of the whole model (the additivity HAWQ-V3 and Zhou et al. 2018 also assume).

Why exact, not greedy: the problem is tiny (resnet20: 21 layers x 5 widths, a capacity of ~70k
units once sizes are divided by their gcd) and the DP over it takes milliseconds in numpy, while
the greedy "lower the bits of the least sensitive layer per bit saved" is only optimal when the
curves are convex and the layer sizes divisible, neither of which holds for real networks (one
36k-weight layer against a 432-weight one). An ILP would need a solver dependency for the same
answer.
"""

import math
from functools import reduce

import numpy as np


def allocate_bits(sizes, noise, budget_bits):
    """{layer: bits} minimizing sum(noise[l][b]) subject to sum(sizes[l] * b) <= budget_bits.

    ``sizes``: {layer: number of weights}; ``noise``: {layer: {bits: cost >= 0}}. Raises ValueError
    when even the smallest candidate of every layer exceeds the budget.
    """
    layers = list(sizes)
    options = [sorted(noise[name]) for name in layers]
    weights = [[sizes[name] * b for b in opts] for name, opts in zip(layers, options)]
    smallest = sum(min(w) for w in weights)
    if smallest > budget_bits:
        raise ValueError(f"the budget ({budget_bits} bits) is below the smallest choice ({smallest} bits)")
    unit = reduce(math.gcd, (w for ws in weights for w in ws))
    capacity = int(budget_bits // unit)
    best = np.zeros(capacity + 1)  # best[c]: least noise of the layers so far within c units
    choices = []
    for name, opts, ws in zip(layers, options, weights):
        new = np.full(capacity + 1, np.inf)
        pick = np.full(capacity + 1, -1, dtype=np.int16)
        for i, (b, w) in enumerate(zip(opts, ws)):
            k = w // unit
            if k > capacity:
                continue
            cand = np.full(capacity + 1, np.inf)
            cand[k:] = best[: capacity + 1 - k] + noise[name][b]
            better = cand < new
            new[better], pick[better] = cand[better], i
        best = new
        choices.append(pick)
    # walk back from the full capacity
    result, c = {}, capacity
    for name, opts, ws, pick in reversed(list(zip(layers, options, weights, choices))):
        i = int(pick[c])
        result[name] = opts[i]
        c -= ws[i] // unit
    return {name: result[name] for name in layers}


def total_bits(sizes, bits):
    return sum(sizes[name] * bits[name] for name in sizes)


def noise_from_sqnr(sqnr_db):
    """Output noise-to-signal power ratio from an SQNR in dB (inf dB: no noise)."""
    return 0.0 if math.isinf(sqnr_db) and sqnr_db > 0 else 10 ** (-sqnr_db / 10)
