"""Calibration stages inside a training recipe: collect statistics at a chosen epoch and start the
quantizer's activation ranges from them (calibrate, then QAT, in one run).

```yaml
calibrators:
  act_calibration:
    class: ActivationCalibrator
    num_batches: 8          # training batches to collect on (null: the whole training split)
    clip_acts: AVG          # how a range is derived from the statistics
policies:
  - calibrator: {instance_name: act_calibration}
    epochs: [0]
  - quantizer: {instance_name: linear_quantizer}
    starting_epoch: 0
    ending_epoch: 10
```
"""

import logging

from compressor.core.spec import Bool, Choice, Float, OptionalFloat, OptionalInt
from compressor.calibration.clipping import CLIP_NAMES, compute_range, parse_clip
from compressor.quantization.collect import collect_stats

log = logging.getLogger(__name__)


class ActivationCalibrator:
    PARAMS = {
        "num_batches": OptionalInt(None, lo=1),
        "clip_acts": Choice("NONE", CLIP_NAMES),
        "clip_n_stds": OptionalFloat(None, lo=0.0, lo_open=True),
        "clip_half_range": Bool(False),
        "clip_percentile": Float(99.99, lo=0.0, hi=100.0, lo_open=True),
    }

    def __init__(self, **kwargs):
        self.config = {k: spec.default for k, spec in self.PARAMS.items()}
        self.config.update(kwargs)
        self.loader, self.device = None, "cpu"
        self.last_records = None

    def calibrate(self, quantizer):
        """Collect statistics on the quantizer's model and start every activation range from them."""
        if self.loader is None:
            raise RuntimeError("the calibrator has no data: the app must call scheduler.set_calibration_data()")
        method = parse_clip(self.config["clip_acts"])
        records, hists = collect_stats(quantizer.model, self.loader, self.device, self.config["num_batches"],
                                       histograms=method.needs_histogram,
                                       quantize_inputs=quantizer.config.get("quantize_inputs", True))
        for name, fq in quantizer.activation_quantizers.items():
            lo, hi = compute_range(method, records[name], fq.bits, symmetric=fq.mode.symmetric,
                                   n_stds=self.config["clip_n_stds"], half_range=self.config["clip_half_range"],
                                   percentile=self.config["clip_percentile"],
                                   histogram=hists.get(name) if hists else None)
            fq.init_range(lo, hi)
        self.last_records = records
        log.info("Calibrated %d activation ranges (%s) on %s batches", len(quantizer.activation_quantizers),
                 method.value, self.config["num_batches"] or "all")
        return records
