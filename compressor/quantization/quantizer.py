"""Base quantizer: decides what to quantize from bits and overrides, then prepares the model.

Preparing traces the model with torch.fx, inserts one activation fake-quantizer
per site (see ``graph``) and registers a weight fake-quantizer as a
parametrization on each conv/linear weight, so the FP32 master weight stays the
only copy. Everything starts disabled: the model computes in FP32 until the
quantization policy enables it at its ``starting_epoch``.
"""

import dataclasses
import logging

from tabulate import tabulate
from torch import nn
from torch.nn.utils import parametrize

from compressor.core.spec import Bits, Bool, Config, Overrides, setting
from compressor.quantization.graph import capture
from compressor.quantization.graph import sites as graph
from compressor.quantization.overrides import OverrideTable, strip_parallel_prefix

log = logging.getLogger(__name__)

FP_BITS = 32  # Distiller's default bit width, meaning "not quantized"


def is_quantized(bits):
    return bits is not None and bits < FP_BITS


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantizerConfig(Config):
    """Settings every quantizer has: what to quantize at which width, and per-layer overrides."""

    bits_activations: int | None = setting(Bits(FP_BITS), "bits of activations; 32 or null keep FP32", layer=True)
    bits_weights: int | None = setting(Bits(FP_BITS), "bits of conv/linear/embedding weights", layer=True)
    bits_bias: int | None = setting(Bits(FP_BITS), "bits of biases", layer=True)
    overrides: dict | None = setting(Overrides(), "per-layer settings: module name or regex -> per-layer keys")
    split_gated_activations: bool = setting(
        Bool(True), "compute hardswish and SiLU as gate times input: the gate quantized on its own, the product on "
        "onnxruntime's integer QLinearMul (faster); false: each one op, in float between dequantize and quantize, "
        "one 8-bit rounding fewer (EfficientNet-B0 W8A8 on Fashion-MNIST: +0.49 pp)")


