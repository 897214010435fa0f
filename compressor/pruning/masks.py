"""The pruning masks of a model: library-owned, kept through training, checkpoints, quantization and thinning.

A mask is a boolean keep-mask per parameter, by the parameter's plain name (``layer1.0.conv1.weight``), whether the
model is plain or quantization-prepared (where the FP32 weight sits at ``...parametrizations.weight.original``:
masking the FP32 weight keeps the quantized weight zero, because every quantizer here maps 0 to 0 exactly).
Masked weights stay zero because the masks are applied after every optimizer step (weight decay and momentum would
move them) and gradients are masked before it (so momentum never builds up for a pruned weight).
"""

import torch


def plain_name(name):
    """A recipe's parameter name without DataParallel's ``module.`` prefix (Distiller's recipes carry it)."""
    return name[len("module."):] if name.startswith("module.") else name


def find_parameter(model, name):
    """The FP32 tensor behind ``name`` in a plain or quantization-prepared model, or None."""
    module_name, _, attr = plain_name(name).rpartition(".")
    try:
        module = model.get_submodule(module_name) if module_name else model
    except AttributeError:
        return None
    parametrizations = getattr(module, "parametrizations", None)
    if parametrizations is not None and attr in parametrizations:
        return parametrizations[attr].original
    tensor = getattr(module, attr, None)
    return tensor if isinstance(tensor, torch.Tensor) else None


def prunable_parameters(model):
    """{plain name: tensor} of the weights of convolutions and linear layers (what '*' means in a recipe)."""
    out = {}
    for module_name, module in model.named_modules():
        if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)):
            name = f"{module_name}.weight" if module_name else "weight"
            out[name] = find_parameter(model, name)
    return out


class ParameterMasks:
    """{plain parameter name: bool keep-mask}; ``apply`` zeroes what the masks remove."""

    def __init__(self):
        self.masks = {}

    def __contains__(self, name):
        return name in self.masks

    def __getitem__(self, name):
        return self.masks[name]

    def items(self):
        return self.masks.items()

    def set(self, name, mask):
        self.masks[name] = mask.detach().to(torch.bool)

    def combine(self, name, mask):
        """Remove what ``mask`` removes on top of what is already removed."""
        mask = mask.detach().to(torch.bool)
        self.masks[name] = self.masks[name] & mask if name in self.masks else mask

    @torch.no_grad()
    def apply(self, model):
        for name, mask in self.masks.items():
            tensor = find_parameter(model, name)
            if tensor is not None:
                tensor.mul_(mask.to(tensor.device))

    @torch.no_grad()
    def mask_gradients(self, model):
        for name, mask in self.masks.items():
            tensor = find_parameter(model, name)
            if tensor is not None and tensor.grad is not None:
                tensor.grad.mul_(mask.to(tensor.grad.device))

    def state_dict(self):
        return {name: mask.cpu() for name, mask in self.masks.items()}

    def load_state_dict(self, state):
        self.masks = {name: mask.to(torch.bool) for name, mask in state.items()}
