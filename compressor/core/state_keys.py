"""State-dict key names of a quantization-prepared model, and loading weights across the two namings.

A prepared model keeps each FP32 weight at ``X.parametrizations.weight.original`` (torch's
parametrization naming) and its activation quantizers under ``activation_quantizers.``; a plain
model has neither. Every module that maps between the two names uses these constants.
"""

from collections import OrderedDict

from compressor.core.errors import CheckpointError

ACT_QUANT_PREFIX = "activation_quantizers."
PARAM_KEY = ".parametrizations."
ORIGINAL_SUFFIX = ".original"


def model_state(checkpoint):
    """The model state dict of one of our checkpoints, or of a bare state dict."""
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        return checkpoint["state_dict"]
    return checkpoint


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
        if PARAM_KEY in key and key.endswith(ORIGINAL_SUFFIX):
            prefix, rest = key.split(PARAM_KEY, 1)
            plain = f"{prefix}.{rest[: -len(ORIGINAL_SUFFIX)]}"
            if plain in target:
                out[plain] = value
                continue
        parts = key.rsplit(".", 1)
        if len(parts) == 2:
            prepared = f"{parts[0]}{PARAM_KEY}{parts[1]}{ORIGINAL_SUFFIX}"
            if prepared in target:
                out[prepared] = value
                continue
        out[key] = value  # left for load_state_dict to report
    # BatchNorm's num_batches_tracked (PyTorch >= 0.4.1) may be absent from older checkpoints (Distiller's
    # SSL examples); PyTorch's own loader accepts that, and so do we (the counter only matters with momentum=None)
    missing = [k for k in target if k not in out and not is_quant_state(k) and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in out if k not in target and not is_quant_state(k)]
    if missing or unexpected:
        raise CheckpointError(
            f"weights do not fit the model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    kept = {k: v for k, v in out.items() if k in target}
    wrong_kind = [
        f"{k} ({str(v.dtype).replace('torch.', '')})"
        for k, v in kept.items()
        if hasattr(v, "is_floating_point") and target[k].is_floating_point() and not v.is_floating_point()
    ]
    if wrong_kind:  # load_state_dict would cast them silently: integer codes or a wrong file, trained as weights
        raise CheckpointError(
            f"weights hold integers where the model has floating-point parameters: {', '.join(wrong_kind[:5])}"
            f"{'...' if len(wrong_kind) > 5 else ''}; expected FP32 weights (an integer-exported model is "
            "not a training checkpoint)"
        )
    return kept


def is_quant_state(key):
    """True for quantizer state (ranges, flags) rather than a weight."""
    return key.startswith(ACT_QUANT_PREFIX) or (PARAM_KEY in key and not key.endswith(ORIGINAL_SUFFIX))


def load_weights(model, state):
    """Load weights (plain or prepared naming) into ``model``; quantizer state absent on one side is left as is."""
    adapted = OrderedDict(adapt_state_dict(state, model))
    # Module versions pick load formats (torchvision's MNASNet refuses a state without its version): the file's
    # own record when it kept one, else this model's (a plain dict, or one read back without the attribute)
    adapted._metadata = getattr(state, "_metadata", None) or model.state_dict()._metadata
    model.load_state_dict(adapted, strict=False)
