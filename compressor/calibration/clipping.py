"""Clipping methods: from statistics (and a histogram) to the range [lo, hi] a tensor is quantized to.

``compute_range(method, record, bits, symmetric, ...)`` is the one entry point; each method is a
small function. Ranges never exceed the observed [min, max].

- NONE: observed min/max.            - AVG: averages of per-sample min/max (Distiller).
- N_STD: mean ± n·std.              - GAUSS / LAPLACE: ACIQ (Banner et al. 2018), alpha·std or alpha·b.
- PERCENTILE: the p-th percentile of |x|.
- KL: TensorRT's entropy calibration (Migacz 2017) on the |x| histogram.
- MSE: the threshold minimising the quantization error over the |x| histogram.
"""

import dataclasses
import math
from enum import Enum

import torch

from compressor.core.errors import RangeError
from compressor.core.spec import Bool, Choice, Config, Float, OptionalFloat, setting


class ClipMethod(Enum):
    NONE = "NONE"
    AVG = "AVG"
    N_STD = "N_STD"
    GAUSS = "GAUSS"
    LAPLACE = "LAPLACE"
    PERCENTILE = "PERCENTILE"
    KL = "KL"
    MSE = "MSE"

    @property
    def needs_histogram(self):
        return self in (ClipMethod.PERCENTILE, ClipMethod.KL, ClipMethod.MSE)


CLIP_NAMES = [m.value for m in ClipMethod]

# Banner et al.'s optimal clipping multipliers (Distiller's tables), bits 1..8
ACIQ_LAPLACE = {1: 1.86, 2: 2.83, 3: 3.89, 4: 5.03, 5: 6.2, 6: 7.41, 7: 8.64, 8: 9.89}
ACIQ_GAUSS = {1: 1.24, 2: 1.71, 3: 2.15, 4: 2.55, 5: 2.93, 6: 3.28, 7: 3.61, 8: 3.92}


def parse_clip(value):
    if isinstance(value, ClipMethod):
        return value
    if not isinstance(value, str) or value.upper() not in ClipMethod.__members__:
        raise ValueError(f"expected one of {CLIP_NAMES}, got {value!r}")
    return ClipMethod[value.upper()]


def _expected_mse(alpha, bits, laplace):
    """Clipping plus rounding noise of a unit Laplace (b=1) or Gaussian (std=1) clipped at ±alpha."""
    quant = alpha * alpha / (3.0 * 4.0**bits)
    if laplace:
        clip = 2.0 * math.exp(-alpha)
    else:
        q = 0.5 * math.erfc(alpha / math.sqrt(2.0))
        pdf = math.exp(-alpha * alpha / 2.0) / math.sqrt(2.0 * math.pi)
        clip = 2.0 * ((1.0 + alpha * alpha) * q - alpha * pdf)
    return clip + quant


def aciq_alpha(bits, laplace):
    """Optimal clipping multiplier; Distiller's table up to 8 bits, solved numerically beyond."""
    table = ACIQ_LAPLACE if laplace else ACIQ_GAUSS
    if bits in table:
        return table[bits]
    grid = torch.linspace(0.5, 40.0, 7901).tolist()
    return min(grid, key=lambda a: _expected_mse(a, bits, laplace))


def _bounded(record, lo, hi):
    return max(record["min"], lo), min(record["max"], hi)


def _symmetric_threshold(hist, threshold, record, symmetric):
    if symmetric:
        t = min(threshold, max(abs(record["min"]), abs(record["max"])))
        return -t, t
    return _bounded(record, -threshold, threshold)


def percentile_threshold(hist, percentile):
    cdf = torch.cumsum(hist.counts, 0) / hist.counts.sum().clamp(min=1)
    idx = int(torch.searchsorted(cdf, torch.tensor(percentile / 100.0, dtype=torch.float64)).clamp(max=hist.bins - 1))
    return (idx + 1) * hist.bin_width


