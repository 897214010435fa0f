"""Collect activation statistics (and, on request, histograms) at the sites the quantizers will
quantize, in ONE pass over the calibration data.

Under torchrun/DDP each process collects on its own shard of the calibration batches; the per-site
statistics and histograms are then gathered and merged exactly (``TensorStats.merged``,
``Histogram.merged``), so every process derives the same ranges, equal to one process over all data.
"""

import torch

from compressor.calibration.stats import Histogram, StatsObserver, TensorStats
from compressor.core import distributed
from compressor.core.errors import RangeError
from compressor.core.progress import progress
from compressor.quantization.graph import sites as graph


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
    stats, hists = merge_across_processes(observers)
    unseen = [name for name, s in stats.items() if not s.count]
    if unseen:
        raise RangeError(
            f"{len(unseen)} activation site(s) saw no data in calibration: {', '.join(unseen[:5])}. The op is in the "
            "traced graph but never ran (a branch not taken?); leave it in FP32 with an override "
            f"{{'{unseen[0]}': {{bits_activations: null}}}} or report the model")
    records = {name: s.record() for name, s in stats.items()}
    return records, (hists if histograms else None)


def merge_across_processes(observers):
    """({site: TensorStats}, {site: Histogram or None}) of all processes together (this process's own when
    not distributed). One all_gather of the pickled per-site state."""
    local = {name: (obs.stats, obs.histogram) for name, obs in observers.items()}
    if not distributed.is_distributed():
        return {n: s for n, (s, _) in local.items()}, {n: h for n, (_, h) in local.items()}
    gathered = distributed.all_gather_object(local)
    stats = {n: TensorStats.merged([g[n][0] for g in gathered]) for n in local}
    hists = {n: Histogram.merged([g[n][1] for g in gathered]) if local[n][1] is not None else None for n in local}
    return stats, hists