class Quantizer:
    """Base of every quantizer: subclasses declare ``CONFIG`` (their typed settings) and the factories
    ``make_activation_quantizer`` / ``make_weight_quantizer``; the hooks below are no-ops by default."""

    CONFIG = QuantizerConfig
    EXPORTABLE = False  # compressor.deploy converts its models to integer runtimes

    def __init__(self, model, optimizer=None, **kwargs):
        self.config = self.CONFIG.from_args(**kwargs)
        self.model = model
        self.optimizer = optimizer
        self.overrides = OverrideTable(self.config.overrides)
        self.activation_quantizers = {}  # site name -> module
        self.weight_quantizers = {}  # "module.param" -> module
        self.rows = []
        self.act_chains = {}
        self.relu_sites = set()  # sites whose fused chain ends in a ReLU
        self.prepared = None
        # the FP32 model's size, before preparation changes it (e.g. WRPN's widening)
        self.fp32_bits = FP_BITS * sum(p.numel() for p in model.parameters())

    # -- hooks a subclass may override -------------------------------------------
    def quantize_inputs(self):
        """Whether the model input is an activation site."""
        return True

    def schedule_epoch(self, epoch, policy_epochs):
        """Called at the start of each epoch of the quantizer's policy (INQ freezes weights here)."""

    @staticmethod
    def check_policy_epochs(args, epochs):
        """A message when the recipe's policy epochs do not fit the quantizer's arguments, else None."""
        return None

    def adapt_weights(self, state):
        """Weights loaded into the prepared model pass here first (WRPN widens narrow ones)."""
        return state

    def make_activation_quantizer(self, site, settings):
        raise NotImplementedError

    def make_weight_quantizer(self, module, pname, param, settings):
        raise NotImplementedError

    # -- per-layer settings ---------------------------------------------------
    def layer_settings(self, *names):
        """The config with the overrides of the first of ``names`` that an override governs."""
        for name in names:
            if self.overrides.match(name) is not None:
                return self.config.for_layer(self.overrides.lookup(name))
        return self.config

    @staticmethod
    def site_names(site):
        """Names an override may govern an activation site by: its own, its module's, its chain's head."""
        if site.name == "input":
            return ("input",)
        return (site.name, site.name.split("@")[0], site.head_name)

    def site_settings(self, site):
        """Settings of an activation site: its own name, its module's name, then its chain's head."""
        return self.layer_settings(*self.site_names(site))

    def site_override(self, site):
        """The override entry governing an activation site (empty when none does)."""
        for name in self.site_names(site):
            if self.overrides.match(name) is not None:
                return self.overrides.lookup(name)
        return {}

    # -- preparation --------------------------------------------------------------
    def prepare_model(self):
        """Return the prepared model (a GraphModule sharing the original's parameters)."""
        if self.prepared is not None:
            return self.prepared
        # quantizers without the setting quantize no activation (INQ: weights only): nothing to split for them
        if getattr(self.config, "split_gated_activations", False):
            capture.split_gated_activations(self.model)
        gm = graph.trace(self.model)
        sites = graph.find_activation_sites(gm, self.quantize_inputs())
        self.act_chains = {site.name: "->".join(site.chain) for site in sites}
        self.relu_sites = {site.name for site in sites if site.relu}
        self.activation_quantizers = graph.instrument(
            gm, sites, lambda site: self.make_activation_quantizer(site, self.site_settings(site))
        )
        for site in sites:  # softmax outputs on the grid ONNX Runtime's QLinearSoftmax computes (1 / n)
            quant = self.activation_quantizers.get(site.name)
            if graph.softmax_dim(gm, site.node) is not None and hasattr(quant, "reciprocal_scale"):
                quant.reciprocal_scale = True

        weight_rows = {}
        for name, module in graph.weight_modules(gm):
            settings = self.layer_settings(strip_parallel_prefix(name))
            for pname in ("weight", "bias"):
                param = getattr(module, pname, None)
                if not isinstance(param, nn.Parameter):
                    continue
                quant = self.make_weight_quantizer(module, pname, param, settings)
                if quant is None:
                    continue
                parametrize.register_parametrization(module, pname, quant, unsafe=True)
                self.weight_quantizers[f"{name}.{pname}"] = quant
                weight_rows.setdefault(name, {})[pname] = quant
        for key in self.overrides.unused():
            log.warning("override '%s' matches no module or activation of %s", key, type(self.model).__name__)

        self.rows = list(weight_rows.items())
        self.prepared = gm
        self._add_parameter_groups()
        return gm

    def _add_parameter_groups(self):
        """Parameters the quantizer created (PACT clip values, TTQ scales) join the optimizer,
        one group per kind with that kind's options (e.g. PACT's ``act_clip_decay``)."""
        groups = {}
        modules = list(self.activation_quantizers.values()) + list(self.weight_quantizers.values())
        for module in modules:
            options = module.param_group()
            params = [p for p in module.parameters(recurse=False)]
            if options and params:
                groups.setdefault(options["name"], (options, []))[1].extend(params)
        if self.optimizer is None:
            return
        for name, (options, params) in groups.items():
            self.optimizer.add_param_group({"params": params, **{k: v for k, v in options.items() if k != "name"}})
            log.debug("optimizer group '%s': %d parameters", name, len(params))

    # -- phases (driven by the quantization policy) -------------------------------------
    def set_state(self, enabled, observing):
        for q in list(self.activation_quantizers.values()) + list(self.weight_quantizers.values()):
            q.set_state(enabled, observing)

    def table(self):
        """Per-layer table of what is quantized and how, then the model size against FP32, for the log."""

        def describe(q):
            return "" if q is None else f"{q.bits} {q.METHOD}"

        lines = [(n, describe(qs.get("weight")), describe(qs.get("bias")), "") for n, qs in self.rows]
        lines += [(n, "", "", f"{describe(q)} ({self.act_chains[n]})") for n, q in self.activation_quantizers.items()]
        size, fp32 = self.model_size_bits(), self.fp32_bits
        text = tabulate(lines, headers=["name", "weights", "bias", "activations (fused chain)"])
        return text + (
            f"\nModel size: {size / 8 / 2**20:.3f} MiB ({size} bits) vs FP32 {fp32 / 8 / 2**20:.3f} MiB: "
            f"{fp32 / max(size, 1):.2f}x smaller"
        )

    def model_size_bits(self):
        """Bits to store the parameters: quantized weights at their bits, everything else at 32."""
        quantized = {}
        for name, qs in self.rows:
            for pname, q in qs.items():
                quantized[f"{name}.parametrizations.{pname}.original"] = q.bits
        total = 0
        for name, p in self.prepared.named_parameters():
            total += p.numel() * quantized.get(name, FP_BITS)
        return total

    def _state_config(self):
        return self.config.to_dict(with_sources=False)

    def state_dict(self):
        """Plain data: the configuration the quantizer was built from (the rest lives in the model)."""
        return {"class": type(self).__name__, "config": self._state_config()}

    def load_state_dict(self, state):
        """Refuse a checkpoint made with another quantizer or other settings: its ranges would not fit."""
        if state.get("class") != type(self).__name__:
            raise ValueError(
                f"the checkpoint was quantized by {state.get('class')}, the recipe uses {type(self).__name__}"
            )
        saved = {k: v for k, v in state.get("config", {}).items() if k not in self.CONFIG.SOURCE_KEYS}
        mine = self._state_config()
        differ = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
        if differ:
            details = ", ".join(
                f"{k}: {saved.get(k)!r} in the checkpoint, {mine.get(k)!r} in the recipe" for k in differ
            )
            raise ValueError(f"the recipe's quantizer settings differ from the checkpoint's ({details})")
