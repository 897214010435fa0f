"""Streaming activation statistics: everything Distiller's stats file holds, gathered in ONE pass,
and mergeable exactly across processes (calibration under torchrun/DDP, each rank on its shard).

Everything is defined per SAMPLE, never per batch, so the result does not depend on how the data is
split into batches or into processes:

* each sample's sum, sum of squares, min, max and mean absolute deviation are one float32 reduction
  over its own row; they are added up as exact integers (multiples of 2**-149, the smallest float32
  step), so the totals do not depend on the order of addition either: 2 processes x half the data give
  bit-identical records to 1 process x all of it;
* ``b`` (mean absolute deviation) is measured around each sample's own mean. Distiller needed a
  second pass for ``b`` because it measured it around the global mean; per-sample centring keeps one
  pass, and the test suite bounds the difference on data whose samples differ in mean;
* histograms subsample every 8th value of each sample (large samples only) and use a power-of-two
  range (see ``Histogram``), so two histograms always share bin edges and merge by adding counts.
"""

from fractions import Fraction

import torch
from torch import nn

_EXACT = 2**149  # 2**-149 is float32's smallest step: every float32 value is an integer multiple of it


def _exact_sum(values):
    """Sum of float32 values (a 1-D tensor) as an exact integer count of 2**-149 steps."""
    return sum(int(v * _EXACT) for v in values.double().tolist())


class TensorStats:
    """Accumulates min, max, avg_min, avg_max (per-sample extremes averaged), mean, std, b, shape."""

    def __init__(self):
        self.count = 0  # elements
        self.samples = 0
        # exact integer sums, in units of 2**-149
        self.sum = 0
        self.sum_sq = 0
        self.abs_dev = 0
        self.sum_sample_min = 0
        self.sum_sample_max = 0
        self.min = float("inf")
        self.max = float("-inf")
        self.shape = None

    @torch.no_grad()
    def update(self, x):
        x = x.detach()
        if self.shape is None:
            self.shape = list(x.shape)
        flat = x.reshape(x.shape[0], -1) if x.dim() > 1 else x.reshape(1, -1)
        flat = flat.float()
        # one vectorized float32 pass per reduction, each row (sample) reduced on its own
        sample_min, sample_max = flat.amin(dim=1), flat.amax(dim=1)
        n = flat.shape[1]
        sums = flat.sum(dim=1)
        sums_sq = torch.linalg.vector_norm(flat, dim=1).square()  # 2x faster than a row-wise dot product
        means = sums / n
        # sum |x - mean| = 2 * sum(max(mean - x, 0)) = 2 * (n * mean - sum(min(x, mean)))
        abs_dev = 2.0 * (n * means - torch.minimum(flat, means[:, None]).sum(dim=1))
        self.min = min(self.min, float(sample_min.min()))
        self.max = max(self.max, float(sample_max.max()))
        self.sum_sample_min += _exact_sum(sample_min)
        self.sum_sample_max += _exact_sum(sample_max)
        self.sum += _exact_sum(sums)
        self.sum_sq += _exact_sum(sums_sq)
        self.abs_dev += _exact_sum(abs_dev)
        self.samples += flat.shape[0]
        self.count += flat.numel()

    @classmethod
    def merged(cls, parts):
        """The statistics of all ``parts`` together (e.g. one per process, each on its shard of the batches):
        exact. ``shape`` keeps the per-sample dimensions; its batch dimension becomes the parts' sum (the
        global batch when each process holds a slice of it)."""
        out = cls()
        parts = [p for p in parts if p.count]
        for p in parts:
            out.count += p.count
            out.samples += p.samples
            out.sum += p.sum
            out.sum_sq += p.sum_sq
            out.abs_dev += p.abs_dev
            out.sum_sample_min += p.sum_sample_min
            out.sum_sample_max += p.sum_sample_max
            out.min, out.max = min(out.min, p.min), max(out.max, p.max)
        if parts:
            out.shape = list(parts[0].shape)
            if len(out.shape) > 1 and all(p.shape[1:] == out.shape[1:] for p in parts):
                out.shape[0] = sum(p.shape[0] for p in parts)
        return out

    def record(self):
        """Distiller's record: min, max, avg_min, avg_max, mean, std, b, shape (each correctly rounded
        from the exact sums)."""
        if not self.count:
            raise ValueError("no data was observed")
        unit = _EXACT
        mean = Fraction(self.sum, unit * self.count)
        var = max(Fraction(self.sum_sq, unit * self.count) - mean * mean, Fraction(0))
        return {
            "min": self.min,
            "max": self.max,
            "avg_min": self.sum_sample_min / (unit * self.samples),
            "avg_max": self.sum_sample_max / (unit * self.samples),
            "mean": float(mean),
            "std": float(var) ** 0.5,
            "b": self.abs_dev / (unit * self.count),
            "shape": "(" + ", ".join(str(d) for d in self.shape) + ")",
        }


