"""Streaming activation statistics: everything Distiller's stats file holds, gathered in ONE pass.

Distiller needed a second pass for ``b`` (mean absolute deviation) because it measured it
around the global mean. Here each batch contributes its deviation around its own mean,
weighted by its size; for calibration batches drawn from one distribution the two agree
closely, and the test suite bounds the difference.
"""

import torch
from torch import nn


class TensorStats:
    """Accumulates min, max, avg_min, avg_max (per-sample extremes averaged), mean, std, b, shape."""

    def __init__(self):
        self.count = 0  # elements
        self.samples = 0
        self.sum = 0.0
        self.sum_sq = 0.0
        self.abs_dev = 0.0
        self.min = float("inf")
        self.max = float("-inf")
        self.sum_sample_min = 0.0
        self.sum_sample_max = 0.0
        self.shape = None

    @torch.no_grad()
    def update(self, x):
        x = x.detach()
        if self.shape is None:
            self.shape = list(x.shape)
        flat = x.reshape(x.shape[0], -1) if x.dim() > 1 else x.reshape(1, -1)
        flat = flat.float()
        # Each reduction is one vectorized float32 pass (float64 or dim-wise aminmax would be several times
        # slower); the batch's sums are added up in Python floats (float64).
        sample_min, sample_max = flat.amin(dim=1), flat.amax(dim=1)
        n = flat.numel()
        total = flat.sum()
        line = flat.reshape(-1)
        mean = total / n
        # sum |x - mean| = 2 * sum(max(mean - x, 0)) = 2 * (n * mean - sum(min(x, mean)))
        abs_dev = 2.0 * (n * mean - flat.clamp_max(mean).sum())
        values = torch.stack([sample_min.min(), sample_max.max(), sample_min.sum(), sample_max.sum(), total,
                              torch.dot(line, line), abs_dev]).double().tolist()
        mn, mx, smin, smax, s, ss, ad = values
        self.min, self.max = min(self.min, mn), max(self.max, mx)
        self.sum_sample_min += smin
        self.sum_sample_max += smax
        self.samples += flat.shape[0]
        self.sum += s
        self.sum_sq += ss
        self.abs_dev += ad
        self.count += n

    def record(self):
        """Distiller's record: min, max, avg_min, avg_max, mean, std, b, shape."""
        if not self.count:
            raise ValueError("no data was observed")
        mean = self.sum / self.count
        var = max(self.sum_sq / self.count - mean * mean, 0.0)
        return {
            "min": self.min,
            "max": self.max,
            "avg_min": self.sum_sample_min / self.samples,
            "avg_max": self.sum_sample_max / self.samples,
            "mean": mean,
            "std": var**0.5,
            "b": self.abs_dev / self.count,
            "shape": "(" + ", ".join(str(d) for d in self.shape) + ")",
        }


class Histogram:
    """Histogram of the non-zero |x|, filled in the same pass as the statistics, for KL, MSE and PERCENTILE.

    Its range starts at the first batch's max |x| and doubles whenever a batch exceeds it,
    merging bins pairwise (an exact re-binning), so no second pass over the data is needed; the
    data then span at least half of the bins. Magnitudes, as TensorRT's entropy calibration uses:
    a threshold t means [-t, t], intersected with the tensor's observed [min, max].
    """

    SAMPLE_STRIDE = 8  # large tensors are histogrammed from every 8th value (the extremes come from the stats)

    def __init__(self, bins=2048):
        self.amax = None
        self.bins = bins
        self.counts = torch.zeros(bins, dtype=torch.float64)

    @torch.no_grad()
    def update(self, x):
        flat = x.detach().reshape(-1)
        if flat.numel() > 16 * self.bins * self.SAMPLE_STRIDE:
            flat = flat[:: self.SAMPLE_STRIDE]
        mags = flat.float().abs()
        top = float(mags.max()) if mags.numel() else 0.0
        if self.amax is None:
            self.amax = max(top, 1e-8)
        while top > self.amax:  # widen: pairs of bins become one, the upper half starts empty
            merged = self.counts.view(-1, 2).sum(dim=1)
            self.counts = torch.cat([merged, torch.zeros_like(merged)])
            self.amax *= 2
        # bin index by scaling (a scatter-add is ~2x faster than torch.histc on CPU)
        idx = mags.mul_(self.bins / self.amax).to(torch.int64).clamp_(max=self.bins - 1)
        counts = torch.bincount(idx, minlength=self.bins).double()
        # Exact zeros (half of a ReLU's output) quantize without error and would swamp the first bin,
        # pulling KL towards tiny thresholds; like pytorch-quantization's skip_zeros, they are not counted.
        counts[0] -= (flat == 0).sum()
        self.counts += counts.cpu()

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
