"""Make torchvision's classifiers visible to torch.fx, so that every op that computes is an op we can quantize.

Two things hide computation from a symbolic trace:

- ``nn.MultiheadAttention`` (ViT) is a leaf module whose projections run inside
  ``F.multi_head_attention_forward`` on raw parameters: no Linear is ever called, so its weights were never
  quantized and its matmuls and softmax never observed. ``SelfAttention`` computes the same (FP32 outputs
  within 1e-5 of the original, tested) from a called ``in_proj`` Linear, matmuls, a softmax and the original
  ``out_proj``, sharing the original's parameters; it takes self-attention without masks, the case of every
  torchvision classifier. Others stay leaves (FP32) with a warning naming them.
- torchvision's ``stochastic_depth`` is an fx-wrapped function called with the module's ``training`` flag,
  which a trace records as a constant: a model traced in training would drop paths at evaluation too.
  ``StochasticDepth`` is kept a leaf module, so the flag is read at run time.

- ``nn.Hardswish`` and ``nn.SiLU`` are split into gate and product (``split_gated_activations``): the gate gets its
  own quantizer and the product runs on onnxruntime's integer QLinearMul, as in ONNX Runtime's own quantizer
  (MobileNet-V3 small at 224x224 on an AVX2 EPYC: 19 float Mul nodes between dequantize and quantize before).

``swap_attention`` and ``split_gated_activations`` replace modules in place (the parameters stay the same
objects); the attention module takes the original's state-dict names too (``in_proj_weight``, ``in_proj_bias``),
so a plain torchvision state dict still loads.
"""

import logging

import torch
import torch.nn.functional as F
from torch import fx, nn

log = logging.getLogger(__name__)


def leaf_types():
    try:
        from torchvision.ops import StochasticDepth
    except ImportError:  # torchvision is a dependency; a model without it has no such module
        return ()
    return (StochasticDepth,)


class Tracer(fx.Tracer):
    """torch.fx's tracer that keeps modules whose behaviour depends on ``training`` as calls."""

    def is_leaf_module(self, m, qualname):
        return isinstance(m, leaf_types()) or super().is_leaf_module(m, qualname)


def symbolic_trace(model):
    """``fx.symbolic_trace`` with ``Tracer``: a GraphModule sharing ``model``'s modules."""
    tracer = Tracer()
    graph = tracer.trace(model)
    name = model.__class__.__name__
    return fx.GraphModule(tracer.root, graph, name)


class SelfAttention(nn.Module):
    """``nn.MultiheadAttention`` for self-attention without masks, as ops torch.fx sees: the input projection
    (one Linear to q, k and v), ``(q * d**-0.5) @ k^T``, softmax, dropout, ``@ v`` and the output projection.

    Returns ``(output, None)``: the attention weights are not computed (torchvision's ViT discards them).
    """

    def __init__(self, mha):
        super().__init__()
        embed = mha.embed_dim
        self.num_heads, self.head_dim, self.batch_first = mha.num_heads, mha.head_dim, mha.batch_first
        self.in_proj = nn.Linear(embed, 3 * embed, bias=mha.in_proj_bias is not None)
        self.in_proj.weight = mha.in_proj_weight
        if mha.in_proj_bias is not None:
            self.in_proj.bias = mha.in_proj_bias
        self.out_proj = mha.out_proj
        self.attn_drop = nn.Dropout(mha.dropout)
        self.scale = float(self.head_dim) ** -0.5
        self._register_load_state_dict_pre_hook(_renamed_projection)
        self._register_state_dict_hook(_original_projection_names)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        x = query if self.batch_first else query.transpose(0, 1)
        batch, length = x.shape[0], x.shape[1]
        qkv = self.in_proj(x).reshape(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.matmul(q * self.scale, k.transpose(-2, -1))
        attn = self.attn_drop(F.softmax(attn, dim=-1))
        out = torch.matmul(attn, v).transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)
        out = self.out_proj(out)
        return (out if self.batch_first else out.transpose(0, 1)), None


_ORIGINAL_NAMES = {"in_proj.weight": "in_proj_weight", "in_proj.bias": "in_proj_bias"}


def _renamed_projection(state, prefix, *args):
    for mine, original in _ORIGINAL_NAMES.items():
        if prefix + original in state:
            state[prefix + mine] = state.pop(prefix + original)


def _original_projection_names(module, state, prefix, local_metadata):
    """State dicts keep nn.MultiheadAttention's names, so checkpoints read the same with or without the swap."""
    for mine, original in _ORIGINAL_NAMES.items():
        if prefix + mine in state:
            state[prefix + original] = state.pop(prefix + mine)
    return state


class HardswishProduct(nn.Module):
    """``x * hardsigmoid(x)``, which is hardswish: as two ops, the gate is quantized on its own and the product
    runs on onnxruntime's integer QLinearMul, as its own ``quantize_static`` does (MobileNet-V3)."""

    def forward(self, x):
        return x * F.hardsigmoid(x)


class SiLUProduct(nn.Module):
    """``x * sigmoid(x)``, which is SiLU: the gate quantized on its own, the product on QLinearMul (EfficientNet)."""

    def forward(self, x):
        return x * torch.sigmoid(x)


_GATED = {nn.Hardswish: HardswishProduct, nn.SiLU: SiLUProduct}


def split_gated_activations(model):
    """Replace hardswish and SiLU modules by their gate-times-input form; returns the names replaced."""
    replaced = []
    for name, module in list(model.named_modules()):
        product = _GATED.get(type(module))
        if product is not None:
            model.set_submodule(name, product())
            replaced.append(name)
    return replaced


def _swappable(mha):
    """None when ``SelfAttention`` computes what ``mha`` does, else why not."""
    if not mha._qkv_same_embed_dim:
        return "key/value dimensions differ from the embedding's"
    if mha.bias_k is not None or mha.add_zero_attn:
        return "bias_k/bias_v or add_zero_attn"
    return None


def swap_attention(model):
    """Replace every ``nn.MultiheadAttention`` of ``model`` that ``SelfAttention`` can compute; returns the names."""
    swapped = []
    for name, module in list(model.named_modules()):
        if type(module) is not nn.MultiheadAttention:
            continue
        why = _swappable(module)
        if why:
            log.warning("%s: nn.MultiheadAttention with %s stays one FP32 op (not quantized)", name, why)
            continue
        model.set_submodule(name, SelfAttention(module))
        swapped.append(name)
    return swapped
