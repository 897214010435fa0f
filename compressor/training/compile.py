"""``--compile``: the training and evaluation forward passes under ``torch.compile``, quantizers inside.

The quantizers are written so that TorchDynamo captures a quantized model in one graph (no ``.item()``, no
branching on tensor values; tests/unit/quantization/test_compile.py counts the breaks with
``torch._dynamo.explain``): ranges, scales and rounding fuse with the surrounding element-wise work. Only the
module the loop calls is compiled; the scheduler, its policies and the checkpoints keep the plain model, so
parameter names, recipes and ``--resume-from`` are the same with and without the flag. A policy that switches a
quantizer (enable, freeze) or a thinning that replaces parameters makes TorchDynamo recompile once, by its guards.
"""

import logging

import torch

log = logging.getLogger("compressor")


def compile_module(module, mode=None):
    """``torch.compile(module)``; compiled lazily, at the first call."""
    return torch.compile(module, mode=mode)


def compile_report():
    """'N graphs, M graph breaks' compiled so far in this process (TorchDynamo's counters), for the log."""
    from torch._dynamo.utils import counters

    graphs = counters["stats"].get("unique_graphs", 0)
    breaks = sum(counters["graph_break"].values())
    reasons = sorted(counters["graph_break"], key=lambda r: -counters["graph_break"][r])[:3]
    text = f"{graphs} graph(s), {breaks} graph break(s)"
    return text + (": " + "; ".join(r[:120] for r in reasons) if reasons else "")
