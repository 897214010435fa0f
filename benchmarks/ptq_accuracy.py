#!/usr/bin/env python3
"""Post-training quantization of a trained FP32 model: every clip method x bit widths, beside torch.ao's PTQ,
plus calibration cost against plain FP32 inference over the same images, all in one run.

    python benchmarks/ptq_accuracy.py --checkpoint FP32_CKPT --out docs/benchmarks/ptq_accuracy.json
    python benchmarks/ptq_accuracy.py --dataset fashion_mnist --checkpoint FP32_CKPT --configs W8A8 \
        --skip-calibration-cost --out docs/benchmarks/fashion_mnist/ptq_w8a8.json

Every top-1 comes with its count of correct test images, its 95 % Wilson interval and the
per-image correctness (packed), so any two rows can be compared with McNemar's paired test
(benchmarks/accuracy_stats.py); each quantized model also records its activation ranges and the
per-site SQNR on one calibration batch (the evidence behind the clip-method explanations).
The model input and the logits are left unclipped unless --clip-boundaries, and clipped ranges keep
[avg_min, avg_max] unless --no-keep-avg: both flags together give the defaults before issue 9's fix.
"""

import argparse
import copy
import json
import os
import sys
import time
import warnings

import torch
from accuracy_stats import machine, pack_mask, wilson  # benchmarks/ (the script's folder is on sys.path)

from compressor.app.post_train import sqnr_table
from compressor.calibration.clipping import CLIP_NAMES
from compressor.core.io import atomic_write, load_checkpoint
from compressor.core.state_keys import load_weights, model_state
from compressor.data import load_data
from compressor.data.loaders import SHAPE_ADAPTIVE, load_calibration_data
from compressor.models import arch_family, create_model
from compressor.quantization.collect import collect_stats
from compressor.quantization.graph.fold_bn import fold_batchnorm
from compressor.quantization.linear.ptq import PostTrainLinearQuantizer

warnings.filterwarnings("ignore")
CONFIGS = [("W8A8", 8, 8), ("W6A6", 6, 6), ("W4A8", 4, 8), ("W4A4", 4, 4)]


@torch.no_grad()
def evaluate(model, loader):
    """Per-image correctness (a bool tensor over the test set, in order)."""
    model.eval()
    return torch.cat([model(x).argmax(1) == y for x, y in loader])


def top1(model, loader):
    return 100.0 * evaluate(model, loader).double().mean().item()


def entry(mask):
    correct, n = int(mask.sum()), len(mask)
    lo, hi = wilson(correct, n)
    return {
        "top1": 100.0 * correct / n,
        "correct": correct,
        "n": n,
        "ci95": [round(lo, 3), round(hi, 3)],
        "mask": pack_mask(mask),
    }


def ours_quantizer(model, calib, bits_w, bits_a, clip, no_clip=(), clip_boundaries=False, integer=True, keep_avg=True):
    overrides = {name: {"clip_acts": "NONE"} for name in no_clip}
    if clip_boundaries:  # a recipe override asks for the method on the input and the logits too
        overrides.update({"input": {"clip_acts": clip}, "fc": {"clip_acts": clip}})
    q = PostTrainLinearQuantizer(
        model,
        bits_activations=bits_a,
        bits_parameters=bits_w,
        clip_acts=clip,
        clip_n_stds=3.0,
        per_channel_wts=True,
        mode="ASYMMETRIC_UNSIGNED",
        clip_half_range=True,
        overrides=overrides or None,
        integer_arithmetic=integer,
        clip_keep_avg_from_bits=8 if keep_avg else None,
    )
    gm = q.prepare_model()
    q.calibrate(calib)
    return q, gm


def torch_ao(model, calib, bits_w):
    from torch.ao.quantization import QConfig, QConfigMapping, get_default_qconfig_mapping
    from torch.ao.quantization.observer import HistogramObserver, PerChannelMinMaxObserver
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    if bits_w == 8:
        mapping = get_default_qconfig_mapping("x86")
    else:  # torch.ao's observers with a 4-bit weight range, computed by int8 kernels
        half = 2 ** (bits_w - 1)
        mapping = QConfigMapping().set_global(
            QConfig(
                activation=HistogramObserver.with_args(reduce_range=True),
                weight=PerChannelMinMaxObserver.with_args(
                    dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=-half, quant_max=half - 1
                ),
            )
        )
    example = next(iter(calib))[0][:1]
    prepared = prepare_fx(copy.deepcopy(model).eval(), mapping, (example,))
    with torch.no_grad():
        for x, _ in calib:
            prepared(x)
    return convert_fx(prepared)


