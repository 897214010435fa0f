"""Distiller's per-layer input quantization: ``input_overrides``, ``quantize_inputs`` and
``inputs_quant_auto_fallback`` (its ``..._input_overrides.yaml`` example).

Here a layer's input is quantized by whoever produced it: the output quantizer of the site before
it, or the ``input`` site for the model input. Distiller's keys act where an input has no such
producer:

- the model input: with ``input_overrides: {0: {from_output: true}}`` (or explicit keys) on the
  layer that reads it, the ``input`` site takes those settings; without them,
  ``inputs_quant_auto_fallback: true`` quantizes it with that layer's output settings (Distiller's
  fallback, ``clip_half_range`` off) and ``false`` is an error, as in Distiller; a per-layer
  ``quantize_inputs: false`` leaves it in FP32.
- an input produced by an op that is no quantized site (e.g. the average pooling + flatten before a
  ResNet's ``fc``): ``input_overrides`` on the layer inserts a quantizer on that input, calibrated
  like every other (``layer#input`` in statistics files, Distiller's ``inputs: {0: ...}``). Without
  ``input_overrides`` such inputs stay as they are (unlike Distiller's fallback, which would quantize
  them: that would change every existing post-training result; see docs/distiller.md).
- an input that is already quantized takes no ``input_overrides``: an error, as in Distiller.
"""

import dataclasses
import re

import torch

from compressor.calibration.stats import StatsObserver
from compressor.core.errors import CompressorError
from compressor.core.spec import Spec
from compressor.quantization import graph
from compressor.quantization.quantizer import is_quantized

INPUT_KEYS = ("bits_activations", "mode", "clip_acts", "clip_n_stds")
# ops that move values without changing them: an input read through them is still quantized
_PASS_METHODS = {"view", "reshape", "flatten", "contiguous", "squeeze", "unsqueeze", "permute", "transpose"}
_PASS_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
_PASS_MODULES = (
    torch.nn.Flatten,
    torch.nn.Identity,
    torch.nn.Dropout,
    torch.nn.MaxPool1d,
    torch.nn.MaxPool2d,
    torch.nn.MaxPool3d,
)


class InputOverrideError(CompressorError):
    """``input_overrides`` / ``inputs_quant_auto_fallback`` that cannot apply to this model."""


class InputOverrides(Spec):
    """``{input index: {from_output: true} or {bits_activations, mode, clip_acts, clip_n_stds}}``."""

    def __init__(self, default=None):
        super().__init__(default)

    def check(self, value):
        if value is None:
            return None
        if not isinstance(value, dict):
            return "expected a mapping of input index -> settings"
        for idx, settings in value.items():
            if not (isinstance(idx, int) or (isinstance(idx, str) and idx.isdigit())):
                return f"input index {idx!r}: expected an integer"
            if not isinstance(settings, dict):
                return f"input {idx}: expected a mapping of settings"
            unknown = sorted(set(settings) - set(INPUT_KEYS) - {"from_output"})
            if unknown:
                return f"input {idx}: unknown keys {unknown}; expected from_output or {list(INPUT_KEYS)}"
        return None

    def describe(self):
        return "{index: {from_output: true} or bits_activations/mode/clip_acts/clip_n_stds}"


def input_settings(layer_cfg, override):
    """The settings quantizing a layer's input: its output settings, changed as ``override`` says."""
    cfg = dataclasses.replace(layer_cfg, clip_half_range=False)
    if override is None or override.get("from_output"):
        return cfg
    changes = {k: v for k, v in override.items() if k in INPUT_KEYS}
    if "mode" in changes:
        changes["mode"] = {"activations": changes["mode"], "weights": _wts_mode(layer_cfg.mode)}
    return cfg.for_layer(changes)


def _wts_mode(mode):
    return mode.get("weights", "SYMMETRIC") if isinstance(mode, dict) else mode


def _override(cfg, idx=0):
    overrides = cfg.input_overrides or {}
    return overrides.get(idx, overrides.get(str(idx)))


def input_explicitly_set(quantizer, site):
    """True when the layer reading the model input has ``input_overrides`` for it (the user chose its settings)."""
    readers = [u for u in site.node.users if u.op == "call_module"]
    return bool(readers) and _override(quantizer.layer_settings(readers[0].target)) is not None


