"""Distiller's sparsity summary: per weight, its shape, density and structure sparsity, and the total."""

import torch
from tabulate import tabulate
from torch.utils.flop_counter import FlopCounterMode

from compressor.pruning.masks import prunable_parameters


@torch.no_grad()
def layer_macs(model, sample):
    """{module name: MACs} of one forward pass of ``model`` on ``sample``, from PyTorch's own counter
    (``FlopCounterMode``: FLOPs / 2 for convolutions and matrix products), in eval mode (restored after)."""
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(sample.to(next(model.parameters()).device))
    finally:
        model.train(was_training)
    out = {}
    for key, ops in counter.get_flop_counts().items():  # keys: 'RootClass.name.of.module'
        if key != "Global" and "." in key:
            out[key.split(".", 1)[1]] = sum(ops.values()) // 2
    return out


def weight_sparsity(weight):
    """(element sparsity, fraction of all-zero filters, fraction of all-zero channels/rows) of a weight."""
    w = weight.detach()
    zero = (w == 0)
    filters = zero.reshape(w.shape[0], -1).all(1).float().mean().item()
    channels = zero.transpose(0, 1).reshape(w.shape[1], -1).all(1).float().mean().item() if w.dim() > 1 else 0.0
    return zero.float().mean().item(), filters, channels


def sparsity_table(model, macs=None):
    """(table text, total element sparsity over the conv/linear weights). ``macs`` ({layer name: MACs of one
    image}, e.g. from ``--summary compute``'s counter) adds each layer's MACs and those left on nonzero weights."""
    rows, nnz, total, dense_macs, sparse_macs = [], 0, 0, 0, 0
    for name, w in prunable_parameters(model).items():
        fine, filters, channels = weight_sparsity(w)
        n = w.numel()
        nz = int(torch.count_nonzero(w.detach()))
        nnz, total = nnz + nz, total + n
        row = [name, tuple(w.shape), n, nz, f"{100 * filters:.2f}", f"{100 * channels:.2f}", f"{100 * fine:.2f}"]
        if macs is not None:
            m = macs.get(name.rpartition(".")[0], 0)
            dense_macs, sparse_macs = dense_macs + m, sparse_macs + round(m * nz / n)
            row += [m, round(m * nz / n)]
        rows.append(row)
    sparsity = 1 - nnz / total if total else 0.0
    rows.append(["Total sparsity:", "-", total, nnz, "", "", f"{100 * sparsity:.2f}"] +
                ([dense_macs, sparse_macs] if macs is not None else []))
    headers = ["Name", "Shape", "NNZ (dense)", "NNZ (sparse)", "Filters (%)", "Ch/Rows (%)", "Fine (%)"]
    if macs is not None:
        headers += ["MACs", "MACs (nonzero)"]
    return tabulate(rows, headers=headers, tablefmt="psql"), sparsity
