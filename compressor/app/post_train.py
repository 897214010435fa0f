"""post_train_quant: calibrate and quantize a trained FP32 classifier, then measure what it cost."""

import argparse
import logging
import math
import sys

import torch
import yaml
from tabulate import tabulate

from compressor.calibration.stats_file import save_stats
from compressor.data import load_data
from compressor.data.loaders import DATASETS, SHAPE_ADAPTIVE, load_calibration_data
from compressor.models import arch_family, create_model
from compressor.scheduling.policies import QuantizationPolicy
from compressor.quantization.linear.ptq import PostTrainLinearQuantizer
from compressor.recipe.build import read_recipe
from compressor.core.errors import CheckpointError
from compressor.core.io import atomic_write_text, load_checkpoint, save_checkpoint
from compressor.core.state_keys import load_weights, model_state
from compressor.training.determinism import seed_everything
from compressor.training.loop import evaluate
from compressor.training.run_dir import RunDirectory
from compressor.app.common import fraction, non_negative, number, pick_device, positive_int
from compressor.core.errors import UsageError
from compressor.app.errors import run_guarded
from compressor.app.deploy_args import add_deploy_arguments, run_exports
from compressor.app.qe_args import add_qe_arguments, config_as_recipe, qe_config

log = logging.getLogger("compressor")


def post_train_parser():
    p = argparse.ArgumentParser(prog="post_train_quant.py",
                                description="Calibrate and quantize a trained FP32 classifier (no training).")
    p.add_argument("data", metavar="DATASET_DIR", nargs="?", default=None)
    p.add_argument("-a", "--arch", default="resnet20_cifar")
    p.add_argument("--dataset", choices=DATASETS, default=None)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--resume-from", metavar="PATH", help="FP32 checkpoint to quantize")
    src.add_argument("--exp-load-weights-from", metavar="PATH", help="FP32 weights (checkpoint or state dict)")
    p.add_argument("--compress", metavar="RECIPE", default=None,
                   help="PTQ recipe (one PostTrainLinearQuantizer); without it the --qe flags configure it")
    p.add_argument("--calibration-size", default=512,
                   type=number("--calibration-size", expected="a count, or a fraction in (0, 1]", lo=0, lo_open=True),
                   help="training images used for calibration: a count, or a fraction when <= 1 (default: 512)")
    p.add_argument("-b", "--batch-size", type=positive_int("-b/--batch-size"), default=128)
    p.add_argument("-j", "--workers", type=non_negative("-j/--workers", int), default=0)
    p.add_argument("--vs", "--validation-split", type=fraction("--vs"), default=0.1, dest="validation_split")
    p.add_argument("-o", "--out-dir", default="logs")
    p.add_argument("-n", "--name", default=None)
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--gpus", default=None)
    p.add_argument("--deterministic", "--det", action="store_true")
    p.add_argument("--seed", type=int, default=None)
    add_qe_arguments(p, with_switch=False)
    add_deploy_arguments(p)
    return p


def quantizer_config(args):
    if args.compress:
        recipe = read_recipe(args.compress)
        specs = [s for s in (recipe.data.get("quantizers") or {}).values() if s["class"] == "PostTrainLinearQuantizer"]
        if len(specs) != 1:
            raise UsageError(f"--compress {args.compress}: expected one PostTrainLinearQuantizer in 'quantizers'")
        return {k: v for k, v in specs[0].items() if k != "class"}
    config = qe_config(args)
    read_recipe(config_as_recipe(config), file="<--qe flags>")  # same validation as a recipe
    return config


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


