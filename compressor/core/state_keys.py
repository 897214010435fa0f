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
        # the first name the model has, else the key as it is, for load_state_dict to report
        out[next((c for c in _candidates(key) if c in target), key)] = value
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


# torch's nn.MultiheadAttention keeps its input projection as in_proj_weight / in_proj_bias; a traced model computes
# it with a called Linear (the quantizer's SelfAttention), whose state is in_proj.weight / in_proj.bias
_ALIASES = (("in_proj_weight", "in_proj.weight"), ("in_proj_bias", "in_proj.bias"))


def _aliases(key):
    out = []
    for a, b in _ALIASES:
        for this, other in ((a, b), (b, a)):
            if key == this or key.endswith("." + this):
                out.append(key[: len(key) - len(this)] + other)
    return out


def _unparametrized(key):
    if PARAM_KEY in key and key.endswith(ORIGINAL_SUFFIX):
        prefix, rest = key.split(PARAM_KEY, 1)
        return [f"{prefix}.{rest[: -len(ORIGINAL_SUFFIX)]}"]
    return []


def _parametrized(key):
    parts = key.rsplit(".", 1)
    return [f"{parts[0]}{PARAM_KEY}{parts[1]}{ORIGINAL_SUFFIX}"] if len(parts) == 2 and PARAM_KEY not in key else []


def _candidates(key):
    """``key`` and the names the same tensor has in a plain or a prepared model, in order of preference."""
    found = [key]
    for step in (_unparametrized, _aliases, _parametrized):
        found += [c for k in list(found) for c in step(k) if c not in found]
    return found


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
