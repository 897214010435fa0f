"""What a run says when it cannot finish: divergence, a full disk, Ctrl-C. One line, and how to go on.

Checkpoints are written atomically (``compressor.core.io``), so whatever stops a run, the last
checkpoint it finished writing is intact; these messages name it and the ``--resume-from`` that
continues from it. Divergence (a non-finite loss, weight or quantizer range) stops the run: a
NaN run that goes on to the end only wastes the time and writes a meaningless result.
"""

import math

import torch

from compressor.core.errors import DiskFullError, DivergenceError, Interrupted


def resume_hint(run_dir):
    path = getattr(run_dir, "last_checkpoint", None)
    if path:
        return f"; last good checkpoint: {path}, resume with --resume-from {path}"
    return "; no checkpoint was written yet"


def resumable(run_dir, fn, *args):
    """``fn(*args)``; Ctrl-C, a full disk and divergence become one-line errors with the resume hint."""
    try:
        return fn(*args)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted (Ctrl-C){resume_hint(run_dir)}") from None
    except DiskFullError as exc:
        raise DiskFullError(f"{exc}{resume_hint(run_dir)}") from None
    except DivergenceError as exc:
        raise DivergenceError(f"{exc}{resume_hint(run_dir)}") from None


def check_loss(value, epoch, step, steps, what="loss"):
    if not math.isfinite(value):
        raise DivergenceError(f"training diverged in epoch {epoch}, step {step + 1}/{steps}: the {what} is {value} "
                              f"(try a lower --lr, or check the recipe's quantizer and LR schedule)")


def first_non_finite(model):
    """Name of the first parameter or buffer (weights, quantizer ranges) holding NaN/inf, else None."""
    for name, tensor in model.state_dict().items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not tensor.is_quantized and \
                not bool(torch.isfinite(tensor).all()):
            return name
    return None


def check_model(model, epoch, step=None):
    name = first_non_finite(model)
    if name is not None:
        where = f"epoch {epoch}" + (f", step {step + 1}" if step is not None else "")
        raise DivergenceError(f"training diverged in {where}: {name} holds NaN or infinite values "
                              f"(try a lower --lr, or check the recipe's quantizer and LR schedule)")