def run(args):
    device, _ = pick_device(args)
    if args.deterministic and args.seed is None:
        args.seed = 0
    if args.seed is not None:
        seed_everything(args.seed, args.deterministic)
    dataset = args.dataset or arch_family(args.arch)[0]
    config = quantizer_config(args)
    source = args.resume_from or args.exp_load_weights_from
    checkpoint = load_checkpoint(source)
    if isinstance(checkpoint, dict) and checkpoint.get("quantizer"):
        raise UsageError(f"{source} is already quantized ({checkpoint['quantizer']['class']}); give an FP32 checkpoint")
    model = create_model(args.arch, dataset).to(device)
    try:
        load_weights(model, model_state(checkpoint))
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{source}: {exc}") from None

    run_dir = RunDirectory(args.out_dir, args.name or f"post_train_{args.arch}")
    try:
        log.info("Run folder: %s", run_dir.path)
        log.info("Command line: %s", " ".join(sys.argv))
        run_dir.copy_in(args.compress)
        shape = arch_family(args.arch)[1] if dataset in SHAPE_ADAPTIVE else None
        _, _, test_loader = load_data(dataset, args.data, shape, args.batch_size, args.workers, args.validation_split)
        calib_loader = load_calibration_data(dataset, args.data, shape, args.batch_size, args.calibration_size,
                                             args.workers, args.validation_split)
        criterion = torch.nn.CrossEntropyLoss()
        log.info("--- FP32 test ---")
        fp32 = evaluate(model.eval(), test_loader, criterion, device, desc="fp32 test")

        quantizer = PostTrainLinearQuantizer(model, **config)
        gm = quantizer.prepare_model().to(device)
        records = None
        if config.get("model_activation_stats") is None and not args.qe_dynamic:
            log.info("Calibrating on %d training images%s", len(calib_loader.dataset),
                     " (statistics and histograms, one pass)" if quantizer.needs_histograms() else "")
            records = quantizer.calibrate(calib_loader, device)
            save_stats(run_dir.file("acts_quantization_stats.yaml"), records)
        params = quantizer.layer_params()
        text = yaml.safe_dump(params, sort_keys=False)
        atomic_write_text(run_dir.file("layer_quant_params.yaml"), text)

        log.info("--- quantized test ---")
        quant = evaluate(gm, test_loader, criterion, device, desc="quantized test")
        rows = sqnr_table(quantizer, gm, next(iter(calib_loader))[0], device)
        log.info("Per-layer quantization (SQNR of each quantized activation vs FP32, one calibration batch):\n%s",
                 tabulate(rows, headers=["activation", "bits", "clip", "range", "SQNR dB"]))
        if quantizer.accumulator_rows:
            log.info("Accumulators (needed = 2n + ceil(log2(fan-in))):\n%s",
                     tabulate(quantizer.accumulator_rows, headers=["layer", "bits needed", "bits_accum"]))

        saved_config = {**config, "model_activation_stats": None}
        save_checkpoint(run_dir.file("quantized_checkpoint.pth.tar"), {
            "epoch": 0, "arch": args.arch, "dataset": dataset,
            "state_dict": gm.state_dict(),
            "optimizer_state_dict": None,
            "recipe": config_as_recipe(saved_config),
            "quantizer": quantizer.state_dict(),
            "compression_sched": {"policies": [{"phase": QuantizationPolicy.FROZEN}], "quantizer": quantizer.state_dict()},
            "rng": None, "best_scores": [],
        })
        pick = lambda r: {k: r[k] for k in ("top1", "top5", "loss")}  # noqa: E731
        summary = {"arch": args.arch, "dataset": dataset, "checkpoint": source,
                   "calibration_images": len(calib_loader.dataset) if records is not None else 0,
                   "quantizer": saved_config, "fp32": pick(fp32), "quantized": pick(quant),
                   "top1_drop": fp32["top1"] - quant["top1"], "run_dir": run_dir.path}
        exported = run_exports(args, run_dir, args.name or f"post_train_{args.arch}", gm, True, test_loader,
                               {"arch": args.arch, "dataset": dataset, "recipe": config_as_recipe(saved_config)})
        if exported:
            summary["export"] = exported
        run_dir.write_json("summary.json", summary)
        run_dir.scalars({"PTQ/FP32/Top1": fp32["top1"], "PTQ/FP32/Loss": fp32["loss"],
                         "PTQ/Quantized/Top1": quant["top1"], "PTQ/Quantized/Loss": quant["loss"]}, 0)
        run_dir.hparams({"arch": args.arch, "bits_activations": config.get("bits_activations") or 32,
                         "bits_weights": config.get("bits_parameters") or 32,
                         "clip_acts": str(config.get("clip_acts", "NONE")),
                         "per_channel_wts": bool(config.get("per_channel_wts"))},
                        {"PTQ/Quantized/Top1": quant["top1"], "PTQ/FP32/Top1": fp32["top1"]})
        log.info("FP32 top-1 %.3f -> quantized top-1 %.3f", fp32["top1"], quant["top1"])
        return summary
    finally:
        run_dir.close()


def main_from_classifier_args(cargs):
    """compress_classifier.py --qe / --qe-calibration: the same post-training flow on the same code."""
    args = argparse.Namespace(**vars(cargs))
    if not (args.resume_from or args.exp_load_weights_from):
        print("error: --qe needs a trained FP32 model: --resume-from or --exp-load-weights-from", file=sys.stderr)
        return 2
    if args.resume_from and args.exp_load_weights_from:
        print("error: give one of --resume-from and --exp-load-weights-from", file=sys.stderr)
        return 2
    args.calibration_size = args.qe_calibration if args.qe_calibration is not None else 512
    args.compress = None  # Distiller's --qe reads its YAML through --qe-config-file
    return run_guarded(run, args)


def main(argv=None):
    return run_guarded(run, post_train_parser().parse_args(argv))