def timed(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="FP32 checkpoint of --arch trained on --dataset")
    ap.add_argument("--arch", default="resnet20_cifar")
    ap.add_argument("--dataset", default="digits", choices=SHAPE_ADAPTIVE)
    ap.add_argument("--data-dir", default=None, help="DATASET_DIR (default: where the dataset installs)")
    ap.add_argument("--calibration-size", type=int, default=512)
    ap.add_argument("--configs", nargs="+", default=[c[0] for c in CONFIGS], choices=[c[0] for c in CONFIGS])
    ap.add_argument("--methods", nargs="+", default=CLIP_NAMES, choices=CLIP_NAMES)
    ap.add_argument(
        "--no-clip-layers",
        nargs="*",
        default=[],
        metavar="NAME",
        help="sites never clipped (as Distiller's --qe-no-clip-layers)",
    )
    ap.add_argument(
        "--clip-boundaries",
        action="store_true",
        help="clip the model input and the logits (fc) with the method too, through overrides "
        "(the default before the clip-defaults fix)",
    )
    ap.add_argument(
        "--no-keep-avg",
        action="store_true",
        help="each method's own range (clip_keep_avg_from_bits: null; the default before the fix)",
    )
    ap.add_argument(
        "--no-integer-arithmetic",
        action="store_true",
        help="fake-quantize in float32 only (same grids; the exact float64 integer simulation of each "
        "conv costs ~8x an FP32 forward on CPU)",
    )
    ap.add_argument("--skip-torch-ao", action="store_true")
    ap.add_argument("--skip-calibration-cost", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = create_model(args.arch, args.dataset)
    load_weights(model, model_state(load_checkpoint(args.checkpoint)))
    model.eval()
    shape = arch_family(args.arch)[1]
    _, _, test = load_data(args.dataset, args.data_dir, shape, 128)
    calib = load_calibration_data(args.dataset, args.data_dir, shape, 128, args.calibration_size)
    start = time.perf_counter()
    fp32 = entry(evaluate(model, test))
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": machine(),
        "dataset": args.dataset,
        "arch": args.arch,
        "checkpoint": args.checkpoint,
        "calibration_images": len(calib.dataset),
        "test_images": len(test.dataset),
        "clip_boundaries": args.clip_boundaries,
        "no_clip_layers": args.no_clip_layers,
        "integer_arithmetic": not args.no_integer_arithmetic,
        "clip_keep_avg": not args.no_keep_avg,
        "fp32_top1": fp32["top1"],
        "fp32": fp32,
        "ours": {},
        "ours_detail": {},
        "torch_ao": {},
        "torch_ao_detail": {},
    }
    print(f"FP32 top-1 {fp32['top1']:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    sqnr_batch = next(iter(calib))[0]
    for label, bits_w, bits_a in CONFIGS:
        if label not in args.configs:
            continue
        for clip in args.methods:
            start = time.perf_counter()
            q, gm = ours_quantizer(
                model,
                calib,
                bits_w,
                bits_a,
                clip,
                args.no_clip_layers,
                args.clip_boundaries,
                not args.no_integer_arithmetic,
                not args.no_keep_avg,
            )
            detail = entry(evaluate(gm, test))
            detail["sites"] = {
                name: {
                    "range": list(q.ranges[name]),
                    "clip": str(q.site_config[name]["clip_acts"]).upper(),
                    "sqnr_db": sqnr,
                }
                for name, _, _, _, sqnr in sqnr_table(q, gm, sqnr_batch, "cpu")
            }
            result["ours"].setdefault(label, {})[clip] = detail["top1"]
            result["ours_detail"].setdefault(label, {})[clip] = detail
            print(
                f"ours {label} {clip:10s} {detail['top1']:.3f} {detail['ci95']} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    for label, bits_w in () if args.skip_torch_ao else (("W8A8", 8), ("W4A8", 4)):
        if label not in args.configs:
            continue
        detail = entry(evaluate(torch_ao(model, calib, bits_w), test))
        result["torch_ao"][label] = detail["top1"]
        result["torch_ao_detail"][label] = detail
        print(f"torch.ao {label} {detail['top1']:.3f} {detail['ci95']}", flush=True)

    if args.skip_torch_ao or args.skip_calibration_cost:
        _write(args.out, result)
        return
    # calibration cost: one FP32 inference pass over the calibration images is the unit
    folded = fold_batchnorm(model)
    images = [x for x, _ in calib]

    def fp32_pass():
        with torch.no_grad():
            for x in images:
                folded(x)

    def ao_pass():
        torch_ao_prepared = _ao_prepared(model, calib)
        with torch.no_grad():
            for x in images:
                torch_ao_prepared(x)

    fp32_s = timed(fp32_pass)
    stats_s = timed(lambda: collect_stats(folded, calib))
    hist_s = timed(lambda: collect_stats(folded, calib, histograms=True))
    ao_s = timed(ao_pass)
    result["calibration_cost"] = {
        "fp32_inference_s": fp32_s,
        "ours_stats_s": stats_s,
        "ours_stats_and_histograms_s": hist_s,
        "torch_ao_histogram_observer_s": ao_s,
        "ratio_stats": stats_s / fp32_s,
        "ratio_stats_and_histograms": hist_s / fp32_s,
        "ratio_torch_ao": ao_s / fp32_s,
    }
    print(json.dumps(result["calibration_cost"], indent=2))
    _write(args.out, result)


def _write(path, result):
    """Atomically (temp file, then rename): an interrupted run never leaves a half-written JSON."""
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        text = json.dumps(result, indent=1)

        def dump(tmp):
            with open(tmp, "w") as f:
                f.write(text)

        atomic_write(path, dump)


def _ao_prepared(model, calib):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    return prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), (next(iter(calib))[0][:1],))


if __name__ == "__main__":
    main()
