"""Distiller's way of collecting statistics: one record per leaf module, for its inputs and its output.

Our own calibration records the tensors the quantizers need (sites, after batch-norm folding);
this collector writes what Distiller's ``--qe-calibration`` wrote (every leaf module of the
unfolded model, ``{name: {inputs: {0: record, ...}, output: record}}``), so that tests and
measurements can feed the post-training quantizer a file shaped like the ones Distiller users have.
"""

import torch

from compressor.calibration.stats import TensorStats


def _leaves(model):
    return [(name, m) for name, m in model.named_modules() if name and not list(m.children())]


@torch.no_grad()
def collect_module_stats(model, loader, max_batches=None):
    """{module name: {"inputs": {i: record}, "output": record}} over ``loader`` (model in eval mode)."""
    stats, hooks = {}, []

    def hook(name):
        def record(module, inputs, output):
            entry = stats.setdefault(name, {"inputs": {}, "output": TensorStats()})
            for i, x in enumerate(inputs):
                if torch.is_tensor(x) and x.is_floating_point():
                    entry["inputs"].setdefault(i, TensorStats()).update(x)
            entry["output"].update(output)
        return record

    for name, module in _leaves(model):
        hooks.append(module.register_forward_hook(hook(name)))
    try:
        model.eval()
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            model(batch[0])
    finally:
        for h in hooks:
            h.remove()
    return {name: {"inputs": {i: s.record() for i, s in e["inputs"].items()}, "output": e["output"].record()}
            for name, e in stats.items()}

