"""post_train_quant: calibrate and quantize a trained FP32 classifier, then measure what it cost."""

import argparse
import logging
import math

import torch
from tabulate import tabulate

from compressor.app.common import (
    DefaultsHelpFormatter,
    add_weight_sources,
    common_parser,
    count_or_fraction,
    fraction,
    one_weight_source,
    with_defaults_shown,
)
from compressor.app.context import RunContext
from compressor.app.deploy_args import add_deploy_arguments, run_exports
from compressor.app.errors import run_guarded
from compressor.app.pictures import post_train_pictures
from compressor.app.qe_args import add_qe_arguments, config_as_recipe, ptq_config_in, qe_config
from compressor.app.run_record import ptq_record, publish
from compressor.app.sensitivity import add_sensitivity_arguments, analyze, refuse_overwriting_inputs, wants_analysis
from compressor.calibration.stats_file import save_stats
from compressor.core.errors import CheckpointError, UsageError
from compressor.core.io import save_checkpoint
from compressor.core.state_keys import load_weights
from compressor.models import create_model
from compressor.pruning.thinning import restore_thinning
from compressor.quantization.linear.lapq import lapq
from compressor.quantization.linear.refine import refine_after_calibration
from compressor.recipe.build import build_scheduler, read_recipe
from compressor.training.loop import evaluate
from compressor.training.state import TrainState, load_model_weights

log = logging.getLogger("compressor")


def post_train_parser():
    p = argparse.ArgumentParser(prog="post_train_quant.py", parents=[common_parser(batch_size=128)],
                                formatter_class=DefaultsHelpFormatter,
                                description="Calibrate and quantize a trained FP32 classifier (no training).")
    add_weight_sources(p, "FP32 checkpoint to quantize", "FP32 weights (checkpoint or state dict)")
    p.add_argument("--compress", metavar="RECIPE", default=None,
                   help="PTQ recipe (one PostTrainLinearQuantizer); without it the --qe flags configure it")
    p.add_argument("--calibration-size", default=512,
                   type=count_or_fraction("--calibration-size"),
                   help="training images used for calibration: a count, or a fraction when <= 1 (default: 512)")
    p.add_argument("--pretrained", action="store_true",
                   help="quantize torchvision's pretrained weights (from TORCH_HOME, never downloaded)")
    p.add_argument("--etes", "--effective-test-size", type=fraction("--etes"), default=1.0,
                   dest="effective_test_size", help="fraction of the test set evaluated (default: 1)")
    add_qe_arguments(p, with_switch=False)
    add_deploy_arguments(p)
    add_sensitivity_arguments(p)
    return with_defaults_shown(p)


def ptq_recipe(args):
    """(the PostTrainLinearQuantizer's arguments, the one-quantizer recipe the builder makes it from):
    from --compress, else from the --qe flags, validated as any recipe is."""
    if args.compress:
        config = ptq_config_in(args.compress, "--compress", UsageError)
        return config, read_recipe(config_as_recipe(config), file=f"{args.compress} (its PostTrainLinearQuantizer)")
    config = qe_config(args)
    return config, read_recipe(config_as_recipe(config), file="<--qe flags>")


def sqnr_table(quantizer, gm, batch, device):
    """SQNR (dB) of each quantized activation against the FP32 model, on one calibration batch."""
    captured = {}
    hooks = [fq.register_forward_hook(lambda m, i, o, n=name: captured.setdefault(n, []).append(o.detach()))
             for name, fq in quantizer.activation_quantizers.items()]
    x = batch.to(device)
    with torch.no_grad():
        quantizer.set_state(False, False)
        gm(x)
        quantizer.set_state(True, False)
        gm(x)
    for h in hooks:
        h.remove()
    rows = []
    for name, (ref, q) in ((n, v) for n, v in captured.items() if len(v) == 2):
        noise = (ref.double() - q.double()).pow(2).sum().item()
        signal = ref.double().pow(2).sum().item()
        sqnr = float("inf") if noise == 0 else 10 * math.log10(max(signal, 1e-30) / noise)
        fq = quantizer.activation_quantizers[name]
        lo, hi = quantizer.ranges.get(name, (float("nan"), float("nan")))
        rows.append((name, fq.bits, str(quantizer.site_config[name]["clip_acts"]).upper(), f"[{lo:.4g}, {hi:.4g}]",
                     round(sqnr, 2)))
    return rows


