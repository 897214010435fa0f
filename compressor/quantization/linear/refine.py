"""Weight refinement after calibration: AdaRound and empirical bias correction, layer by layer.

Both run on a prepared, calibrated ``PostTrainLinearQuantizer`` and walk its conv/linear layers in
execution order. For each layer they take its inputs from the quantized-so-far model (every layer
before it already refined, activations quantized: the errors a layer really sees) and its outputs
from the FP32 model (quantizers off) on the same calibration images. Both models run once, node by
node in step (``lockstep``), refining each layer when the quantized pass reaches it, instead of two
passes from the input per layer.

- AdaRound (``adaround: true``, see ``adaround.py``) learns the rounding of the layer's weights and
  writes the dequantized learned integers into the FP32 master weight, exactly on the weight
  quantizer's grid (its scale and zero point are frozen), so fake quantization, the integer
  simulation and the export all read back the same integers.
- Bias correction (``bias_correction: true``, empirical, as in Nagel et al. 2019 "Data-Free
  Quantization", sec. 4.2 with data) subtracts from the layer's FP32 bias, per output channel, the
  mean shift ``E[y_quantized] - E[y_fp32]`` of its pre-activation output on the calibration data.
  After it, that mean shift is zero on those images.

Recipe keys (``PostTrainLinearQuantizer`` options, declared in ``RefineConfig``)::

    adaround: true
    adaround_iterations: 1000      # Adam steps per layer (the paper uses 10k; 1k recovers most on small nets)
    adaround_reg_weight: 0.01      # lambda of the rounding regularizer
    adaround_beta_start: 20        # regularizer's beta, annealed linearly ...
    adaround_beta_end: 2           # ... to this, after
    adaround_warmup: 0.2           # the fraction of iterations without regularizer
    adaround_lr: 0.01              # the paper's 1e-3 suits 10k+ steps; at 1k, 1e-2 (3-bit conv: error 0.0068 vs 0.019)
    adaround_batch_size: 32
    bias_correction: true
"""

import contextlib
import dataclasses
import logging
import time

import torch
from tabulate import tabulate
from torch import fx

from compressor.core.progress import progress
from compressor.core.spec import Bool, Config, Float, Int, setting
from compressor.quantization.linear.adaround import (
    adaround_layer,
    grid_view,
    layer_output,
    nearest_integers,
    reconstruction_error,
)
from compressor.quantization.linear.gptq import gptq_integers, gptq_supported, input_hessian
from compressor.quantization.linear.integer_sim import integer_evaluation

log = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True, kw_only=True)
class RefineConfig(Config):
    """Weight refinement after calibration (PostTrainLinearQuantizer keys)."""

    adaround: bool = setting(Bool(False), "learn each weight's rounding up or down (AdaRound) from the layer's output "
                             "error on the calibration images")
    adaround_iterations: int = setting(Int(1000, lo=1, hi=10**7), "AdaRound: Adam steps per layer")
    adaround_reg_weight: float = setting(Float(0.01, lo=0.0), "AdaRound: weight of the rounding regularizer "
                                         "sum(1 - |2h(V) - 1|^beta)")
    adaround_beta_start: float = setting(Float(20.0, lo=0.0, lo_open=True), "AdaRound: the regularizer's beta after "
                                         "the warm-up, annealed linearly ...")
    adaround_beta_end: float = setting(Float(2.0, lo=0.0, lo_open=True), "... to this at the last step")
    adaround_warmup: float = setting(Float(0.2, lo=0.0, hi=1.0, hi_open=True), "AdaRound: fraction of the steps "
                                     "without the regularizer")
    adaround_lr: float = setting(Float(1e-2, lo=0.0, lo_open=True), "AdaRound: Adam's learning rate on V (the "
                                 "paper's 1e-3 is meant for 10k+ steps)")
    adaround_batch_size: int = setting(Int(32, lo=1), "AdaRound: calibration images per step")
    bias_correction: bool = setting(Bool(False), "subtract each layer's mean output shift (quantized vs FP32) on the "
                                    "calibration images from its bias")
    gptq: bool = setting(Bool(False), "round each layer's weights with GPTQ's second-order error feedback (instead of "
                         "to nearest; not with adaround)")
    gptq_damp: float = setting(Float(0.01, lo=0.0), "GPTQ: dampening added to the Hessian's diagonal, as a fraction "
                               "of its mean")
    gptq_block_size: int = setting(Int(128, lo=1), "GPTQ: columns updated together (lazy batch updates)")

    def cross_check(self):
        issues = list(super().cross_check())
        if self.adaround and self.gptq:
            issues.append(("gptq", "choose one of adaround and gptq: both round the same weights"))
        return issues


REFINE_KEYS = tuple(RefineConfig.settings())

_ADAROUND_TYPES = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)


class _Stop(Exception):
    """Raised by a capture hook: the rest of the forward pass is not needed."""


def wants_refinement(config):
    return bool(config.get("adaround") or config.get("bias_correction") or config.get("gptq"))


