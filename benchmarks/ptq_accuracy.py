#!/usr/bin/env python3
"""Post-training quantization of a trained FP32 model: every clip method x bit widths, beside torch.ao's PTQ,
plus calibration cost against plain FP32 inference over the same images, all in one run.

    python benchmarks/ptq_accuracy.py --checkpoint FP32_CKPT --out docs/benchmarks/ptq_accuracy.json
"""

import argparse
import copy
import json
import os
import platform
import sys
import time
import warnings

import torch

from compressor.calibration.clipping import CLIP_NAMES
from compressor.quantization.collect import collect_stats
from compressor.data import load_data
from compressor.data.loaders import load_calibration_data
from compressor.models import create_model
from compressor.quantization.graph.fold_bn import fold_batchnorm
from compressor.quantization.linear.ptq import PostTrainLinearQuantizer
from compressor.core.io import load_checkpoint
from compressor.core.state_keys import load_weights, model_state

warnings.filterwarnings("ignore")
CONFIGS = [("W8A8", 8, 8), ("W6A6", 6, 6), ("W4A8", 4, 8), ("W4A4", 4, 4)]


@torch.no_grad()
def top1(model, loader):
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    return 100.0 * correct / total


def ours(model, calib, bits_w, bits_a, clip, no_clip=()):
    overrides = {name: {"clip_acts": "NONE"} for name in no_clip} or None
    q = PostTrainLinearQuantizer(model, bits_activations=bits_a, bits_parameters=bits_w, clip_acts=clip,
                                 clip_n_stds=3.0, per_channel_wts=True, mode="ASYMMETRIC_UNSIGNED",
                                 clip_half_range=True, overrides=overrides)
    gm = q.prepare_model()
    q.calibrate(calib)
    return gm


def torch_ao(model, calib, bits_w):
    from torch.ao.quantization import QConfig, QConfigMapping, get_default_qconfig_mapping
    from torch.ao.quantization.observer import HistogramObserver, PerChannelMinMaxObserver
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    if bits_w == 8:
        mapping = get_default_qconfig_mapping("x86")
    else:  # torch.ao's observers with a 4-bit weight range, computed by int8 kernels
        half = 2 ** (bits_w - 1)
        mapping = QConfigMapping().set_global(QConfig(
            activation=HistogramObserver.with_args(reduce_range=True),
            weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                                      quant_min=-half, quant_max=half - 1)))
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
    ap.add_argument("--checkpoint", required=True, help="FP32 checkpoint of resnet20_cifar trained on digits")
    ap.add_argument("--arch", default="resnet20_cifar")
    ap.add_argument("--calibration-size", type=int, default=512)
    ap.add_argument("--no-clip-layers", nargs="*", default=[], metavar="NAME",
                    help="sites never clipped (as Distiller's --qe-no-clip-layers), e.g. input fc")
    ap.add_argument("--skip-torch-ao", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = create_model(args.arch, "digits")
    load_weights(model, model_state(load_checkpoint(args.checkpoint)))
    model.eval()
    shape = (3, 32, 32)
    _, _, test = load_data("digits", None, shape, 128)
    calib = load_calibration_data("digits", None, shape, 128, args.calibration_size)
    result = {"command": "python " + " ".join(sys.argv),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
              "calibration_images": len(calib.dataset), "test_images": len(test.dataset),
              "fp32_top1": top1(model, test), "ours": {}, "torch_ao": {}}
    print(f"FP32 top-1 {result['fp32_top1']:.3f}", flush=True)
    for label, bits_w, bits_a in CONFIGS:
        for clip in CLIP_NAMES:
            acc = top1(ours(model, calib, bits_w, bits_a, clip, args.no_clip_layers), test)
            result["ours"].setdefault(label, {})[clip] = acc
            print(f"ours {label} {clip:10s} {acc:.3f}", flush=True)
    for label, bits_w in () if args.skip_torch_ao else (("W8A8", 8), ("W4A8", 4)):
        acc = top1(torch_ao(model, calib, bits_w), test)
        result["torch_ao"][label] = acc
        print(f"torch.ao {label} {acc:.3f}", flush=True)

    if args.skip_torch_ao:
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
        "fp32_inference_s": fp32_s, "ours_stats_s": stats_s, "ours_stats_and_histograms_s": hist_s,
        "torch_ao_histogram_observer_s": ao_s,
        "ratio_stats": stats_s / fp32_s, "ratio_stats_and_histograms": hist_s / fp32_s, "ratio_torch_ao": ao_s / fp32_s,
    }
    print(json.dumps(result["calibration_cost"], indent=2))
    _write(args.out, result)


def _write(path, result):
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(result, f, indent=2)


def _ao_prepared(model, calib):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    return prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), (next(iter(calib))[0][:1],))


if __name__ == "__main__":
    main()
