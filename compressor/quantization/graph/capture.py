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

- torchvision's Swin computes its window attention inside ``shifted_window_attention``, an fx-wrapped function
  given the qkv/proj weights as tensors: its linears were never quantized and nothing in it could be exported.
  ``WindowAttention`` computes the same (tested against torchvision's module) from the called ``qkv`` and ``proj``
  Linears, matmuls and a softmax; the parts that depend on the feature map's size (padding, the cyclic shift and
  the window partition, the shifted windows' mask) are three fx-wrapped functions, ``window_partition``,
  ``window_softmax`` and ``window_merge``, which the exporter lowers with the sizes it records. Swin V2's
  ``WindowAttentionV2`` adds cosine attention (``F.normalize`` of q and k, times the clamped logit scale) and
  computes its position bias (a small MLP on log-spaced coordinates, from parameters alone) in one fx-wrapped
  function, ``continuous_position_bias``: no activation of it is quantized and the exporter folds it to a constant.
- ``nn.Hardswish`` and ``nn.SiLU`` are split into gate and product (``split_gated_activations``): the gate gets its
  own quantizer and the product runs on onnxruntime's integer QLinearMul, as in ONNX Runtime's own quantizer
  (MobileNet-V3 small at 224x224 on an AVX2 EPYC: 19 float Mul nodes between dequantize and quantize before).

``swap_attention`` and ``split_gated_activations`` replace modules in place (the parameters stay the same
objects); the attention module takes the original's state-dict names too (``in_proj_weight``, ``in_proj_bias``),
so a plain torchvision state dict still loads.
"""

import logging
import math
import operator

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
        return isinstance(m, (*leaf_types(), MatMul)) or super().is_leaf_module(m, qualname)


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


class MatMul(nn.Module):
    """``torch.matmul`` as a module call, put in place of each matmul/bmm of a traced graph (``sites.trace``): a
    functional op in an fx graph shows nobody its operands, a module call shows them to a forward pre-hook, where
    the integer simulation reads the two integer operands of onnxruntime's QLinearMatMul. No parameters, no state;
    ``site_name`` is the name the functional op's site had, which the site keeps (recipes' overrides and
    checkpoints' quantizer names read the same). A leaf of ``Tracer``: a traced graph traced again keeps it."""

    def __init__(self, site_name):
        super().__init__()
        self.site_name = site_name

    def forward(self, a, b):
        return torch.matmul(a, b)

    def extra_repr(self):
        return self.site_name


_MATMUL_FUNCTIONS = (torch.matmul, torch.bmm, operator.matmul)
_MATMUL_METHODS = ("matmul", "bmm")


def is_matmul(node):
    """True for a two-operand matmul/bmm call of an fx graph (function, method or ``a @ b``), no keywords."""
    functional = (node.op == "call_function" and node.target in _MATMUL_FUNCTIONS) or (
        node.op == "call_method" and node.target in _MATMUL_METHODS)
    return functional and len(node.args) == 2 and not node.kwargs


def split_gated_activations(model):
    """Replace hardswish and SiLU modules by their gate-times-input form; returns the names replaced."""
    replaced = []
    for name, module in list(model.named_modules()):
        product = _GATED.get(type(module))
        if product is not None:
            model.set_submodule(name, product())
            replaced.append(name)
    return replaced


def _padded(size, window):
    return size + (window - size % window) % window


def window_layout(height, width, window, shift):
    """(padded height, padded width, effective shift) of a feature map for windows of ``window``: torchvision pads
    to whole windows and shifts no dim that one window covers."""
    ph, pw = _padded(height, window[0]), _padded(width, window[1])
    return ph, pw, [0 if window[0] >= ph else shift[0], 0 if window[1] >= pw else shift[1]]


def shift_window_mask(height, width, window, shift):
    """The additive mask of shifted windows, (windows, tokens, tokens): 0 between tokens of the same region
    before the shift, -100 between regions (torchvision's values), for a padded feature map of that size."""
    region = torch.zeros(height, width)
    bounds = [((0, -window[i]), (-window[i], -shift[i]), (-shift[i], None)) for i in (0, 1)]
    count = 0
    for h0, h1 in bounds[0]:
        for w0, w1 in bounds[1]:
            region[h0:h1, w0:w1] = count
            count += 1
    region = region.view(height // window[0], window[0], width // window[1], window[1])
    region = region.permute(0, 2, 1, 3).reshape(-1, window[0] * window[1])
    differs = region.unsqueeze(1) != region.unsqueeze(2)
    return torch.zeros(differs.shape).masked_fill(differs, -100.0)


def window_partition(x, window, shift):
    """(B, H, W, C) -> (B * windows, tokens, C): padded to whole windows, shifted back by ``shift``, cut."""
    batch, height, width, channels = x.shape
    ph, pw, shift = window_layout(height, width, window, shift)
    x = F.pad(x, (0, 0, 0, pw - width, 0, ph - height))
    if shift[0] or shift[1]:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    x = x.view(batch, ph // window[0], window[0], pw // window[1], window[1], channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window[0] * window[1], channels)


def window_merge(windows, x, window, shift):
    """``window_partition`` undone: windows of (B * windows, tokens, C) back to ``x``'s (B, H, W, C)."""
    batch, height, width, channels = x.shape
    ph, pw, shift = window_layout(height, width, window, shift)
    y = windows.reshape(batch, ph // window[0], pw // window[1], window[0], window[1], channels)
    y = y.permute(0, 1, 3, 2, 4, 5).reshape(batch, ph, pw, channels)
    if shift[0] or shift[1]:
        y = torch.roll(y, shifts=(shift[0], shift[1]), dims=(1, 2))
    return y[:, :height, :width, :].contiguous()


def window_softmax(attn, x, window, shift):
    """Softmax over the last dim of the attention logits (B * windows, heads, tokens, tokens) of ``x``'s windows,
    with the shifted windows' mask added first where a shift applies."""
    ph, pw, shift = window_layout(x.shape[1], x.shape[2], window, shift)
    if shift[0] or shift[1]:
        mask = shift_window_mask(ph, pw, window, shift).to(attn)
        windows, tokens = mask.shape[0], mask.shape[1]
        attn = (attn.view(-1, windows, attn.shape[1], tokens, tokens) + mask.unsqueeze(1)).view(attn.shape)
    return F.softmax(attn, dim=-1)


for _fn in ("window_partition", "window_merge", "window_softmax"):
    fx.wrap(_fn)  # the size-dependent parts stay calls in a trace (their Python branches read sizes)


class WindowAttention(nn.Module):
    """torchvision's ``ShiftedWindowAttention`` (Swin V1) as ops torch.fx sees: ``window_partition``, the ``qkv``
    Linear, ``(q * d**-0.5) @ k^T`` plus the relative position bias, ``window_softmax``, dropout, ``@ v``, the
    ``proj`` Linear and ``window_merge``. Shares the original's modules and parameters under the same names, so
    its state dict is torchvision's."""

    def __init__(self, swa):
        super().__init__()
        self.window_size, self.shift_size = list(swa.window_size), list(swa.shift_size)
        self.num_heads = swa.num_heads
        self.qkv, self.proj = swa.qkv, swa.proj
        if isinstance(getattr(swa, "relative_position_bias_table", None), nn.Parameter):  # V1's (V2: an MLP)
            self.relative_position_bias_table = swa.relative_position_bias_table
        self.register_buffer("relative_position_index", swa.relative_position_index)
        self.attn_drop, self.proj_drop = nn.Dropout(swa.attention_dropout), nn.Dropout(swa.dropout)

    def relative_position_bias(self):
        tokens = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index]
        return bias.view(tokens, tokens, -1).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x):
        channels, tokens = self.qkv.in_features, self.window_size[0] * self.window_size[1]
        head_dim = channels // self.num_heads
        windows = window_partition(x, self.window_size, self.shift_size)
        qkv = self.qkv(windows).reshape(-1, tokens, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.matmul(q * head_dim**-0.5, k.transpose(-2, -1)) + self.relative_position_bias()
        attn = self.attn_drop(window_softmax(attn, x, self.window_size, self.shift_size))
        out = torch.matmul(attn, v).transpose(1, 2).reshape(-1, tokens, channels)
        return window_merge(self.proj_drop(self.proj(out)), x, self.window_size, self.shift_size)


def continuous_position_bias(coords, w0, b0, w2, index, tokens):
    """Swin V2's relative position bias, (1, heads, tokens, tokens): ``16 * sigmoid`` of its MLP (Linear, ReLU,
    Linear without bias) on the log-spaced coordinate table, gathered by the relative position index."""
    table = F.linear(F.relu(F.linear(coords, w0, b0)), w2).view(-1, w2.shape[0])
    bias = table[index].view(tokens, tokens, -1).permute(2, 0, 1).contiguous().unsqueeze(0)
    return 16 * torch.sigmoid(bias)


fx.wrap("continuous_position_bias")  # computed from parameters alone: one call, never a quantization site


class WindowAttentionV2(WindowAttention):
    """torchvision's ``ShiftedWindowAttentionV2`` as ops torch.fx sees: ``WindowAttention`` with cosine attention,
    ``normalize(q) @ normalize(k)^T`` times ``exp(min(logit_scale, log 100))``, and the position bias of
    ``continuous_position_bias``. Shares the original's parameters under the same names.

    torchvision zeroes the key part of the qkv bias at every forward (a zeroed copy); here the called ``qkv``
    Linear reads its bias, whose key part is zeroed once and kept zero (its gradient masked), which computes the
    same."""

    def __init__(self, swa):
        super().__init__(swa)
        self.logit_scale, self.cpb_mlp = swa.logit_scale, swa.cpb_mlp
        self.register_buffer("relative_coords_table", swa.relative_coords_table)
        if self.qkv.bias is not None:
            length = self.qkv.bias.numel() // 3
            keep = torch.ones_like(self.qkv.bias)
            keep[length:2 * length] = 0
            with torch.no_grad():
                self.qkv.bias.mul_(keep)
            self.qkv.bias.register_hook(lambda grad: grad * keep)
            self.register_load_state_dict_post_hook(lambda module, keys: module.qkv.bias.data.mul_(keep))

    def relative_position_bias(self):
        return continuous_position_bias(self.relative_coords_table, self.cpb_mlp[0].weight, self.cpb_mlp[0].bias,
                                        self.cpb_mlp[2].weight, self.relative_position_index,
                                        self.window_size[0] * self.window_size[1])

    def forward(self, x):
        channels, tokens = self.qkv.in_features, self.window_size[0] * self.window_size[1]
        windows = window_partition(x, self.window_size, self.shift_size)
        qkv = self.qkv(windows).reshape(-1, tokens, 3, self.num_heads, channels // self.num_heads)
        qkv = qkv.permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.matmul(F.normalize(q, dim=-1), F.normalize(k, dim=-1).transpose(-2, -1))
        attn = attn * torch.clamp(self.logit_scale, max=math.log(100.0)).exp() + self.relative_position_bias()
        attn = self.attn_drop(window_softmax(attn, x, self.window_size, self.shift_size))
        out = torch.matmul(attn, v).transpose(1, 2).reshape(-1, tokens, channels)
        return window_merge(self.proj_drop(self.proj(out)), x, self.window_size, self.shift_size)


def _window_attention_types():
    """{torchvision's Swin window attention class: our rewrite} (V2 derives from V1: matched by exact type)."""
    try:
        from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2
    except ImportError:
        return {}
    return {ShiftedWindowAttention: WindowAttention, ShiftedWindowAttentionV2: WindowAttentionV2}


def _swappable(mha):
    """None when ``SelfAttention`` computes what ``mha`` does, else why not."""
    if not mha._qkv_same_embed_dim:
        return "key/value dimensions differ from the embedding's"
    if mha.bias_k is not None or mha.add_zero_attn:
        return "bias_k/bias_v or add_zero_attn"
    return None


def swap_attention(model):
    """Replace every ``nn.MultiheadAttention`` of ``model`` that ``SelfAttention`` can compute, every Swin
    ``ShiftedWindowAttention`` by ``WindowAttention`` and every ``ShiftedWindowAttentionV2`` by
    ``WindowAttentionV2``; returns the names."""
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
    rewrites = _window_attention_types()
    for name, module in list(model.named_modules()):
        if type(module) in rewrites:
            model.set_submodule(name, rewrites[type(module)](module))
            swapped.append(name)
    return swapped