def kl_threshold(hist, bits, signed=True):
    """TensorRT's entropy calibration: the threshold whose quantized distribution diverges least."""
    counts = hist.counts
    levels = 2 ** (bits - 1) if signed else 2**bits  # a signed tensor spends half its levels per sign
    best_i, best_kl = hist.bins, float("inf")
    for i in range(min(levels, hist.bins), hist.bins + 1, max(1, hist.bins // 512)):
        p = counts[:i].clone()
        p[-1] += counts[i:].sum()  # outliers clipped into the last bin
        nonzero = (counts[:i] > 0).double()
        # merge the i bins into `levels` bins, then spread each back over its non-empty source bins
        chunk = torch.div(torch.arange(i) * levels, i, rounding_mode="floor")
        chunk_sum = torch.zeros(levels, dtype=torch.float64).index_add_(0, chunk, counts[:i])
        chunk_nz = torch.zeros(levels, dtype=torch.float64).index_add_(0, chunk, nonzero)
        q = (chunk_sum / chunk_nz.clamp(min=1))[chunk] * nonzero
        p_sum, q_sum = p.sum(), q.sum()
        if p_sum == 0 or q_sum == 0:
            continue
        p, q = p / p_sum, q / q_sum
        mask = p > 0
        kl = float((p[mask] * torch.log(p[mask] / q[mask].clamp(min=1e-12))).sum())
        if kl < best_kl:
            best_i, best_kl = i, kl
    return best_i * hist.bin_width


def mse_threshold(hist, bits, record, symmetric, candidates=200):
    """The threshold t minimising the expected squared error of quantizing to [-t, t] ∩ [min, max].

    Clipping error is exact on the histogram (every |x| > t is clipped, on whichever side it lies);
    rounding error is step²/12 per value inside, with the step of the grid actually used: the
    range [max(min, -t), min(max, t)] spread over 2**bits - 1 steps (asymmetric), or [-t, t]
    (symmetric).
    """
    centers, counts = hist.centers(), hist.counts
    thresholds = torch.linspace(hist.amax / candidates, hist.amax, candidates, dtype=torch.float64)
    if symmetric:
        width = 2 * torch.clamp(thresholds, max=max(abs(record["min"]), abs(record["max"])))
    else:
        width = torch.clamp(thresholds, max=max(record["max"], 0.0)) - \
            torch.clamp(-thresholds, min=min(record["min"], 0.0))
    step = width / (2**bits - 1)
    over = (centers[None, :] - thresholds[:, None]).clamp(min=0)
    clip_err = (over**2 * counts[None, :]).sum(dim=1)
    inside = (centers[None, :] <= thresholds[:, None]).double()
    round_err = (inside * counts[None, :]).sum(dim=1) * step**2 / 12
    return float(thresholds[int(torch.argmin(clip_err + round_err))])


def check_record(record, method=ClipMethod.NONE):
    """Distiller raises on an inverted range; so do we (a ``RangeError``, which is a ``ValueError``)."""
    pairs = [("min", "max")] + ([("avg_min", "avg_max")] if method is ClipMethod.AVG else [])
    for lo, hi in pairs:
        if lo in record and hi in record and not record[lo] <= record[hi]:
            raise RangeError(f"{lo} {record[lo]} is above {hi} {record[hi]}: not a range")


def check_n_stds(n_stds):
    if n_stds is None:
        raise RangeError("clip method N_STD needs clip_n_stds")
    if not n_stds > 0:
        raise RangeError(f"clip_n_stds must be > 0, got {n_stds}")


def compute_range(method, record, bits, symmetric=False, n_stds=None, half_range=False, percentile=99.99,
                  histogram=None):
    """(lo, hi) to quantize to, for the tensor described by ``record`` (Distiller's stats record)."""
    method = parse_clip(method)
    check_record(record, method)
    if method is ClipMethod.N_STD:
        check_n_stds(n_stds)
    if method.needs_histogram and histogram is None:
        raise ValueError(f"clip method {method.value} needs a histogram (collect stats with histograms=True)")
    if method is ClipMethod.NONE:
        return record["min"], record["max"]
    if method is ClipMethod.AVG:
        return record["avg_min"], record["avg_max"]
    if method is ClipMethod.N_STD:
        return _bounded(record, record["mean"] - n_stds * record["std"], record["mean"] + n_stds * record["std"])
    if method in (ClipMethod.GAUSS, ClipMethod.LAPLACE):
        laplace = method is ClipMethod.LAPLACE
        spread = record["b"] if laplace else record["std"]
        nonneg = record["min"] >= 0
        if half_range and nonneg:
            # a one-sided distribution on [0, alpha]: the grid resolves it like [-alpha, alpha] at one bit more
            return record["min"], min(record["max"], record["mean"] + aciq_alpha(bits + 1, laplace) * spread)
        alpha = aciq_alpha(bits, laplace)
        if symmetric:
            sat = min(max(abs(record["min"]), abs(record["max"])), abs(record["mean"]) + alpha * spread)
            return -sat, sat
        return _bounded(record, record["mean"] - alpha * spread, record["mean"] + alpha * spread)
    if method is ClipMethod.PERCENTILE:
        return _symmetric_threshold(histogram, percentile_threshold(histogram, percentile), record, symmetric)
    if method is ClipMethod.KL:
        signed = symmetric or record["min"] < 0
        return _symmetric_threshold(histogram, kl_threshold(histogram, bits, signed), record, symmetric)
    return _symmetric_threshold(histogram, mse_threshold(histogram, bits, record, symmetric), record, symmetric)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClipConfig(Config):
    """How an activation range is derived from its statistics: the keys PTQ and calibration stages share."""

    clip_acts: str = setting(Choice("NONE", CLIP_NAMES), "NONE (min/max), AVG (mean of per-batch min/max), "
                             "N_STD, GAUSS / LAPLACE (ACIQ), PERCENTILE, KL, MSE", layer=True)
    clip_n_stds: float | None = setting(OptionalFloat(None, lo=0.0, lo_open=True),
                                        "N_STD: the range is mean +- clip_n_stds * std", layer=True)
    clip_half_range: bool = setting(Bool(False), "ACIQ on non-negative data: clip only the top of the range",
                                    layer=True)
    clip_percentile: float = setting(Float(99.99, lo=0.0, hi=100.0, lo_open=True),
                                     "PERCENTILE: the percentile of |x| kept", layer=True)

    def range_for(self, record, bits, symmetric, histogram=None):
        """(lo, hi) for a tensor described by ``record`` (and its histogram, for KL/MSE/PERCENTILE)."""
        return compute_range(self.clip_acts, record, bits, symmetric=symmetric, n_stds=self.clip_n_stds,
                             half_range=self.clip_half_range, percentile=self.clip_percentile, histogram=histogram)

    @property
    def needs_histogram(self):
        return parse_clip(self.clip_acts).needs_histogram

    def cross_check(self):
        issues = list(super().cross_check())  # cooperative: the other config mixins of a quantizer check too
        if parse_clip(self.clip_acts) is ClipMethod.N_STD and self.clip_n_stds is None:
            issues.append(("clip_acts", "N_STD needs clip_n_stds (the number of standard deviations kept)"))
        return issues
