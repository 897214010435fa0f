"""--summary: the model's modules, its printout, or its parameter and MAC counts per layer."""

import torch
from tabulate import tabulate
from torch import nn


def print_summary(model, kinds, loader):
    for kind in kinds:
        if kind == "model":
            print(model)
        elif kind == "modules":
            for name, module in model.named_modules():
                if name:
                    print(f"{name}: {type(module).__name__}")
        elif kind == "compute":
            print(compute_table(model, next(iter(loader))[0][:1]))


def compute_table(model, sample):
    rows, hooks = [], []

    def hook(name):
        def record(module, inputs, output):
            w = module.weight
            if isinstance(module, nn.Conv2d):
                macs = output.numel() * w[0].numel()
            else:
                macs = output.numel() * w.shape[1]
            rows.append((name, type(module).__name__, tuple(w.shape), w.numel(), macs))

        return record

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(hook(name)))
    model.eval()
    with torch.no_grad():
        model(sample.to(next(model.parameters()).device))
    for h in hooks:
        h.remove()
    rows.append(("Total", "", "", sum(r[3] for r in rows), sum(r[4] for r in rows)))
    return tabulate(rows, headers=["name", "type", "weight shape", "params", "MACs"])