class PostTrainRun:
    """Post-training quantization in named steps: load, calibrate, report, save."""

    def __init__(self, args):
        self.args = args
        self.ctx = RunContext.from_args(args)
        self.dataset, self.device = self.ctx.dataset, self.ctx.device
        if args.pretrained and (args.resume_from or args.exp_load_weights_from):
            raise UsageError("give one of --pretrained, --resume-from and --exp-load-weights-from")
        # --qe --pretrained: torchvision's weights from TORCH_HOME (create_model's clear error when absent)
        self.source = f"torchvision's pretrained {args.arch}" if args.pretrained else \
            one_weight_source(args, "post-training quantization (--qe)")
        if args.qe_lapq and (args.qe_dynamic or args.lapq_basinhopping):
            raise UsageError("--qe-lapq searches calibrated ranges: not with --qe-dynamic" if args.qe_dynamic else
                             "--lapq-basinhopping is not supported; use --lapq-method (scipy.optimize.minimize)")
        self.config, self.recipe = ptq_recipe(args)
        self.model = self.load_fp32_model()
        if args.channels_last:  # calibration, evaluation and the quantized model in channels-last format
            self.model.to(memory_format=torch.channels_last)

    def load_fp32_model(self):
        if self.args.pretrained:
            return create_model(self.args.arch, self.dataset, pretrained=True).to(self.device)
        checkpoint, state = load_model_weights(self.source, "--resume-from" if self.args.resume_from
                                               else "--exp-load-weights-from")
        if isinstance(checkpoint, dict) and checkpoint.get("quantizer"):
            raise UsageError(f"{self.source} is already quantized ({checkpoint['quantizer']['class']}); "
                             f"give an FP32 checkpoint")
        model = create_model(self.args.arch, self.dataset).to(self.device)
        if isinstance(checkpoint, dict) and checkpoint.get("thinning"):
            restore_thinning(model, checkpoint["thinning"], self.source)
        try:
            load_weights(model, state)
        except (RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{self.source}: {exc}") from None
        return model

    def open(self):
        """Run folder and loaders (the test split, and training images for calibration)."""
        args = self.args
        self.run = self.ctx.open_run(f"post_train_{args.arch}", args.compress)
        _, _, self.test_loader = self.ctx.loaders(test_size=args.effective_test_size)
        self.calib_loader = self.ctx.calibration_loader(args.calibration_size)
        self.criterion = torch.nn.CrossEntropyLoss()

    def evaluate(self, model, what):
        log.info("--- %s test ---", what)
        return evaluate(model, self.test_loader, self.criterion, self.device, desc=f"{what.lower()} test",
                        amp=self.args.amp)

    def calibrate(self):
        """The recipe builder makes the quantizer and its policy. The policy is put in its phase after the
        window (epoch 0): quantized, nothing observing, as a resumed run re-derives it; calibration (on the
        folded model, whose layers share the quantized weights) then fixes every activation range."""
        self.scheduler = build_scheduler(self.recipe, self.model, None)
        self.scheduler.on_epoch_begin(CALIBRATED_EPOCH)
        self.quantizer, self.gm = self.scheduler.quantizer, self.scheduler.model.to(self.device)
        self.records = None
        if self.config.get("model_activation_stats") is None and not self.args.qe_dynamic:
            log.info("Calibrating on %d training images%s", len(self.calib_loader.dataset),
                     " (statistics and histograms, one pass)" if self.quantizer.needs_histograms() else "")
            # under torchrun: merged over the processes, the same records on every rank
            self.records = self.quantizer.calibrate(self.calib_loader, self.device)
            if self.ctx.procs.is_main:
                save_stats(self.run.file("acts_quantization_stats.yaml"), self.records)
        if self.args.qe_lapq:
            if self.ctx.procs.active:  # each rank would optimize its own ranges on its own shard
                raise UsageError("--qe-lapq is not supported under torchrun yet: run it in one process")
            batches = max(1, math.ceil(len(self.calib_loader) * self.args.lapq_eval_size))
            lapq(self.quantizer, self.gm, self.calib_loader, self.criterion, self.args.lapq_init_mode,
                 self.args.lapq_method, self.args.lapq_maxiter, self.args.lapq_maxfev, eval_batches=batches)
        self.refinement = refine_after_calibration(self.quantizer, self.calib_loader, self.device)
        self.run.write_yaml("layer_quant_params.yaml", self.quantizer.layer_params())

    def report(self):
        rows = sqnr_table(self.quantizer, self.gm, next(iter(self.calib_loader))[0], self.device)
        post_train_pictures(self.run, self.quantizer, self.gm, next(iter(self.calib_loader))[0], rows, self.device)
        log.info("Per-layer quantization (SQNR of each quantized activation vs FP32, one calibration batch):\n%s",
                 tabulate(rows, headers=["activation", "bits", "clip", "range", "SQNR dB"]))
        if self.quantizer.accumulator_rows:
            log.info("Accumulators (needed = 2n + ceil(log2(fan-in))):\n%s",
                     tabulate(self.quantizer.accumulator_rows, headers=["layer", "bits needed", "bits_accum"]))

    def saved_config(self):
        """The configuration kept with the quantized model: the ranges live in its state, not in a stats file."""
        return {**self.config, "model_activation_stats": None}

    def saved_recipe(self):
        return config_as_recipe(self.saved_config())

    def save(self):
        state = TrainState.capture(CALIBRATED_EPOCH - 1, self.args.arch, self.dataset, self.gm,
                                   scheduler=self.scheduler, recipe=self.saved_recipe(), with_rng=False)
        save_checkpoint(self.run.file("quantized_checkpoint.pth.tar"), state.to_dict())

    def summarize(self, fp32, quant):
        args, config = self.args, self.config
        pick = lambda r: {k: r[k] for k in ("top1", "top5", "loss", "images")}  # noqa: E731
        summary = {"arch": args.arch, "dataset": self.dataset, "checkpoint": self.source,
                   "calibration_images": len(self.calib_loader.dataset) if self.records is not None else 0,
                   "quantizer": self.saved_config(),
                   "fp32": pick(fp32), "quantized": pick(quant),
                   "top1_drop": fp32["top1"] - quant["top1"], "run_dir": self.run.path}
        loader = self.ctx.full_test_loader() if self.ctx.procs.active else self.test_loader  # exports: rank 0 only
        exported = run_exports(args, self.run, args.name or f"post_train_{args.arch}", self.gm, True, loader,
                               {"arch": args.arch, "dataset": self.dataset, "recipe": self.saved_recipe()})
        if self.refinement:
            summary["refinement"] = {k: self.refinement[k] for k in ("method", "seconds")}
        if exported:
            summary["export"] = exported
        self.run.scalars({"PTQ/FP32/Top1": fp32["top1"], "PTQ/FP32/Loss": fp32["loss"],
                          "PTQ/Quantized/Top1": quant["top1"], "PTQ/Quantized/Loss": quant["loss"]}, 0)
        sample = next(iter(self.calib_loader))[0][:1]
        publish(self.run, summary, ptq_record(args, self.dataset, config, summary, self.quantizer, sample))
        log.info("FP32 top-1 %.3f -> quantized top-1 %.3f", fp32["top1"], quant["top1"])
        return summary


CALIBRATED_EPOCH = 1  # the PTQ recipe's quantization window is epoch 0; from epoch 1 its policy is frozen


def run(args):
    refuse_overwriting_inputs(args)  # before anything is measured or written
    ptq = PostTrainRun(args)
    try:
        ptq.open()
        if wants_analysis(args):  # --sensitivity / --target-size-ratio: analysis and a recipe, no PTQ run
            return analyze(args, ptq.model, ptq.config, ptq.dataset, ptq.ctx.shape, ptq.run, ptq.device)
        fp32 = ptq.evaluate(ptq.model.eval(), "FP32")
        ptq.calibrate()
        quant = ptq.evaluate(ptq.gm, "quantized")
        if not ptq.ctx.procs.is_main:  # the distributed part is over; rank 0 reports and writes
            return None
        ptq.report()
        ptq.save()
        return ptq.summarize(fp32, quant)
    finally:
        ptq.ctx.close()


def main_from_classifier_args(cargs):
    """compress_classifier.py --qe / --qe-calibration: the same post-training flow on the same code."""
    args = argparse.Namespace(**vars(cargs))
    args.calibration_size = args.qe_calibration if args.qe_calibration is not None else 512
    args.compress = None  # Distiller's --qe reads its YAML through --qe-config-file
    return run_guarded(run, args)


def main(argv=None):
    return run_guarded(run, post_train_parser().parse_args(argv))
