"""``--compile``: the training and evaluation forward passes under ``torch.compile``, quantizers inside.

The quantizers are written so that TorchDynamo captures a quantized model in one graph (no ``.item()``, no
branching on tensor values; tests/unit/quantization/test_compile.py counts the breaks with
``torch._dynamo.explain``): ranges, scales and rounding fuse with the surrounding element-wise work. Only the
module the loop calls is compiled; the scheduler, its policies and the checkpoints keep the plain model, so
parameter names, recipes and ``--resume-from`` are the same with and without the flag. A policy that switches a
quantizer (enable, freeze) or a thinning that replaces parameters makes TorchDynamo recompile once, by its guards.
"""

import torch

_START = {}  # TorchDynamo's process-wide counters when the run compiled its model


def _counts():
    from torch._dynamo.utils import counters

    return {"graphs": counters["stats"].get("unique_graphs", 0), "breaks": dict(counters["graph_break"])}


def compile_module(module):
    """``torch.compile(module)``; compiled lazily, at the first call (so a run's modules, wrapped one after the
    other before any call, share the starting counts)."""
    _START.clear()
    _START.update(_counts())
    return torch.compile(module)


def compile_report():
    """'N graphs, M graph breaks' compiled since the run's compile_module (TorchDynamo's counters), for the log."""
    now = _counts()
    graphs = now["graphs"] - _START.get("graphs", 0)
    breaks = {r: n - _START.get("breaks", {}).get(r, 0) for r, n in now["breaks"].items()}
    breaks = {r: n for r, n in breaks.items() if n > 0}
    reasons = sorted(breaks, key=lambda r: -breaks[r])[:3]
    text = f"{graphs} graph(s), {sum(breaks.values())} graph break(s)"
    return text + (": " + "; ".join(r[:120] for r in reasons) if reasons else "")
