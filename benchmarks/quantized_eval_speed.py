#!/usr/bin/env python3
"""Cost of the integer-exact quantized evaluation against the FP32 forward, in one process (issue 23, item 5).

W8A8 post-training quantization (per-channel weights, 256 calibration images) of a trained checkpoint;
one batch of test-shaped images timed through the FP32 model and through the quantized model three ways: in float
fake quantization (the default evaluation), with the integer simulation replacing the layer's forward
(``IntegerArithmetic.attach``: ``integer_arithmetic: true`` and the export's agreement check) and as a forward hook
after the float convolution (the way before); best of 3 rounds, alternating. The two integer paths are checked to give
identical outputs. ``--test-images N`` also evaluates the first N test images in both arithmetics: top-1 of each and
the share of images where their predictions agree.

    OMP_NUM_THREADS=1 python benchmarks/quantized_eval_speed.py \\
        --checkpoint runs/fashion_mnist/fp32___<stamp>/checkpoint.pth.tar \\
        --out docs/benchmarks/quantized_eval_speed_avx2.json
"""

import argparse
import copy
import functools
import json
import sys

import torch
from accuracy_stats import best_seconds, machine, wilson  # benchmarks/ (the script's folder is on sys.path)
from ptq_accuracy import ours_quantizer, torch_ao

from compressor.core.io import atomic_write_text, load_checkpoint
from compressor.core.state_keys import load_weights
from compressor.data.loaders import load_calibration_data, load_data
from compressor.models import create_model
from compressor.quantization.linear.integer_sim import IntegerArithmetic, _integer_forward, integer_evaluation


def best_of_3(fn):
    return best_seconds(fn, iters=4, rounds=3)


@torch.no_grad()
def compare_top1(gm, args):
    """Top-1 of the float fake quantization and of the integer arithmetic on the first test images."""
    _, _, test = load_data(args.dataset, None, (3, 32, 32), 250, validation_split=0.1)
    preds = {"float": [], "integer": []}
    targets, seen = [], 0
    for images, target in test:
        for mode, on in (("float", False), ("integer", True)):
            with integer_evaluation(gm, on):
                preds[mode].append(gm(images).topk(1, 1).indices.flatten())
        targets.append(target)
        seen += len(target)
        if seen >= args.test_images:
            break
    target = torch.cat(targets)[: args.test_images]
    out = {"images": len(target)}
    for mode, p in preds.items():
        correct = int((torch.cat(p)[: len(target)] == target).sum())
        lo, hi = wilson(correct, len(target))
        out[mode] = {"top1": 100.0 * correct / len(target), "ci95": [round(lo, 3), round(hi, 3)]}
    same = torch.cat(preds["float"])[: len(target)] == torch.cat(preds["integer"])[: len(target)]
    out["same_prediction"] = 100.0 * float(same.float().mean())
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--arch", default="resnet20_cifar")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--test-images", type=int, default=0, help="also compare both arithmetics' top-1 on this many")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    model = create_model(args.arch, args.dataset)
    load_weights(model, load_checkpoint(args.checkpoint)["state_dict"])
    model.eval()
    fp32 = copy.deepcopy(model)
    calib = load_calibration_data(args.dataset, None, (3, 32, 32), 128, 256)
    x = torch.cat([images for images, _ in calib])[: args.batch]
    ao = torch_ao(model, calib, 8)
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
        with integer_evaluation(gm, True):
            replace_forward(True)
            a = gm(x)
            replace_forward(False)
            identical = torch.equal(a, gm(x))
            replace_forward(True)
        for _ in range(2):
            f = best_of_3(lambda: fp32(x))
            with integer_evaluation(gm, False):
                fake = best_of_3(lambda: gm(x))
            with integer_evaluation(gm, True):
                replace_forward(False)
                hook = best_of_3(lambda: gm(x))
                replace_forward(True)
                replaced = best_of_3(lambda: gm(x))
            converted = best_of_3(lambda: ao(x))
            rows.append({"fp32_ms": 1e3 * f, "float_fake_quant_ms": 1e3 * fake, "hook_ms": 1e3 * hook,
                         "replaced_forward_ms": 1e3 * replaced, "torch_ao_int8_ms": 1e3 * converted,
                         "float_fake_quant_vs_fp32": fake / f, "hook_vs_fp32": hook / f,
                         "replaced_vs_fp32": replaced / f, "torch_ao_int8_vs_fp32": converted / f})
            print(json.dumps(rows[-1]), flush=True)
    result = {"command": "OMP_NUM_THREADS=1 python " + " ".join(sys.argv), "arch": args.arch, "batch": len(x),
              "integer_layers": len(layers), "identical_outputs": identical, "rounds": rows, "machine": machine()}
    if args.test_images:
        result["top1"] = compare_top1(gm, args)
        print(json.dumps(result["top1"]), flush=True)
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
