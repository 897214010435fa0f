"""--summary: the model's modules, its printout, its compute per layer (MACs, bits, BOPs, memory) or its sparsity.

MACs come from PyTorch's own counter, ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2 for
convolutions and matrix products), rather than from hand-written shape formulas: it follows
whatever the model really runs (grouped convs, strides, the quantized model's parametrized weights).
resnet20_cifar on a 32x32 image: 40,813,184 MACs (81,626,368 FLOPs).

Bits come from the model itself: a layer's weight bits from its weight quantizer, its activation bits
from the quantizer module (``QuantModule``: linear fake-quant or low-bit activation) whose output it
reads (found by a forward hook, not by name matching), else 32. BOPs = MACs x w_bits x a_bits (bit
operations, as in the mixed-precision literature, e.g. Baskin et al. 2018, Uhlich et al. 2020); weight
memory counts weights at their bits and biases at 32, activation memory each layer's input at its
bits (one image).
"""

import torch
from tabulate import tabulate
from torch import nn

from compressor.pruning.masks import find_parameter
from compressor.pruning.summary import layer_macs, sparsity_table
from compressor.quantization.quant_module import QuantModule

FP_BITS = 32


def print_summary(model, kinds, loader):
    for kind in kinds:
        if kind == "model":
            print(model)
        elif kind == "modules":
            for name, module in model.named_modules():
                if name:
                    print(f"{name}: {type(module).__name__}")
        elif kind == "compute":
            print(compute_text(compute_summary(model, next(iter(loader))[0][:1])))
        elif kind == "sparsity":  # Distiller's sparsity table, with each layer's MACs and those on nonzero weights
            layers = compute_summary(model, next(iter(loader))[0][:1])["layers"]
            table, total = sparsity_table(model, {r["name"]: r["macs"] for r in layers})
            print(f"{table}\nTotal sparsity: {100 * total:.2f} %")


def sparsity_summary(model, sample, dense_model=None):
    """For summary.json: weight sparsity, parameters, MACs of one ``sample`` image, the MACs left on nonzero
    weights, and (``dense_model``: the unpruned architecture) the dense model's MACs and parameters."""
    layers = compute_summary(model, sample)["layers"]
    nonzero = 0.0
    for r in layers:
        w = find_parameter(model, f"{r['name']}.weight")
        nonzero += r["macs"] * int(torch.count_nonzero(w.detach())) / w.numel()
    _, sparsity = sparsity_table(model)
    out = {"weights": round(sparsity, 6), "parameters": sum(p.numel() for p in model.parameters()),
           "macs": sum(r["macs"] for r in layers), "macs_on_nonzero_weights": int(round(nonzero))}
    if dense_model is not None:
        out["dense"] = {"parameters": sum(p.numel() for p in dense_model.parameters()),
                        "macs": compute_summary(dense_model, sample)["totals"]["macs"]}
    return out


def _weight_bits(module, only_enabled):
    """Bits of the module's weight: its parametrization's quantizer, else 32."""
    plist = getattr(getattr(module, "parametrizations", None), "weight", None)
    if plist is not None:
        for p in plist:
            if getattr(p, "bits", None) and (getattr(p, "enabled", True) or not only_enabled):
                return int(p.bits)
    return FP_BITS


@torch.no_grad()
def compute_summary(model, sample, only_enabled=False):
    """Per conv/linear layer: MACs, params, bits, BOPs, memory; totals and ratios against FP32.

    One eval-mode forward pass on ``sample`` (one image); the model's mode is restored. Before
    training (``--summary``) the recipe's bits count even where its policy has not switched the
    quantizer on yet; at the end of a run (``only_enabled``) only quantizers that are on count."""
    was_training = model.training
    model.eval()
    layers = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Conv1d))}
    quantized_outputs = {}  # id(tensor) -> (tensor kept alive so its id is not reused, bits)
    inputs = {}

    def mark(module, _, output):
        if (module.enabled or not only_enabled) and torch.is_tensor(output):
            quantized_outputs[id(output)] = (output, int(module.bits))

    def record(name):
        def hook(_, args, output):
            x = args[0]
            inputs[name] = (x.numel(), quantized_outputs.get(id(x), (None, FP_BITS))[1])

        return hook

    # every quantizer module (linear fake-quant or low-bit activation): its output is a quantized tensor;
    # weight quantizers run inside parametrizations, so their outputs never feed a layer's input
    hooks = [m.register_forward_hook(mark) for m in model.modules() if isinstance(m, QuantModule)]
    hooks += [m.register_forward_hook(record(n)) for n, m in layers.items()]
    try:
        macs_of = layer_macs(model, sample)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    rows = []
    for name, module in layers.items():
        if name not in inputs:  # not called in the forward pass
            continue
        macs = macs_of.get(name, 0)
        w_bits = _weight_bits(module, only_enabled)
        act_numel, a_bits = inputs[name]
        weights = module.weight.numel()
        bias = module.bias.numel() if getattr(module, "bias", None) is not None else 0
        rows.append({"name": name, "type": type(module).__name__, "params": weights + bias, "macs": macs,
                     "w_bits": w_bits, "a_bits": a_bits, "bops": macs * w_bits * a_bits,
                     "weight_bytes": (weights * w_bits + bias * FP_BITS) / 8,
                     "activation_bytes": act_numel * a_bits / 8, "activation_numel": act_numel})
    return {"layers": rows, "totals": _totals(rows)}


def _totals(rows):
    macs = sum(r["macs"] for r in rows)
    params = sum(r["params"] for r in rows)
    acts = sum(r["activation_numel"] for r in rows)
    totals = {"params": params, "macs": macs, "bops": sum(r["bops"] for r in rows),
              "weight_bytes": sum(r["weight_bytes"] for r in rows),
              "activation_bytes": sum(r["activation_bytes"] for r in rows)}
    fp32 = {"bops": macs * FP_BITS * FP_BITS, "weight_bytes": params * FP_BITS / 8,
            "activation_bytes": acts * FP_BITS / 8}
    totals["vs_fp32"] = {k: (totals[k] / v if v else 1.0) for k, v in fp32.items()}
    return totals


def compute_text(summary):
    rows = [(r["name"], r["type"], r["params"], r["macs"], r["w_bits"], r["a_bits"], r["bops"],
             f"{r['weight_bytes'] / 1024:.2f}", f"{r['activation_bytes'] / 1024:.2f}") for r in summary["layers"]]
    t = summary["totals"]
    rows.append(("Total", "", t["params"], t["macs"], "", "", t["bops"], f"{t['weight_bytes'] / 1024:.2f}",
                 f"{t['activation_bytes'] / 1024:.2f}"))
    table = tabulate(rows, headers=["name", "type", "params", "MACs", "W bits", "A bits", "BOPs", "weights KiB",
                                    "acts KiB"], intfmt=",")
    r = t["vs_fp32"]
    return (f"{table}\nvs FP32: BOPs x{r['bops']:.4f} ({1 / r['bops']:.1f}x fewer), weight memory x"
            f"{r['weight_bytes']:.4f}, activation memory x{r['activation_bytes']:.4f}")
