#!/usr/bin/env python3
"""Cost of the integer-exact quantized evaluation against the FP32 forward, in one process (issue 23, item 5).

W8A8 post-training quantization (per-channel weights, 256 calibration images) of a trained checkpoint;
one batch of test-shaped images timed through the FP32 model and through the quantized model with the integer
simulation as a forward hook after the float convolution (the old way) and replacing the layer's forward
(``IntegerArithmetic.attach``, the current way); best of 3 rounds, alternating. The two quantized paths are checked
to give identical outputs.

    OMP_NUM_THREADS=1 python benchmarks/quantized_eval_speed.py \\
        --checkpoint runs/fashion_mnist/fp32___<stamp>/checkpoint.pth.tar \\
        --out docs/benchmarks/quantized_eval_speed_avx2.json
"""

import argparse
import copy
import functools
import json
import sys
import time

import torch
from accuracy_stats import machine  # benchmarks/ (the script's folder is on sys.path)
from ptq_accuracy import ours_quantizer

from compressor.core.io import atomic_write_text, load_checkpoint
from compressor.core.state_keys import load_weights
from compressor.data.loaders import load_calibration_data
from compressor.models import create_model
from compressor.quantization.linear.integer_sim import IntegerArithmetic, _integer_forward


def best_seconds(fn, iters=4, rounds=3):
    fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        best = min(best, (time.perf_counter() - start) / iters)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--arch", default="resnet20_cifar")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    model = create_model(args.arch, args.dataset)
    load_weights(model, load_checkpoint(args.checkpoint)["state_dict"])
    model.eval()
    fp32 = copy.deepcopy(model)
    calib = load_calibration_data(args.dataset, None, (3, 32, 32), 128, 256)
    x = torch.cat([images for images, _ in calib])[: args.batch]
    _, gm = ours_quantizer(model, calib, 8, 8, "NONE")
    gm.eval()
    layers = [(m, h) for m in gm.modules() for h in m._forward_hooks.values() if isinstance(h, IntegerArithmetic)]

    def replace_forward(on):
        for module, hook in layers:
            hook.replaces_forward = on
            if on:
                module.forward = functools.partial(_integer_forward, module, hook)
            else:
                module.__dict__.pop("forward", None)

    rows = []
    with torch.no_grad():
        replace_forward(True)
        a = gm(x)
        replace_forward(False)
        identical = torch.equal(a, gm(x))
        for _ in range(2):
            f = best_seconds(lambda: fp32(x))
            replace_forward(False)
            hook = best_seconds(lambda: gm(x))
            replace_forward(True)
            replaced = best_seconds(lambda: gm(x))
            rows.append({"fp32_ms": 1e3 * f, "hook_ms": 1e3 * hook, "replaced_forward_ms": 1e3 * replaced,
                         "hook_vs_fp32": hook / f, "replaced_vs_fp32": replaced / f})
            print(json.dumps(rows[-1]), flush=True)
    result = {"command": "python " + " ".join(sys.argv), "arch": args.arch, "batch": len(x),
              "integer_layers": len(layers), "identical_outputs": identical, "rounds": rows, "machine": machine()}
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
