"""The small deployable artifact: integer weights (nibble-packed at 4 bits or fewer), scales, and what it
takes to rebuild the int8 model, loadable with ``torch.load(weights_only=True)``.

The int8 model's structure comes from the architecture and recipe: the model is built, prepared by
the recipe's quantizer, given the simulation's quantizer state (scales and switches only, no FP32
weights), converted, and the stored integer weights are loaded into it.
"""

from collections import OrderedDict

import torch

from compressor.core.io import load_checkpoint, save_checkpoint
from compressor.deploy.convert import to_torch_int8
from compressor.models import create_model
from compressor.recipe.build import build_scheduler, read_recipe

PACK_BITS = 4  # weights at this many bits or fewer are stored two per byte


def pack_nibbles(q):
    """Signed integers in [-8, 7] -> uint8, two per byte (low nibble first); returns (bytes, count)."""
    flat = (q.flatten().to(torch.int16) & 0xF).to(torch.uint8)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return flat[0::2] | (flat[1::2] << 4), q.numel()


def unpack_nibbles(packed, count):
    low, high = packed & 0xF, packed >> 4
    values = torch.stack([low, high], 1).flatten()[:count].to(torch.int16)
    return torch.where(values > 7, values - 16, values).to(torch.int8)


def _quant_state(simulated):
    """The simulation's quantizer state without FP32 weights: ranges, scales, switches."""
    return {k: v for k, v in simulated.state_dict().items()
            if k.startswith("activation_quantizers.") or (".parametrizations." in k and not k.endswith(".original"))}


def save_artifact(path, int8_model, simulated, metadata):
    """Write the artifact; ``metadata`` holds arch, dataset, recipe (and anything else plain)."""
    weight_bits = getattr(int8_model, "weight_bits", {})  # int8 module name -> the simulation's weight bits
    state, packed = {}, {}
    full = int8_model.state_dict()
    versions = {k: dict(v) for k, v in getattr(full, "_metadata", {}).items()}  # module versions pick load formats
    for key, value in full.items():
        bits = weight_bits.get(key.split("._packed_params")[0].rsplit(".", 1)[0] if "_packed_params" in key
                                else key.rsplit(".", 1)[0])
        weight, rest = (value[0], list(value[1:])) if isinstance(value, tuple) else (value, None)
        fits = torch.is_tensor(weight) and weight.dtype == torch.qint8 and \
            -8 <= int(weight.int_repr().min()) and int(weight.int_repr().max()) <= 7
        if fits and bits is not None and bits <= PACK_BITS and (rest is not None or key.endswith(".weight")):
            data, count = pack_nibbles(weight.int_repr())
            packed[key] = {"data": data, "count": count, "shape": list(weight.shape), "rest": rest,
                           "scales": weight.q_per_channel_scales().float(), "axis": weight.q_per_channel_axis()}
        else:
            state[key] = value
    save_checkpoint(path, {"format": "compressor-int8/1", "int8_state_dict": state, "packed_weights": packed,
                           "state_versions": versions,
                           "quantizer_state": _quant_state(simulated), **metadata})


def load_artifact(path, engine=None):
    """Rebuild the int8 model of an artifact written by ``save_artifact``; returns (model, artifact dict)."""
    art = load_checkpoint(path)
    model = create_model(art["arch"], art["dataset"]).eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scheduler = build_scheduler(read_recipe(art["recipe"], file=f"{path} (recipe)"), model, optimizer)
    scheduler.model.load_state_dict(art["quantizer_state"], strict=False)
    int8, _ = to_torch_int8(scheduler.model.eval(), engine or art.get("engine", "qnnpack"))
    state = dict(art["int8_state_dict"])
    for key, p in art["packed_weights"].items():
        q = unpack_nibbles(p["data"], p["count"]).reshape(p["shape"]).float()
        scales = p["scales"].double()
        shape = (-1,) + (1,) * (q.dim() - 1)
        weight = torch.quantize_per_channel(q * scales.float().view(shape), scales,
                                            torch.zeros(len(scales), dtype=torch.long), p["axis"], torch.qint8)
        state[key] = weight if p["rest"] is None else (weight, *p["rest"])
    state = OrderedDict(state)
    state._metadata = OrderedDict((k, v) for k, v in art.get("state_versions", {}).items())
    int8.load_state_dict(state)
    return int8, art
