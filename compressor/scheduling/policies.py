"""Policies: what a recipe schedules, acting from the scheduler's training-loop callbacks."""

import logging
from collections import Counter

import torch

log = logging.getLogger(__name__)


class Policy:
    """Acts only in its epochs: callbacks run ``epoch_begin``/``epoch_end``/... when ``active(epoch)``."""

    def __init__(self, epochs):
        self.epochs = sorted(set(epochs))

    def active(self, epoch):
        return epoch in self.epochs

    def on_epoch_begin(self, model, epoch, optimizer=None):
        pass

    def on_minibatch_begin(self, model, epoch, minibatch_id, minibatches_per_epoch, optimizer=None):
        pass

    def before_backward_pass(self, model, epoch, minibatch_id, minibatches_per_epoch, loss, optimizer=None):
        """Return None, or a list of (name, tensor) loss components to add to the loss."""
        return None

    def before_parameter_optimization(self, model, epoch, minibatch_id, minibatches_per_epoch, optimizer=None):
        pass

    def on_minibatch_end(self, model, epoch, minibatch_id, minibatches_per_epoch, optimizer=None):
        pass

    def on_epoch_end(self, model, epoch, optimizer=None, metrics=None):
        pass

    def set_data(self, loader, device="cpu"):
        """The training data, for policies that run passes of their own (calibration stages)."""

    def attach(self, net, arch, dataset, device="cpu"):
        """What the run is: the module the loop calls, model and data names, device (knowledge distillation)."""

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class QuantizationPolicy(Policy):
    """FP32 before the window, quantized and observing ranges inside it, quantized and frozen after it.

    The phase is a function of the epoch alone, so a resumed run re-derives it.
    """

    FP32, TRAINING, FROZEN = "fp32", "quantize-and-observe", "quantize-frozen"

    def __init__(self, quantizer, epochs, ending_epoch=None):
        super().__init__(epochs)
        self.quantizer = quantizer
        self.start = self.epochs[0]
        self.end = ending_epoch if ending_epoch is not None else self.epochs[-1] + 1
        self.phase = None

    def phase_at(self, epoch):
        if epoch < self.start:
            return self.FP32
        return self.TRAINING if epoch < self.end else self.FROZEN

    def apply_phase(self, phase):
        if phase != self.phase:
            self.quantizer.set_state(enabled=phase != self.FP32, observing=phase != self.FROZEN)
            if self.phase is not None or phase != self.FP32:
                log.info("Quantization: %s", phase)
            if phase == self.TRAINING and self.phase in (None, self.FP32):
                log.info("Quantized layers:\n%s", self.quantizer.table())
        self.phase = phase

    def on_epoch_begin(self, model, epoch, optimizer=None):
        self.apply_phase(self.phase_at(epoch))
        self.quantizer.schedule_epoch(epoch, self.epochs)

    def state_dict(self):
        return {"phase": self.phase}

    def load_state_dict(self, state):
        if state.get("phase") is not None:
            self.apply_phase(state["phase"])


def _plain(obj):
    """LR-scheduler state as plain data (e.g. Counter -> dict), loadable with weights_only=True."""
    if isinstance(obj, Counter):
        return {"__counter__": dict(obj)}
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def _unplain(obj):
    if isinstance(obj, dict):
        if set(obj) == {"__counter__"}:
            return Counter(obj["__counter__"])
        return {k: _unplain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unplain(v) for v in obj)
    return obj


class LRPolicy(Policy):
    """Steps an LR scheduler at the end of its epochs; ReduceLROnPlateau is fed validation metrics."""

    def __init__(self, lr_scheduler, epochs):
        super().__init__(epochs)
        self.lr_scheduler = lr_scheduler

    def on_epoch_end(self, model, epoch, optimizer=None, metrics=None):
        if not self.active(epoch):
            return
        if isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if not metrics:
                raise ValueError("ReduceLROnPlateau needs validation metrics at epoch end")
            # Distiller's convention: 'min' mode watches the loss, 'max' mode the top-1.
            self.lr_scheduler.step(metrics[self.lr_scheduler.mode])
        else:
            self.lr_scheduler.step()

    def state_dict(self):
        return {"lr_scheduler": _plain(self.lr_scheduler.state_dict())}

    def load_state_dict(self, state):
        self.lr_scheduler.load_state_dict(_unplain(state["lr_scheduler"]))


class CalibrationPolicy(Policy):
    """At the start of each of its epochs, calibrate the quantizer's activation ranges (after the
    quantization policy has set that epoch's phase, so the ranges are not reset)."""

    def __init__(self, calibrator, quantizer, epochs):
        super().__init__(epochs)
        self.calibrator, self.quantizer = calibrator, quantizer

    def set_data(self, loader, device="cpu"):
        self.calibrator.set_data(loader, device)

    def on_epoch_begin(self, model, epoch, optimizer=None):
        if self.active(epoch):
            self.calibrator.calibrate(self.quantizer)
