#!/usr/bin/env python3
"""What AdaRound, GPTQ and bias correction spend gathering each layer's activations (issue 23): one FP32 and one
quantized pass over the calibration images, node by node (``refine.lockstep``, what ``refine`` does), against two
passes from the input per layer (``refine.capture``, what it did before), on a trained model.

    OMP_NUM_THREADS=1 python benchmarks/refine_speed.py --arch efficientnet_b0_cifar --checkpoint CK \\
        --out docs/benchmarks/refine_speed_avx2.json

Both gather the same tensors (checked here: the largest difference is in the JSON); no layer is changed, so the
seconds are the gathering alone. Then a whole bias correction (``refine`` with ``bias_correction: true``) is timed.
"""

import argparse
import copy
import json
import sys
import time
import warnings

import torch
from accuracy_stats import machine  # benchmarks/ (the script's folder is on sys.path)

from compressor.core.io import atomic_write_text, load_checkpoint
from compressor.core.state_keys import load_weights, model_state
from compressor.data.loaders import load_calibration_data
from compressor.models import arch_family, create_model
from compressor.quantization.linear.ptq import PostTrainLinearQuantizer
from compressor.quantization.linear.refine import (
    calibration_images,
    capture,
    lockstep,
    original_parameters,
    refine,
    refined_layers,
)

warnings.filterwarnings("ignore")


def quantizer(model, calib, **extra):
    q = PostTrainLinearQuantizer(copy.deepcopy(model), bits_activations=8, bits_parameters=8, per_channel_wts=True,
                                 clip_acts="AVG", mode={"activations": "ASYMMETRIC_UNSIGNED", "weights": "SYMMETRIC"},
                                 **extra)
    q.prepare_model().eval()
    q.calibrate(calib)
    return q


def originals(layers):
    return {name: (layer.parametrizations.weight.original.detach().clone(),
                   None if layer.bias is None else layer.bias.detach().clone()) for name, layer, _ in layers}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--calibration-size", type=int, default=512)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = create_model(args.arch, args.dataset)
    load_weights(model, model_state(load_checkpoint(args.checkpoint)))
    model.eval()
    calib = load_calibration_data(args.dataset, None, arch_family(args.arch)[1], 128, args.calibration_size)
    images = calibration_images(calib, "cpu")
    q = quantizer(model, calib)
    layers = refined_layers(q)
    saved = originals(layers)

    start = time.perf_counter()
    new = [(x_q, target) for _, _, _, x_q, target in lockstep(q, images, saved)]
    lockstep_s = time.perf_counter() - start

    start = time.perf_counter()
    diff = 0.0
    for (_, layer, _), (x_new, t_new) in zip(layers, new):
        x_q = capture(q, layer, images, quantized=True)
        with original_parameters(layers, saved):
            target = capture(q, layer, images, quantized=False, want_output=True)
        diff = max(diff, float((x_q - x_new).abs().max()), float((target - t_new).abs().max()))
    passes_s = time.perf_counter() - start

    bc = quantizer(model, calib, bias_correction=True)
    start = time.perf_counter()
    refine(bc, images)
    bc_s = time.perf_counter() - start
    result = {
        "command": "python " + " ".join(sys.argv), "machine": machine(), "arch": args.arch,
        "checkpoint": args.checkpoint, "calibration_images": int(images.shape[0]), "layers": len(layers),
        "gather_seconds": {"lockstep": round(lockstep_s, 2), "passes_from_the_input": round(passes_s, 2)},
        "speedup": round(passes_s / lockstep_s, 2), "largest_difference": diff,
        "bias_correction_seconds": round(bc_s, 2),
    }
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