def refined_layers(quantizer):
    """(name, layer, weight quantizer) of each conv/linear with quantized weights, in execution order."""
    gm = quantizer.prepared
    seen, out = set(), []
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target in seen:
            continue
        wq = quantizer.weight_quantizers.get(f"{node.target}.weight")
        layer = gm.get_submodule(node.target)
        if wq is not None and isinstance(layer, _ADAROUND_TYPES):
            seen.add(node.target)
            out.append((node.target, layer, wq))
    return out


@torch.no_grad()
def lockstep(quantizer, images, originals):
    """Yield (name, layer, weight quantizer, inputs from the quantized model, outputs of the FP32 model) for each
    refined layer in execution order, from one FP32 and one quantized pass over ``images``, node by node.

    The caller refines the layer before asking for the next one: the quantized pass then goes on through the
    refined layer, so each layer sees what the layers refined before it produce. The FP32 pass reads a layer's
    weights before they change (and ``originals`` when a layer is called again). Both passes use float32 fake
    quantization, as ``capture``. Running the network from the input twice per layer instead is quadratic in depth.
    """
    gm = quantizer.prepared
    pending = {name: (layer, wq) for name, layer, wq in refined_layers(quantizer)}
    done = []
    fp32, quant = fx.Interpreter(gm), fx.Interpreter(gm)
    fp32.args_iter, quant.args_iter = iter([images.clone()]), iter([images])  # an in-place op must not reach both
    try:
        with integer_evaluation(gm, False):
            for node in gm.graph.nodes:
                if node.op == "output":
                    break
                quantizer.set_state(False, False)
                again = node.op == "call_module" and any(name == node.target for name, _, _ in done)
                with original_parameters(done, originals) if again else contextlib.nullcontext():
                    fp32.env[node] = fp32.run_node(node)
                quantizer.set_state(True, False)  # the caller refines against the quantized weights
                if node.op == "call_module" and node.target in pending:
                    layer, wq = pending.pop(node.target)
                    yield node.target, layer, wq, quant.env[node.args[0]].detach(), fp32.env[node].detach()
                    done.append((node.target, layer, wq))
                quant.env[node] = quant.run_node(node)
                for interp in (fp32, quant):  # free each value after its last use, as Interpreter.run does
                    for used in interp.user_to_last_uses.get(node, []):
                        del interp.env[used]
    finally:
        quantizer.set_state(True, False)


@torch.no_grad()
def capture(quantizer, layer, images, quantized, batch_size=256, want_output=False):
    """The layer's inputs (or outputs) over ``images``, in the quantized (or FP32) model: one layer's activations
    for a check (the tests compare ``lockstep`` with it), from a pass from the input.

    The quantized pass uses fake quantization in float32, not the float64 integer simulation: the
    same grid values (within one LSB of requantization rounding), several times faster on CPU.
    """
    gm = quantizer.prepared
    quantizer.set_state(quantized, False)
    found = []

    def pre_hook(module, inputs):
        if not want_output:
            found.append(inputs[0].detach())
            raise _Stop

    def hook(module, inputs, output):
        found.append(output.detach())
        raise _Stop

    handles = [layer.register_forward_pre_hook(pre_hook), layer.register_forward_hook(hook)]
    try:
        with integer_evaluation(gm, False):
            for start in range(0, images.shape[0], batch_size):
                try:
                    gm(images[start:start + batch_size])
                except _Stop:
                    pass
    finally:
        for h in handles:
            h.remove()
        quantizer.set_state(True, False)
    return torch.cat(found)


def calibration_images(loader, device, max_images=None):
    batches, count = [], 0
    for batch in loader:
        batches.append(batch[0].to(device))
        count += batches[-1].shape[0]
        if max_images is not None and count >= max_images:
            break
    images = torch.cat(batches)
    return images if max_images is None else images[:max_images]


def _grid(layer, wq):
    weight = layer.parametrizations.weight.original
    axis = getattr(wq, "axis", 0)
    scale = grid_view(wq.scale, weight, axis)
    zero_point = grid_view(wq.zero_point.to(weight.dtype), weight, axis)
    return weight, scale, zero_point


@contextlib.contextmanager
def original_parameters(layers, originals):
    """Swap the FP32 weights and biases saved before refinement back in (the FP32 targets need them)."""
    current = {}
    with torch.no_grad():
        for name, layer, _ in layers:
            weight = layer.parametrizations.weight.original
            current[name] = (weight.clone(), None if layer.bias is None else layer.bias.clone())
            weight.copy_(originals[name][0])
            if layer.bias is not None:
                layer.bias.copy_(originals[name][1])
    try:
        yield
    finally:
        with torch.no_grad():
            for name, layer, _ in layers:
                layer.parametrizations.weight.original.copy_(current[name][0])
                if layer.bias is not None:
                    layer.bias.copy_(current[name][1])


def _ensure_weight_ranges(quantizer):
    """Weight quantizers take their range from the FP32 weight once; fix it before any weight changes."""
    quantizer.set_state(True, False)
    with torch.no_grad():
        for _, layer, _ in refined_layers(quantizer):
            layer.weight  # noqa: B018  (the parametrization observes on first use)


