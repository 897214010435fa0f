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

import dataclasses
import logging

from compressor.calibration.clipping import ClipConfig
from compressor.core.spec import OptionalInt, setting
from compressor.quantization.collect import collect_stats

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CalibratorConfig(ClipConfig):
    num_batches: int | None = setting(OptionalInt(None, lo=1), "training batches to collect on (null: the whole "
                                      "training split)")


class ActivationCalibrator:
    CONFIG = CalibratorConfig

    def __init__(self, **kwargs):
        self.config = self.CONFIG.from_args(**kwargs)
        self.loader, self.device = None, "cpu"
        self.last_records = None

    def set_data(self, loader, device="cpu"):
        """The batches to calibrate on (the training split) and where to run them."""
        self.loader, self.device = loader, device

    def calibrate(self, quantizer):
        """Collect statistics on the quantizer's model and start every activation range from them."""
        if self.loader is None:
            raise RuntimeError("the calibrator has no data: the app must call scheduler.set_calibration_data()")
        cfg = self.config
        records, hists = collect_stats(quantizer.model, self.loader, self.device, cfg.num_batches,
                                       histograms=cfg.needs_histogram, quantize_inputs=quantizer.quantize_inputs())
        for name, fq in quantizer.activation_quantizers.items():
            fq.init_range(*cfg.range_for(records[name], fq.bits, fq.mode.symmetric, hists.get(name) if hists else None))
        self.last_records = records
        log.info("Calibrated %d activation ranges (%s) on %s batches", len(quantizer.activation_quantizers),
                 str(cfg.clip_acts).upper(), cfg.num_batches or "all")
        return records
