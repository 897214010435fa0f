"""Post-training range-based linear quantization (Distiller's ``PostTrainLinearQuantizer``).

Flow: ``prepare_model()`` folds batch-norm into the preceding layers and places fake-quantizers;
then either ``calibrate(loader)`` (collect statistics, and histograms if a clip method needs
them) or ``model_activation_stats`` fixes every activation range; without either, ranges are
taken from each batch at run time (online / dynamic quantization, adds and concats included).
"""

import dataclasses
import logging
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from compressor.calibration.clipping import ClipConfig, ClipMethod, parse_clip
from compressor.calibration.stats_file import load_stats, match_stats
from compressor.calibration.stats_names import aliases
from compressor.core.errors import RangeError
from compressor.core.spec import Bits, Bool, OptionalBool, OptionalInt, StatsSource, setting
from compressor.quantization import graph
from compressor.quantization.collect import collect_stats
from compressor.quantization.fake_quant import ActivationFakeQuant
from compressor.quantization.graph.equalize import EqualizationConfig, cross_layer_equalization
from compressor.quantization.graph.fold_bn import fold_batchnorm
from compressor.quantization.linear.dynamic_clip import DynamicClipFakeQuant
from compressor.quantization.linear.input_quant import (
    InputOverrides,
    add_input_quantizers,
    input_explicitly_set,
    model_input_settings,
    observe_layer_inputs,
)
from compressor.quantization.linear.integer_sim import (
    IntegerArithmetic,
    accumulator_bits,
    grid_source,
    install_integer_adds,
    set_integer_evaluation,
)
from compressor.quantization.linear.qat import LinearConfig, make_linear_weight_quantizer
from compressor.quantization.linear.refine import RefineConfig
from compressor.quantization.linear.smoothquant import (
    SmoothQuantConfig,
    channel_maxima,
    fp32_weight,
    migrate,
    norm_linear_groups,
)
from compressor.quantization.quantizer import FP_BITS, Quantizer, is_quantized

_PTQ_BITS = dict(lo=2, hi=16, fp_values=(FP_BITS,))
log = logging.getLogger(__name__)

# The model input and the logits keep their observed [min, max] whatever ``clip_acts`` says, unless an
# override names ``clip_acts`` for that site (as Distiller's --qe-no-clip-layers input fc, by default).
# Clipping the input is what made KL collapse on digits (W8A8 81.4 % vs 98.9 % FP32, 99.4 % unclipped:
# the entropy threshold falls just above the background spike and cuts the strokes); the logits'
# largest value is the decision. See docs/results.md.
UNCLIPPED_BY_DEFAULT = "the model input and the logits"


