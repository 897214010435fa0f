"""The optimizers a training run may use, by name (``--optimizer``), and the check that a resumed run keeps its own.

SGD with momentum is Distiller's (and the ResNet recipes'); AdamW is what ConvNeXt and ViT are trained with
(timm's and torchvision's reference recipes): under SGD, ConvNeXt's layer scales start at 1e-6 and barely move.
"""

import torch

from compressor.core.errors import UsageError

OPTIMIZERS = ("sgd", "adamw")


def make_optimizer(name, params, lr, momentum, weight_decay):
    """A ``torch.optim`` optimizer over ``params``; ``momentum`` is SGD's (AdamW keeps its default betas)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise UsageError(f"--optimizer {name}: expected one of {', '.join(OPTIMIZERS)}")


def optimizer_name(state):
    """Which of OPTIMIZERS wrote ``state`` (an optimizer state dict), from its hyper-parameter keys; None if neither."""
    groups = state.get("param_groups") or [{}]
    keys = set(groups[0])
    if "betas" in keys:
        return "adamw"
    if "momentum" in keys:
        return "sgd"
    return None


def load_optimizer_state(optimizer, name, state):
    """Load a checkpoint's optimizer state; a UsageError when it was written by another optimizer (loading SGD's
    momentum buffers into AdamW would train on from the wrong state)."""
    saved = optimizer_name(state)
    if saved is not None and saved != name:
        raise UsageError(f"--optimizer {name}: the checkpoint was trained with --optimizer {saved}; resume with "
                         f"--optimizer {saved}, or add --reset-optimizer to start a new {name} from its weights")
    optimizer.load_state_dict(state)
