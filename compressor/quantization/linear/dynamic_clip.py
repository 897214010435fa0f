"""Dynamic (online) post-training quantization with a clip method: each batch's range is clipped as
calibrated ranges are (Distiller's dynamic mode: AVG averages the batch's per-sample extremes,
N_STD takes mean ± n·std of the batch, GAUSS / LAPLACE the ACIQ range from its std or mean absolute
deviation).

Histogram methods (PERCENTILE, KL, MSE) need a histogram of many batches: they are refused in
dynamic mode rather than silently quantizing to the batch's min/max.
"""

import torch

from compressor.calibration.clipping import ClipMethod, compute_range, parse_clip
from compressor.calibration.stats import TensorStats
from compressor.core.errors import RangeError
from compressor.quantization.fake_quant import ActivationFakeQuant

DYNAMIC_CLIPS = (ClipMethod.NONE, ClipMethod.AVG, ClipMethod.N_STD, ClipMethod.GAUSS, ClipMethod.LAPLACE)


def check_dynamic_clip(clip, where):
    """A clear error for a clip method dynamic quantization cannot apply."""
    method = parse_clip(clip)
    if method not in DYNAMIC_CLIPS:
        raise RangeError(f"{where}: clip method {method.value} needs a histogram over calibration data; dynamic "
                         f"quantization (no statistics) supports {', '.join(m.value for m in DYNAMIC_CLIPS)}")
    return method


class DynamicClipFakeQuant(ActivationFakeQuant):
    """An ``ActivationFakeQuant`` whose dynamic range is each batch's range clipped by ``clip``."""

    def __init__(self, bits, mode, clip, n_stds=None, half_range=False):
        super().__init__(bits, mode, dynamic=True)
        self.clip = parse_clip(clip)
        self.n_stds, self.half_range = n_stds, half_range

    @torch.no_grad()
    def observe(self, x):
        if not self.dynamic:
            return super().observe(x)
        check_dynamic_clip(self.clip, "dynamic quantization")
        stats = TensorStats()
        stats.update(x)
        lo, hi = compute_range(self.clip, stats.record(), self.bits, symmetric=self.mode.symmetric,
                               n_stds=self.n_stds, half_range=self.half_range)
        self.set_range(lo, hi)

    def extra_repr(self):
        return super().extra_repr() + f", clip={self.clip.value} (per batch)"
