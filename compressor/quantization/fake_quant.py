"""Fake-quantization modules: quantize-dequantize in FP32, gradients by straight-through estimation.

The rounding itself is ``fake_quant_op.fake_quantize``: what ``torch.fake_quantize_per_*_affine`` compute, bit
for bit, from vectorized ops (torch's CPU kernel rounds one element at a time); its backward passes the gradient
through unchanged inside the quantization range and zeroes it outside (the clipped straight-through estimator).

Both are ``QuantModule``s with an observer (``observers``) that tracks the range; the quantization
policy sets ``enabled`` (quantize at all) and ``observing`` (update the range). Their
state travels in ``state_dict`` (ranges as buffers, flags as extra state), so
a checkpoint evaluates and resumes exactly as it was saved.
"""

import torch

from compressor.core import distributed
from compressor.quantization.fake_quant_op import fake_quantize
from compressor.quantization.observers import EmaMinMaxObserver, MinMaxObserver
from compressor.quantization.qparams import qparams_from_range, quant_range, reciprocal_grid
from compressor.quantization.quant_module import QuantModule, float32_arithmetic


class FakeQuantize(QuantModule):
    """Linear fake quantization to ``bits`` in ``mode`` with the scale and zero point of the observer's range.

    ``observed`` is False until a range was seen: a frozen quantizer then observes once.
    """

    METHOD = "linear"
    EXPORTABLE = True

    def __init__(self, bits, mode, channels=1):
        super().__init__(bits)
        self.mode = mode
        self.qmin, self.qmax = quant_range(bits, mode)
        self.observed = False
        self.register_buffer("scale", torch.ones(channels))
        self.register_buffer("zero_point", torch.zeros(channels, dtype=torch.int32))

    @torch.no_grad()
    def _set_qparams(self, lo, hi):
        scale, zero_point = qparams_from_range(lo, hi, self.bits, self.mode)
        self.scale.copy_(scale)
        self.zero_point.copy_(zero_point)
        self.observed = True

    def get_extra_state(self):
        return {**super().get_extra_state(), "observed": self.observed}

    in_float32 = staticmethod(float32_arithmetic)

    def set_extra_state(self, state):
        super().set_extra_state(state)
        self.observed = bool(state.get("observed", True))

    def extra_repr(self):
        return f"bits={self.bits}, mode={self.mode.name}, enabled={self.enabled}, observing={self.observing}"


class ActivationFakeQuant(FakeQuantize):
    """Per-tensor fake quantization with a range tracked by a bias-corrected EMA (as Distiller's QAT).

    The range is updated only in training mode while observing; evaluation and a
    frozen quantizer use the stored scale and zero point. ``dynamic``: each batch's own
    range, in training and evaluation (online post-training quantization).

    Under DDP (an initialized process group) a training-mode observation first all-reduces the
    batch's min and max over the processes (one collective per site per step), so every rank moves
    its average by the same global-batch range: ranges and step counters stay identical on all ranks
    and are learned from all of their data, not copied from rank 0. Evaluation-mode observations
    (dynamic ranges, a frozen quantizer's first look) stay per process: evaluation loops need not
    run in lockstep.
    """

    def __init__(self, bits, mode, ema_decay=0.999, dynamic=False):
        super().__init__(bits, mode)
        self.dynamic = dynamic
        # a softmax's output: scales kept at 1 / n, the grid ONNX Runtime's QLinearSoftmax computes on
        # (qparams.reciprocal_grid); set where the quantizer is placed
        self.reciprocal_scale = False
        self.observer = EmaMinMaxObserver(ema_decay)
        self.batch_range = MinMaxObserver()
        # checkpoints written before the observer was a submodule hold its buffers at the top level
        self._register_load_state_dict_pre_hook(_move_observer_buffers)

    @property
    def ema_decay(self):
        return self.observer.ema_decay

    @torch.no_grad()
    def _set_qparams(self, lo, hi):
        super()._set_qparams(lo, hi)
        if self.reciprocal_scale:
            self.scale.copy_(reciprocal_grid(self.scale))

    @FakeQuantize.in_float32
    def forward(self, x):
        if not self.enabled or not torch.is_tensor(x) or not x.is_floating_point():
            return x
        if self.dynamic or (self.observing and self.training) or not self.observed:
            self.observe(x)
        return fake_quantize(x, self.scale, self.zero_point, self.qmin, self.qmax)

    @torch.no_grad()
    def observe(self, x):
        mn, mx = self.batch_range(x)
        if self.training:
            mn, mx = distributed.all_reduce_min_max(mn, mx)
        if self.dynamic:
            self.set_range(mn, mx)
        else:
            self._set_qparams(*self.observer.update(mn, mx))

    @torch.no_grad()
    def set_range(self, lo, hi):
        """Quantize to [lo, hi] from now on (calibrated post-training ranges)."""
        lo = torch.as_tensor(lo, dtype=torch.float32, device=self.scale.device).reshape(1)
        hi = torch.as_tensor(hi, dtype=torch.float32, device=self.scale.device).reshape(1)
        self._set_qparams(lo, hi)
        self.observer.reset(lo, hi)

    @torch.no_grad()
    def init_range(self, lo, hi):
        """Start the moving average from [lo, hi] (calibrate-then-train): later batches move it as usual."""
        self.set_range(lo, hi)
        self.observer.reset(self.observer.biased_min.clone(), self.observer.biased_max.clone(), settled=True)

    @property
    def range(self):
        """The (min, max) currently used, bias-corrected; None before the first observation."""
        if not self.observed:
            return None
        n = int(self.observer.num_updates.item())
        correction = 1.0 - self.ema_decay**n if n else 1.0
        return (self.observer.biased_min / correction).item(), (self.observer.biased_max / correction).item()

    def get_extra_state(self):
        return {**super().get_extra_state(), "dynamic": self.dynamic, "reciprocal_scale": self.reciprocal_scale}

    def set_extra_state(self, state):
        super().set_extra_state(state)
        self.dynamic = bool(state.get("dynamic", False))
        self.reciprocal_scale = bool(state.get("reciprocal_scale", self.reciprocal_scale))


def _move_observer_buffers(state_dict, prefix, *args):
    for name in ("num_updates", "biased_min", "biased_max"):
        old = prefix + name
        if old in state_dict:
            state_dict[prefix + "observer." + name] = state_dict.pop(old)


class WeightFakeQuant(FakeQuantize):
    """Fake quantization of a parameter, per tensor or per output channel; used as a parametrization.

    The range is the parameter's current min/max, so the FP32 master weight is the only
    copy kept. When frozen (not observing), the last scale and zero point are reused.
    """

    def __init__(self, bits, mode, per_channel=False, channels=1, axis=0):
        super().__init__(bits, mode, channels if per_channel else 1)
        self.per_channel = per_channel
        self.axis = axis
        self.observer = MinMaxObserver(per_channel, axis)

    @FakeQuantize.in_float32
    def forward(self, w):
        if not self.enabled:
            return w
        if self.observing or not self.observed:
            self.observe(w)
        return fake_quantize(w, self.scale, self.zero_point, self.qmin, self.qmax,
                             self.axis if self.per_channel else None)

    @torch.no_grad()
    def observe(self, w):
        self._set_qparams(*self.observer(w))

    def extra_repr(self):
        return super().extra_repr() + f", per_channel={self.per_channel}"
