"""Checkpoints: tensors and plain data only (they load with ``torch.load(weights_only=True)``),
written atomically so a crash never leaves a half-written file behind."""

import os
import tempfile

import torch


class CheckpointError(ValueError):
    pass


def atomic_write(path, write):
    """Call ``write(tmp_path)`` then rename over ``path``: readers see the old file or the new one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path, checkpoint):
    atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def load_checkpoint(path):
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot load checkpoint {path} as tensors and plain data: {exc}") from None


def model_state(checkpoint):
    """The model state dict of one of our checkpoints, or of a bare state dict."""
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        return checkpoint["state_dict"]
    return checkpoint


_PARAM_KEY = ".parametrizations."


def adapt_state_dict(state, model):
    """Map keys between a plain model and a quantization-prepared one (weights only).

    A prepared model keeps its FP32 weight at ``X.parametrizations.weight.original``;
    loading FP32 weights into it, or a quantized checkpoint's weights into a plain
    model, maps those names and drops what the other side does not have.
    """
    target = model.state_dict()
    out = {}
    for key, value in state.items():
        key = key[len("module."):] if key.startswith("module.") and key not in target else key
        if key in target:
            out[key] = value
            continue
        if _PARAM_KEY in key and key.endswith(".original"):
            prefix, rest = key.split(_PARAM_KEY, 1)
            plain = f"{prefix}.{rest[: -len('.original')]}"
            if plain in target:
                out[plain] = value
                continue
        parts = key.rsplit(".", 1)
        if len(parts) == 2:
            prepared = f"{parts[0]}{_PARAM_KEY}{parts[1]}.original"
            if prepared in target:
                out[prepared] = value
                continue
        out[key] = value  # left for load_state_dict to report
    missing = [k for k in target if k not in out and not _is_quant_state(k)]
    unexpected = [k for k in out if k not in target and not _is_quant_state(k)]
    if missing or unexpected:
        raise CheckpointError(
            f"weights do not fit the model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    return {k: v for k, v in out.items() if k in target}, [k for k in target if k not in out]


def _is_quant_state(key):
    return key.startswith("activation_quantizers.") or (_PARAM_KEY in key and not key.endswith(".original"))


def load_weights(model, state):
    """Load weights (plain or prepared naming) into ``model``; quantizer state absent on one side is left as is."""
    state, _ = adapt_state_dict(state, model)
    model.load_state_dict(state, strict=False)
