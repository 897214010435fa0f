"""Confidence intervals and significance for test top-1 on a fixed test set (shared by the accuracy benchmarks).

A top-1 on n test images is a binomial proportion: its 95 % interval is Wilson's score interval
(exact enough at n = 10,000 and well-behaved near 100 %, where the normal approximation is not).
Two models evaluated on the SAME images are paired, so whether they differ is McNemar's exact test
on the images exactly one of them gets right; comparing two Wilson intervals instead would be
conservative (it ignores that most images are right or wrong for both).
"""

import math
import os
import platform
import time

import torch

Z95 = 1.959963984540054


def best_seconds(fn, iters, rounds):
    """The best mean seconds per call of ``fn`` over ``rounds`` rounds of ``iters`` calls, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        best = min(best, (time.perf_counter() - start) / iters)
    return best


def wilson(correct, n, z=Z95):
    """95 % Wilson score interval of correct / n, in percent."""
    if n <= 0:
        raise ValueError("no test images")
    p = correct / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return 100 * max(0.0, center - half), 100 * min(1.0, center + half)


def mcnemar_p(only_a, only_b):
    """Exact two-sided McNemar p-value from the discordant counts (images only A / only B gets right)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / (1 << n)  # exact big integers, then one division
    return min(1.0, 2 * tail)


def pack_mask(mask):
    """A boolean per-image vector as a hex string (10,000 images: 2,500 characters)."""
    bits = torch.as_tensor(mask, dtype=torch.bool).tolist()
    value = 0
    for i, b in enumerate(bits):
        if b:
            value |= 1 << i
    return f"{len(bits)}:{value:x}"


def unpack_mask(text):
    n, value = text.split(":")
    value = int(value, 16)
    return [bool(value >> i & 1) for i in range(int(n))]


def compare(mask_a, mask_b):
    """(only A right, only B right, McNemar p) for two per-image correctness vectors."""
    only_a = sum(1 for a, b in zip(mask_a, mask_b) if a and not b)
    only_b = sum(1 for a, b in zip(mask_a, mask_b) if b and not a)
    return only_a, only_b, mcnemar_p(only_a, only_b)


def machine():
    """CPU model, integer capability and torch version, as the project's benchmarks record them."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}