def refine(quantizer, images, config=None):
    """Run AdaRound and/or bias correction on every quantized conv/linear; a row per layer for the log."""
    config = config or quantizer.config
    _ensure_weight_ranges(quantizer)
    layers = refined_layers(quantizer)
    originals = {name: (layer.parametrizations.weight.original.detach().clone(),
                        None if layer.bias is None else layer.bias.detach().clone()) for name, layer, _ in layers}
    rows = []
    started = time.perf_counter()
    steps = lockstep(quantizer, images, originals)
    for name, layer, wq, x_q, target in progress(steps, "AdaRound / GPTQ / bias correction", total=len(layers)):
        weight, scale, zero_point = _grid(layer, wq)
        row = {"layer": name, "bits": wq.bits}
        nearest = nearest_integers(weight, scale, zero_point, wq.qmin, wq.qmax)
        with torch.no_grad():
            row["rtn_error"] = reconstruction_error(layer_output(layer, x_q, nearest * scale), target).item()
        if config["adaround"] and isinstance(layer, _ADAROUND_TYPES):
            learned = adaround_layer(layer, weight, scale, zero_point, wq.qmin, wq.qmax, x_q, target,
                                     iterations=config["adaround_iterations"], reg_weight=config["adaround_reg_weight"],
                                     beta_start=config["adaround_beta_start"], beta_end=config["adaround_beta_end"],
                                     warmup=config["adaround_warmup"], lr=config["adaround_lr"],
                                     batch_size=config["adaround_batch_size"])
            with torch.no_grad():
                weight.copy_(learned * scale)  # the learned integers, dequantized: exactly on the grid
                row["flipped"] = float((learned != nearest).float().mean().item())
        if config.get("gptq") and gptq_supported(layer):
            hessian = input_hessian(layer, x_q)
            learned = gptq_integers(weight, scale, zero_point, wq.qmin, wq.qmax, hessian,
                                    damp=config["gptq_damp"], block_size=config["gptq_block_size"])
            with torch.no_grad():
                weight.copy_(learned * scale)  # on the grid, as AdaRound's
                row["flipped"] = float((learned != nearest).float().mean().item())
        if config["bias_correction"]:
            row["bias_shift"] = correct_bias(layer, x_q, target)
        with torch.no_grad():
            row["error"] = reconstruction_error(layer_output(layer, x_q, layer.weight), target).item()
        row["seconds"] = round(time.perf_counter() - started, 2)  # with the passes up to this layer
        started = time.perf_counter()
        rows.append(row)
    return rows


@torch.no_grad()
def correct_bias(layer, x_q, target):
    """Subtract the per-channel mean output shift (quantized weights and inputs vs FP32); returns its size.

    Layers without a bias (BN not folded into them) are left alone: adding a bias would change the
    checkpoint's keys.
    """
    if layer.bias is None:
        log.warning("bias correction: %s has no bias, left uncorrected", type(layer).__name__)
        return None
    shift = mean_output_shift(layer, x_q, target)
    layer.bias.sub_(shift)
    return float(shift.abs().max().item())


@torch.no_grad()
def mean_output_shift(layer, x_q, target):
    """Per output channel: mean over samples and positions (tokens) of (quantized output - FP32 output).

    The channel axis is 1 for a convolution and the last one for a linear layer (a ViT's are [images, tokens,
    features])."""
    diff = layer_output(layer, x_q, layer.weight) - target
    channel = diff.dim() - 1 if isinstance(layer, torch.nn.Linear) else 1
    return diff.mean(dim=[d for d in range(diff.dim()) if d != channel])


def refinement_table(rows):
    """Rows for ``tabulate``: the layer's reconstruction error with round-to-nearest and after refinement."""
    return [(r["layer"], r["bits"], f"{r['rtn_error']:.4g}", f"{r['error']:.4g}",
             "" if r.get("flipped") is None else f"{100 * r['flipped']:.1f}",
             "" if r.get("bias_shift") is None else f"{r['bias_shift']:.3g}", r["seconds"]) for r in rows]


REFINEMENT_HEADERS = ["layer", "w bits", "error RTN", "error refined", "flipped %", "max |bias shift|", "s"]


def refine_after_calibration(quantizer, loader, device="cpu"):
    """The post-training apps' one call: refine if the quantizer's config asks for it, log the table."""
    if not wants_refinement(quantizer.config):
        return None
    what = " + ".join(k for k, on in (("AdaRound", quantizer.config["adaround"]), ("GPTQ", quantizer.config["gptq"]),
                                       ("bias correction", quantizer.config["bias_correction"])) if on)
    images = calibration_images(loader, device)
    started = time.perf_counter()
    rows = refine(quantizer, images)
    seconds = time.perf_counter() - started
    log.info("%s on %d calibration images, %.1f s (layer output error vs FP32, inputs from the quantized model):\n%s",
             what, images.shape[0], seconds, tabulate(refinement_table(rows), headers=REFINEMENT_HEADERS))
    return {"method": what, "seconds": round(seconds, 2), "layers": rows}