def model_input_settings(quantizer, site):
    """Settings of the ``input`` site (None: leave the model input in FP32)."""
    if quantizer.overrides.match("input") is not None:
        return quantizer.layer_settings("input")
    readers = [u for u in site.node.users if u.op == "call_module"]
    if not readers:
        return quantizer.layer_settings("input")
    name = readers[0].target
    cfg = quantizer.layer_settings(name)
    override = _override(cfg)
    if not cfg.quantize_inputs or not is_quantized(cfg.bits_activations):
        return dataclasses.replace(cfg, bits_activations=None)
    if override is None and not quantizer.config.inputs_quant_auto_fallback:
        raise InputOverrideError(
            f"{name}: its input 0 (the model input) is not quantized by a previous layer and "
            "inputs_quant_auto_fallback is false: give it input_overrides {0: {from_output: true}} (or settings), "
            "set inputs_quant_auto_fallback true, or quantize_inputs false"
        )
    return input_settings(cfg, override)


def _source(node):
    """The node whose values ``node`` passes on unchanged (through flatten, view, max-pool, ...)."""
    while isinstance(node, torch.fx.Node):
        if node.op == "call_method" and node.target in _PASS_METHODS:
            node = node.args[0]
        elif node.op == "call_function" and node.target in _PASS_FUNCTIONS:
            node = node.args[0]
        elif node.op == "call_module" and isinstance(
            node.graph.owning_module.get_submodule(node.target), _PASS_MODULES
        ):
            node = node.args[0]
        else:
            return node
    return node


def add_input_quantizers(quantizer, gm, make):
    """Insert a quantizer on each layer input that ``input_overrides`` names and no quantizer covers.

    ``make(settings)`` builds the quantizer; returns {``layer#input``: (module, settings)}.
    """
    added = {}
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), graph.LAYER_TYPES):
            continue
        cfg = quantizer.layer_settings(node.target)
        override = _override(cfg)
        if override is None or not cfg.quantize_inputs or not is_quantized(cfg.bits_activations):
            continue
        extra = sorted(int(i) for i in cfg.input_overrides if int(i) != 0)
        if extra:
            raise InputOverrideError(
                f"{node.target}: input_overrides for input {extra[0]}, but a "
                f"{type(gm.get_submodule(node.target)).__name__} has one input (0)"
            )
        src = _source(node.args[0])
        if src.op == "call_module" and src.target.startswith("activation_quantizers."):
            if src.target == "activation_quantizers.input":
                continue  # the model input: its site took these settings (model_input_settings)
            raise InputOverrideError(
                f"{node.target}: input 0 is already quantized (by the output of the op "
                f"before it); input_overrides apply only to inputs that are not (as in Distiller)"
            )
        settings = input_settings(cfg, override)
        module = make(settings)
        if module is None:
            continue
        attr = "activation_quantizers." + re.sub(r"[^0-9a-zA-Z_]", "_", f"{node.target}#input")
        _insert_on_input(gm, node, attr, module)
        added[f"{node.target}#input"] = (module, settings)
    if added:
        gm.recompile()
    return added


def _insert_on_input(gm, node, attr, module):
    gm.add_submodule(attr, module)
    with gm.graph.inserting_before(node):
        new = gm.graph.call_module(attr, (node.args[0],))
    node.args = (new,) + tuple(node.args[1:])
    return new


def _recorder(observer):
    def record(module, args):
        observer(args[0])  # returns None: the input passes unchanged

    return record


class observe_layer_inputs:
    """While active, records input 0 of each named layer of ``model`` (for ``layer#input`` quantizers),
    in the same calibration pass as the sites: {``layer#input``: StatsObserver}."""

    def __init__(self, model, site_names, histograms=False):
        self.model, self.histograms = model, histograms
        self.layers = [n[: -len("#input")] for n in site_names if n.endswith("#input")]
        self.observers, self.hooks = {}, []

    def __enter__(self):
        for layer in self.layers:
            observer = StatsObserver(self.histograms)
            self.observers[f"{layer}#input"] = observer
            self.hooks.append(self.model.get_submodule(layer).register_forward_pre_hook(_recorder(observer)))
        return self.observers

    def __exit__(self, *exc):
        for hook in self.hooks:
            hook.remove()
        return False