@dataclasses.dataclass(frozen=True, kw_only=True)
class PTQConfig(LinearConfig, ClipConfig, RefineConfig, EqualizationConfig, SmoothQuantConfig):
    # refine.py: AdaRound, bias correction; graph/equalize.py: DFQ; smoothquant.py: SmoothQuant
    """Distiller's PostTrainLinearQuantizer arguments (``bits_parameters``; ``bits_weights`` is its per-layer alias)."""

    SOURCE_KEYS: ClassVar[tuple] = ("model_activation_stats",)  # the ranges themselves live in the model's state

    bits_activations: int | None = setting(Bits(8, **_PTQ_BITS), "bits of activations; 32 or null keep FP32",
                                           layer=True)
    bits_parameters: int | None = setting(Bits(8, **_PTQ_BITS), "bits of weights (Distiller's name)")
    bits_weights: int | None = setting(Bits(None, **_PTQ_BITS), "bits of weights; defaults to bits_parameters "
                                       "(overrides use this name)", layer=True)
    bits_bias: int | None = setting(Bits(FP_BITS, lo=FP_BITS, hi=FP_BITS, fp_values=(FP_BITS,)),
                                    "always 32: biases join the 32-bit accumulator")
    bits_accum: int = setting(Bits(32, lo=8, hi=64, fp_values=()), "accumulator width of the integer arithmetic",
                              layer=True)
    model_activation_stats: str | dict | None = setting(StatsSource(None), "activation statistics (Distiller's stats "
                                                        "YAML or a mapping) that fix every range")
    scale_approx_mult_bits: int | None = setting(OptionalInt(None, lo=2, hi=32), "requantization multiplier as a "
                                                 "fixed-point integer of this many bits (null: exact float)")
    power_of_two_scales: bool = setting(Bool(False), "round requantization scales to powers of two (shifts only)")
    integer_arithmetic: bool | None = setting(
        OptionalBool(None), "evaluate conv/linear, adds, muls, global pooling and sigmoid in integer arithmetic as the "
        "integer runtime computes them (saturating accumulator) rather than in float fake quantization: 0.04 pp "
        "apart on Fashion-MNIST (99.85 % of predictions equal), at 2.6x the FP32 evaluation's cost instead of "
        "1.2x. null: only when bits_accum is below 32, "
        "scale_approx_mult_bits or power_of_two_scales is set (they act in integer arithmetic only). The export's "
        "agreement check always uses it")
    inputs_quant_auto_fallback: bool = setting(Bool(True), "the model input, when no input_overrides say how: "
                                               "quantized with its reader's output settings (true) or an error (false)")
    quantize_inputs: bool = setting(Bool(True), "quantize the model input; per layer: whether input_overrides and "
                                    "the fallback may quantize that layer's inputs", layer=True)
    input_overrides: dict | None = setting(InputOverrides(None), "per layer: how its inputs that no previous layer "
                                           "quantized are quantized ({0: {from_output: true}} or settings)",
                                           layer=True)
    fold_bn: bool = setting(Bool(True), "fold batch-norm into the preceding conv/linear first")
    clip_keep_avg_from_bits: int | None = setting(
        OptionalInt(8, lo=2, hi=32), "from this many activation bits, a clipped range still covers [avg_min, "
        "avg_max] (keep_avg_range); null: each method's own range", layer=True)

    def cross_check(self):
        issues = list(super().cross_check())
        if self.integer_arithmetic is False:
            for key in ("scale_approx_mult_bits", "power_of_two_scales"):
                if getattr(self, key):
                    issues.append((key, "acts in integer arithmetic only: set integer_arithmetic: true or leave it "
                                   "null (then it is on)"))
        if self.cross_layer_equalization and not self.fold_bn:
            issues.append(("cross_layer_equalization", "needs fold_bn: true (a batch-norm between two layers "
                           "would undo the rescaling)"))
        return issues

    def resolve(self):
        if self.bits_weights is None and self.bits_parameters is not None:
            return dataclasses.replace(self, bits_weights=self.bits_parameters)
        return self


def keep_avg_range(record, lo, hi):
    """Widen a clipped range to cover [avg_min, avg_max]: a clip method may cut outliers, not the value the
    average calibration image reaches. N_STD, GAUSS and KL model the bulk of a tensor; on sparse post-ReLU
    activations (Fashion-MNIST's resnet20_cifar: max = 12-18 std at every ReLU) they clipped each ReLU
    at 20-30 % of its max and lost 7.8 / 1.7 / 3.5 pp at W8A8. Applied from 8 activation bits
    (``clip_keep_avg_from_bits``): at 8 bits the wider range costs little resolution, while at 4 bits
    tight clipping is what KL and MSE are for (kept to [avg_min, avg_max] they fell from 84.3 / 82.7 %
    to 72.8 / 73.7 % on 1,000 test images). docs/results.md has the numbers."""
    return min(lo, record["avg_min"]), max(hi, record["avg_max"])


