"""Distiller's checkpoints, read safely and turned into ours.

Distiller's ``save_checkpoint`` pickles the optimizer's class (``optimizer_type``:
``torch.optim.sgd.SGD``, or Adam in its other samples) beside tensors and plain data, so
``torch.load(weights_only=True)`` refuses the file. We allow exactly those classes, only while
loading (``torch.serialization.safe_globals``), never an arbitrary pickle; anything else Distiller
could pickle (its quantizer classes in ``quantizer_metadata``, thinning recipes) stays refused.

What maps: ``state_dict``, ``epoch``, ``arch``, ``dataset``, ``optimizer_state_dict`` (an SGD state
loads into our SGD), and ``extras`` ``best_top1`` / ``best_epoch`` as our ``best_scores``. Distiller's
``compression_sched`` (pruning masks) has no counterpart and is dropped. Old checkpoints without
BatchNorm's ``num_batches_tracked`` load as PyTorch loads them (``core.state_keys``).
"""

import torch

from compressor.core.errors import CheckpointError

# the classes Distiller's apps store as ``optimizer_type`` (compress_classifier: SGD; word LM, GAN samples: Adam)
DISTILLER_GLOBALS = [torch.optim.SGD, torch.optim.Adam]
DISTILLER_KEYS = ("optimizer_type", "extras", "thinning_recipes", "quantizer_metadata", "is_parallel")


def safe_globals():
    """Context manager for ``torch.load(weights_only=True)`` that also accepts Distiller's optimizer classes."""
    return torch.serialization.safe_globals(DISTILLER_GLOBALS)


def is_distiller(checkpoint):
    return isinstance(checkpoint, dict) and any(k in checkpoint for k in DISTILLER_KEYS)


def from_distiller(checkpoint, path):
    """Our checkpoint layout from Distiller's (weights, epoch, arch, optimizer, best top-1)."""
    if checkpoint.get("quantizer_metadata") or checkpoint.get("thinning_recipes"):
        what = "quantized" if checkpoint.get("quantizer_metadata") else "thinned"
        raise CheckpointError(f"{path} is a {what} Distiller checkpoint; its modules are Distiller's wrappers. "
                              "Load the FP32 checkpoint it was made from, then quantize here")
    if "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: a Distiller checkpoint without 'state_dict'")
    out = {"state_dict": checkpoint["state_dict"], "epoch": int(checkpoint.get("epoch", 0)),
           "optimizer_state_dict": checkpoint.get("optimizer_state_dict"), "distiller": True}
    for key in ("arch", "dataset"):
        if checkpoint.get(key):
            out[key] = checkpoint[key]
    extras = checkpoint.get("extras") or {}
    if "best_top1" in extras:
        best_epoch = int(extras.get("best_epoch", out["epoch"]))
        out["best_scores"] = [[float(extras["best_top1"]), float(extras.get("best_top5", 0.0)), best_epoch]]
    return out
