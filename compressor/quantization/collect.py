"""Collect activation statistics (and, on request, histograms) at the sites the quantizers will
quantize, in ONE pass over the calibration data."""

import torch

from compressor.core.progress import progress
from compressor.quantization.graph import sites as graph
from compressor.calibration.stats import StatsObserver


def instrument(model, quantize_inputs=True, histograms=False, bins=2048):
    """(GraphModule, {site name: StatsObserver}) for ``model`` (eval mode, parameters shared)."""
    gm = graph.trace(model)
    sites = graph.find_activation_sites(gm, quantize_inputs)
    observers = graph.instrument(gm, sites, lambda site: StatsObserver(histograms, bins))
    return gm.eval(), observers


@torch.no_grad()
def _run(gm, loader, device, max_batches):
    total = len(loader) if max_batches is None else min(len(loader), max_batches)
    for i, batch in enumerate(progress(loader, "calibrate", total)):
        if max_batches is not None and i >= max_batches:
            break
        gm(batch[0].to(device))


def collect_stats(model, loader, device="cpu", max_batches=None, histograms=False, bins=2048,
                  quantize_inputs=True):
    """({site: Distiller stats record}, {site: Histogram} or None)."""
    gm, observers = instrument(model, quantize_inputs, histograms, bins)
    _run(gm, loader, device, max_batches)
    records = {name: obs.stats.record() for name, obs in observers.items()}
    hists = {name: obs.histogram for name, obs in observers.items()} if histograms else None
    return records, hists