class PostTrainLinearQuantizer(Quantizer):
    CONFIG = PTQConfig
    EXPORTABLE = True

    def __init__(self, model, optimizer=None, **kwargs):
        super().__init__(model, optimizer, **kwargs)
        self.site_config = {}  # site name -> settings used for its range
        self.ranges = {}
        self.folded_bn = {}  # layer -> its folded batch-norm, whose stats record the layer takes
        self.equalization = None  # cross-layer equalization's report, when the recipe asks for it
        self.smoothquant = None  # SmoothQuant's report (per LayerNorm), once calibration applied it

    def quantize_inputs(self):
        return self.config.quantize_inputs

    def prepare_model(self):
        if self.prepared is None and self.config.fold_bn:
            original, self.model = self.model, fold_batchnorm(self.model, self.folded_bn)
            if self.config.cross_layer_equalization:
                self.equalization = self._equalize(original)
        first = self.prepared is None
        gm = super().prepare_model()
        if not first:
            return gm
        self._add_input_quantizers(gm)
        self.set_state(True, False)  # post-training: quantized, nothing learns
        # installed always (the export's agreement check computes with it); on in evaluation as integer_arithmetic says
        self.integer_layers = self._install_integer_arithmetic(gm)
        self.integer_adds = install_integer_adds(gm)
        self.integer_evaluation = self._integer_evaluation()
        hooks = len(set_integer_evaluation(gm, self.integer_evaluation))
        log.info("Quantized evaluation in %s (%d integer-arithmetic sites installed for the export's agreement "
                 "check%s)", "integer arithmetic" if self.integer_evaluation else "float fake quantization",
                 hooks, "" if self.integer_evaluation else "; integer_arithmetic: true evaluates with them")
        stats = self.config.model_activation_stats
        if stats is not None and self.config.smoothquant_alpha is not None:
            raise RangeError("smoothquant_alpha needs calibration images (the LayerNorm outputs' channel maxima); a "
                             "statistics file holds per-tensor ranges only: calibrate instead")
        if stats is not None:
            records = load_stats(stats)
            sites = list(self.activation_quantizers)
            modules = {name for name, _ in self.model.named_modules()}
            chains = {name: tuple(chain.split("->")) for name, chain in self.act_chains.items()}
            self.apply_stats(match_stats(records, sites, modules, where="model_activation_stats", chains=chains,
                                         folded=self.folded_bn, relus=self.relu_sites))
        self.accumulator_report()
        return gm

    def _equalize(self, original):
        """DFQ's cross-layer equalization (and high-bias absorption) on the folded model; logs its report."""
        report = cross_layer_equalization(
            self.model, original, self.folded_bn, relu6=self.config.equalization_relu6.lower(),
            absorb_bias=self.config.high_bias_absorption, n_std=self.config.high_bias_absorption_n_std)
        before, after = report["largest_range_ratio"]
        log.info("Cross-layer equalization: %d layer pairs, %d iterations; largest max/min channel weight range of a "
                 "first layer %.1f -> %.1f; %d ReLU6 replaced by ReLU; high bias absorbed in %d channels",
                 len(report["pairs"]), report["iterations"], before, after,
                 len(report["relu6_replaced"]), sum(report["high_bias_absorbed"].values()))
        return report

    def _install_integer_arithmetic(self, gm):
        """Hook integer arithmetic onto each conv/linear whose input, weights and output are quantized."""
        calls = {}
        for node in gm.graph.nodes:
            if node.op == "call_module":
                calls.setdefault(node.target, []).append(node)
        installed = []
        traced = graph.trace(self.model)
        for site in graph.find_activation_sites(traced, self.config.quantize_inputs):
            layer_name = site.head_name
            nodes = calls.get(layer_name, [])
            out_q = self.activation_quantizers.get(site.name)
            w_q = self.weight_quantizers.get(f"{layer_name}.weight")
            if len(nodes) != 1 or out_q is None or w_q is None or len(site.chain) > 2:
                continue
            # conv -> ReLU (a module or F.relu, as GoogLeNet's BasicConv2d) ends on the chain's last node
            if len(site.chain) == 2 and graph.node_kind(traced, site.node) != "act":
                continue
            src = grid_source(gm, nodes[0].args[0])
            if src is None:
                continue
            layer = gm.get_submodule(layer_name)
            settings = self.layer_settings(layer_name)
            hook = IntegerArithmetic(w_q, gm.get_submodule(src.target), out_q, settings.bits_accum,
                                     self.config.scale_approx_mult_bits, self.config.power_of_two_scales)
            hook.attach(layer)
            installed.append(layer_name)
        return installed

    def _integer_evaluation(self):
        """integer_arithmetic, or when null: on only where the recipe asks for what float fake quantization does
        not compute (a narrow accumulator, fixed-point or power-of-two requantization)."""
        if self.config.integer_arithmetic is not None:
            return self.config.integer_arithmetic
        return bool(self.config.scale_approx_mult_bits or self.config.power_of_two_scales
                    or any(self.layer_settings(name).bits_accum < 32 for name in self.integer_layers))

    def site_settings(self, site):
        if site.name == "input":  # Distiller's input_overrides / inputs_quant_auto_fallback of the layer reading it
            return model_input_settings(self, site)
        for alias in aliases(site.name):  # an override keyed by Distiller's name (layer4.1.relu2 for relu@1)
            if self.overrides.match(alias) == alias and self.overrides.match(site.name) != site.name:
                return self.layer_settings(alias)
        return super().site_settings(site)

    def _add_input_quantizers(self, gm):
        """Quantizers on layer inputs that input_overrides name and no previous layer quantizes."""
        added = add_input_quantizers(self, gm, lambda settings: self._fake_quant(settings))
        for name, (module, settings) in added.items():
            self.activation_quantizers[name] = module
            self.site_config[name] = settings
            self.act_chains[name] = name

    def make_activation_quantizer(self, site, settings):
        if not is_quantized(settings.bits_activations):
            return None
        if graph.is_model_boundary(site) and not self._clip_named(site):
            settings = dataclasses.replace(settings, clip_acts="NONE")  # see UNCLIPPED_BY_DEFAULT
        self.site_config[site.name] = settings
        return self._fake_quant(settings)

    def _clip_named(self, site):
        """Whether the recipe itself sets this site's clipping: an override naming clip_acts for it, or, for the
        model input, input_overrides on the layer reading it (Distiller's from_output or explicit settings)."""
        if "clip_acts" in self.site_override(site):
            return True
        return site.name == "input" and input_explicitly_set(self, site)

    def _fake_quant(self, settings):
        if not is_quantized(settings.bits_activations):
            return None
        if parse_clip(settings.clip_acts) is ClipMethod.NONE:
            return ActivationFakeQuant(settings.bits_activations, settings.acts_mode, dynamic=True)
        # without statistics the clip method applies to each batch's range (Distiller's dynamic mode)
        return DynamicClipFakeQuant(settings.bits_activations, settings.acts_mode, settings.clip_acts,
                                    settings.clip_n_stds, settings.clip_half_range)

    def make_weight_quantizer(self, module, pname, param, settings):
        if pname != "weight" or not is_quantized(settings.bits_weights):
            return None
        return make_linear_weight_quantizer(module, param, settings.bits_weights, settings)

    # -- calibration -----------------------------------------------------------------
    def needs_histograms(self):
        return any(cfg.needs_histogram for cfg in self.site_config.values())

    def calibrate(self, loader, device="cpu", max_batches=None):
        """Collect statistics on the (folded) model in one pass (+1 for histograms) and fix every range."""

        self._smooth(loader, device, max_batches)
        hist = self.needs_histograms()
        with observe_layer_inputs(self.model, self.activation_quantizers, hist) as inputs:  # input_overrides
            records, hists = collect_stats(self.model, loader, device, max_batches, histograms=hist,
                                           quantize_inputs=self.config.quantize_inputs)
        records.update({name: obs.stats.record() for name, obs in inputs.items()})
        if hist:
            hists.update({name: obs.histogram for name, obs in inputs.items()})
        self.apply_stats(records, hists)
        return records

    def _smooth(self, loader, device, max_batches):
        """SmoothQuant before the ranges are taken: channel maxima of LayerNorm outputs on the FP32 model (every
        quantizer off), the scales migrated into the linear layers, their weight grids taken again."""
        groups = [(norm, linears) for norm, linears in norm_linear_groups(self.model)
                  if self.layer_settings(norm).smoothquant_alpha is not None]
        if not groups or self.smoothquant is not None:
            return
        self.set_state(False, False)
        try:
            maxima = channel_maxima(self.model, [norm for norm, _ in groups], loader, device, max_batches)
        finally:
            self.set_state(True, False)
        self.smoothquant = migrate(self.model, groups, maxima, lambda n: self.layer_settings(n).smoothquant_alpha)
        for _, linears in groups:
            for name in linears:
                wq = self.weight_quantizers.get(f"{name}.weight")
                if wq is not None:
                    wq.observe(fp32_weight(self.model.get_submodule(name)))
        worst = max(self.smoothquant.values(), key=lambda r: r["act_max_ratio_before"])
        log.info("SmoothQuant: %d LayerNorms scaled into %d linear layers; largest channel max / median channel max "
                 "of a LayerNorm output %.1f -> %.1f", len(self.smoothquant),
                 sum(len(r["linears"]) for r in self.smoothquant.values()), worst["act_max_ratio_before"],
                 worst["act_max_ratio_after"])

    def apply_stats(self, records, histograms=None):
        for name, fq in self.activation_quantizers.items():
            cfg = self.site_config[name]
            try:
                lo, hi = cfg.range_for(records[name], fq.bits, cfg.acts_mode.symmetric,
                                       histograms.get(name) if histograms else None)
            except RangeError as exc:
                raise RangeError(f"statistics of {name}: {exc}") from None
            if cfg.clip_keep_avg_from_bits is not None and fq.bits >= cfg.clip_keep_avg_from_bits:
                lo, hi = keep_avg_range(records[name], lo, hi)
            fq.dynamic = False
            fq.set_range(lo, hi)
            self.ranges[name] = (float(lo), float(hi))

    # -- reports -------------------------------------------------------------------------
    def accumulator_report(self):
        """Per layer: accumulator width needed (2n + ceil(log2(c*k*k))) against bits_accum; warns when too narrow."""
        rows = []
        for name, module in graph.weight_modules(self.prepared):
            if not isinstance(module, graph.LAYER_TYPES):
                continue
            settings = self.layer_settings(name)
            w_bits, a_bits = settings.bits_weights, settings.bits_activations
            if not (is_quantized(w_bits) and is_quantized(a_bits)):
                continue
            w = fp32_weight(module)
            fan_in = w[0].numel() if not isinstance(module, nn.Linear) else w.shape[1]
            needed = accumulator_bits(w_bits, a_bits, fan_in)
            rows.append((name, needed, settings.bits_accum))
            if needed > settings.bits_accum:
                log.warning("accumulator of %s needs %d bits (2n + log2(fan-in %d)), bits_accum is %d: it may overflow",
                            name, needed, fan_in, settings.bits_accum)
        self.accumulator_rows = rows
        return rows

    def layer_params(self):
        """Per-layer parameters for ``layer_quant_params.yaml`` (Distiller's scale convention noted)."""
        with torch.no_grad():  # a weight's scale is set when the parametrization first runs: before any forward
            for _, module in graph.weight_modules(self.prepared):  # pass (--qe-dynamic) it was still 1.0 / 0
                if parametrize.is_parametrized(module, "weight"):
                    module.weight  # noqa: B018 (computing the parametrized weight observes it)
        out = {}
        for name, fq in self.activation_quantizers.items():
            cfg = self.site_config[name]
            out.setdefault(name, {}).update({
                "bits_activations": fq.bits, "mode_activations": fq.mode.name, "clip_acts": str(cfg.clip_acts).upper(),
                "clip_range": list(self.ranges.get(name, (None, None))) if name in self.ranges else "dynamic",
                "scale": float(fq.scale.item()), "zero_point": int(fq.zero_point.item()),
            })
        for key, wq in self.weight_quantizers.items():
            name = key.rsplit(".", 1)[0]
            out.setdefault(name, {}).update({
                "bits_weights": wq.bits, "mode_weights": wq.mode.name, "per_channel_wts": wq.per_channel,
                "weight_scale": [float(v) for v in wq.scale.tolist()],
                "weight_zero_point": [int(v) for v in wq.zero_point.tolist()],
            })
        for name, _ in graph.weight_modules(self.prepared):
            out.setdefault(name, {}).setdefault("bits_weights", None)  # null: the layer's weights stay FP32
        return out