class Histogram:
    """Histogram of the non-zero |x|, filled in the same pass as the statistics, for KL, MSE and PERCENTILE.

    Its range [0, amax) is the smallest power of two ABOVE every |x| seen: when a batch exceeds it, it
    doubles, merging bins pairwise (an exact re-binning, as scaling by 2 is exact in floating point), so no
    second pass over the data is needed and the data span at least half of the bins. Because amax depends
    only on the largest |x|, never on which batch came first, histograms of different shards share bin
    edges and merge exactly (``merged``). Magnitudes, as TensorRT's entropy calibration uses: a threshold t
    means [-t, t], intersected with the tensor's observed [min, max].
    """

    SAMPLE_STRIDE = 8  # large samples are histogrammed from every 8th value (the extremes come from the stats)
    STRIDE_ABOVE = 1024  # values per sample above which the stride applies

    def __init__(self, bins=2048):
        self.amax = None
        self.bins = bins
        self.counts = torch.zeros(bins, dtype=torch.float64)

    @staticmethod
    def _power_of_two_above(top):
        return 2.0 ** (torch.frexp(torch.tensor(max(top, 1e-8), dtype=torch.float64)).exponent.item())

    def _widen_to(self, amax):
        while self.amax < amax:  # pairs of bins become one, the upper half starts empty
            merged = self.counts.view(-1, 2).sum(dim=1)
            self.counts = torch.cat([merged, torch.zeros_like(merged)])
            self.amax *= 2

    @torch.no_grad()
    def update(self, x):
        x = x.detach()
        rows = x.reshape(x.shape[0], -1) if x.dim() > 1 else x.reshape(1, -1)
        if rows.shape[1] > self.STRIDE_ABOVE:
            rows = rows[:, :: self.SAMPLE_STRIDE]
        flat = rows.reshape(-1)
        mags = flat.float().abs()
        top = float(mags.max()) if mags.numel() else 0.0
        needed = self._power_of_two_above(top)  # strictly above top: every value falls below amax
        if self.amax is None:
            self.amax = needed
        self._widen_to(needed)
        # bin index by scaling (a scatter-add is ~2x faster than torch.histc on CPU); bins/amax is a power of two
        idx = mags.mul_(self.bins / self.amax).to(torch.int64).clamp_(max=self.bins - 1)
        counts = torch.bincount(idx, minlength=self.bins).double()
        # Exact zeros (half of a ReLU's output) quantize without error and would swamp the first bin,
        # pulling KL towards tiny thresholds; like pytorch-quantization's skip_zeros, they are not counted.
        counts[0] -= (flat == 0).sum()
        self.counts += counts.cpu()

    @classmethod
    def merged(cls, parts):
        """One histogram of all ``parts`` (same bin count): each is widened to the largest range, counts add."""
        parts = [p for p in parts if p.amax is not None]
        if not parts:
            return None
        out = cls(parts[0].bins)
        out.amax = max(p.amax for p in parts)
        for p in parts:
            q = cls(p.bins)
            q.amax, q.counts = p.amax, p.counts.clone()
            q._widen_to(out.amax)
            out.counts += q.counts
        return out

    @property
    def bin_width(self):
        return self.amax / self.bins

    def centers(self):
        return (torch.arange(self.bins, dtype=torch.float64) + 0.5) * self.bin_width


class StatsObserver(nn.Module):
    """Placed at an activation site by the collector: passes values through, records them."""

    def __init__(self, histogram=False, bins=2048):
        super().__init__()
        self.stats = TensorStats()
        self.histogram = Histogram(bins) if histogram else None

    def forward(self, x):
        if torch.is_tensor(x) and x.is_floating_point():
            self.stats.update(x)
            if self.histogram is not None:
                self.histogram.update(x)
        return x
