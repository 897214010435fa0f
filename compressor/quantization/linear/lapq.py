"""Loss-aware post-training quantization (LAPQ, Nahshan et al. 2019; Distiller's ``--qe-lapq``).

The clipping range of every calibrated activation quantizer is searched jointly, minimising the
task loss on a few calibration batches held in memory, with ``scipy.optimize.minimize`` (Powell by
default, as Distiller). The starting point is the calibrated ranges (``--lapq-init-mode`` a clip
method) or, for ``L1``/``L2``/``L3``, each site's range shrunk to the factor minimising the Lp norm
of its own quantization error (the paper's layer-wise initialisation). The best point seen is kept.
"""

import logging

import numpy as np
import torch
from scipy import optimize

log = logging.getLogger(__name__)
LP_INIT = {"L1": 1.0, "L2": 2.0, "L3": 3.0}
_SHRINK = np.linspace(0.05, 1.0, 40)


@torch.no_grad()
def _loss(gm, batches, criterion):
    total = count = 0
    for x, y in batches:
        total += float(criterion(gm(x), y)) * len(y)
        count += len(y)
    return total / count


@torch.no_grad()
def _site_outputs(quantizer, gm, x):
    """Each static activation quantizer's input on batch ``x`` with quantization off (FP32)."""
    captured, hooks = {}, []
    for name, fq in quantizer.activation_quantizers.items():
        if name in quantizer.ranges:
            hooks.append(fq.register_forward_pre_hook(lambda m, a, n=name: captured.__setitem__(n, a[0].detach())))
    quantizer.set_state(False, False)
    try:
        gm(x)
    finally:
        quantizer.set_state(True, False)
        for h in hooks:
            h.remove()
    return captured


@torch.no_grad()
def lp_init(quantizer, gm, x, p):
    """Per site: the shrink factor of the calibrated range minimising mean |x - q(x)|^p."""
    outputs = _site_outputs(quantizer, gm, x)
    for name, t in outputs.items():
        fq = quantizer.activation_quantizers[name]
        lo, hi = quantizer.ranges[name]
        errors = []
        for a in _SHRINK:
            fq.set_range(lo * a, hi * a)
            errors.append(float((fq(t) - t).abs().pow(p).mean()))
        a = float(_SHRINK[int(np.argmin(errors))])
        set_range(quantizer, name, lo * a, hi * a)


def set_range(quantizer, name, lo, hi):
    quantizer.activation_quantizers[name].set_range(lo, hi)
    quantizer.ranges[name] = (float(lo), float(hi))


def lapq(quantizer, gm, loader, criterion, init_mode="NONE", method="Powell", maxiter=None, maxfev=None,
         eval_batches=None):
    """Search the calibrated clipping ranges jointly on the loss; returns (initial loss, final loss)."""
    device = next(gm.parameters()).device
    batches = [(x.to(device), y.to(device)) for i, (x, y) in enumerate(loader)
               if eval_batches is None or i < eval_batches]
    if init_mode.upper() in LP_INIT:
        lp_init(quantizer, gm, batches[0][0], LP_INIT[init_mode.upper()])
    names = sorted(quantizer.ranges)
    if not names:
        return None, None
    x0 = np.array([v for n in names for v in quantizer.ranges[n]], dtype=np.float64)
    best = {"loss": _loss(gm, batches, criterion), "x": x0.copy()}
    start = best["loss"]
    log.info("LAPQ: %d clipping values of %d activations; loss after initialisation %.4f",
             len(x0), len(names), start)

    def objective(v):
        for i, name in enumerate(names):
            lo, hi = float(v[2 * i]), float(v[2 * i + 1])
            set_range(quantizer, name, min(lo, hi), max(lo, hi))
        loss = _loss(gm, batches, criterion)
        if loss < best["loss"]:
            best.update(loss=loss, x=np.array(v, dtype=np.float64))
        return loss

    options = {k: v for k, v in (("maxiter", maxiter if maxiter is not None else 2), ("maxfev", maxfev))
               if v is not None}
    optimize.minimize(objective, x0, method=method, options=options)
    objective(best["x"])
    log.info("LAPQ: loss %.4f -> %.4f", start, best["loss"])
    return start, best["loss"]
