#!/usr/bin/env python3
"""Low-bit PTQ beyond round-to-nearest: RTN (several clip methods) vs + bias correction vs AdaRound
(vs both), torch.ao's RTN beside; then automatic mixed precision at the size of uniform W4 vs uniform W4;
the time each method takes. One run, one JSON.

    python benchmarks/ptq_rounding.py --checkpoint FP32_CKPT --out docs/benchmarks/ptq_rounding_digits.json
"""

import argparse
import json
import os
import platform
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from compressor.app.sensitivity import choose_bits, measure_sensitivity  # noqa: E402
from compressor.core.io import load_checkpoint  # noqa: E402
from compressor.core.state_keys import load_weights, model_state  # noqa: E402
from compressor.data import load_data  # noqa: E402
from compressor.data.loaders import load_calibration_data  # noqa: E402
from compressor.models import arch_family, create_model  # noqa: E402
from compressor.quantization.linear.ptq import PostTrainLinearQuantizer  # noqa: E402
from compressor.quantization.linear.refine import calibration_images, refine  # noqa: E402
from compressor.quantization.mixed_precision import total_bits  # noqa: E402

warnings.filterwarnings("ignore")
MODE = {"activations": "ASYMMETRIC_UNSIGNED", "weights": "SYMMETRIC"}


@torch.no_grad()
def top1(model, loader):
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    return 100.0 * correct / total


def quantize(
    model, calib, images, bits_w, bits_a, clip, adaround=False, bias_correction=False, iterations=1000, overrides=None
):
    """(prepared model, seconds): calibrate, then refine as asked."""
    start = time.perf_counter()
    q = PostTrainLinearQuantizer(
        model,
        bits_activations=bits_a,
        bits_parameters=bits_w,
        clip_acts=clip,
        per_channel_wts=True,
        mode=MODE,
        clip_half_range=True,
        overrides=overrides,
        adaround=adaround,
        bias_correction=bias_correction,
        adaround_iterations=iterations,
    )
    gm = q.prepare_model()
    q.calibrate(calib)
    if adaround or bias_correction:
        refine(q, images)
    return gm, time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--arch", default="resnet20_cifar")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--data", default=None, help="dataset folder (not for digits)")
    ap.add_argument("--calibration-size", type=int, default=256)
    ap.add_argument("--holdout-size", type=int, default=256, help="sensitivity: training images after calibration")
    ap.add_argument("--iterations", type=int, default=1000, help="AdaRound steps per layer")
    ap.add_argument("--clips", default="NONE,AVG,LAPLACE")
    ap.add_argument("--configs", default="W4A8,W4A4")
    ap.add_argument("--skip-mixed", action="store_true")
    ap.add_argument("--mp-bits", default="2,3,4,5,6,8", help="candidate weight widths of the sensitivity scan")
    ap.add_argument("--mp-avg-bits", default="4", help="budgets (bits per weight) to compare against uniform")
    ap.add_argument("--mp-adaround", action="store_true", help="also compare with AdaRound on both sides")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = create_model(args.arch, args.dataset)
    load_weights(model, model_state(load_checkpoint(args.checkpoint)))
    model.eval()
    shape = arch_family(args.arch)[1]
    _, _, test = load_data(args.dataset, args.data, shape, 128)
    full = load_calibration_data(args.dataset, args.data, shape, 128, args.calibration_size + args.holdout_size)
    idx = full.dataset.indices
    calib = torch.utils.data.DataLoader(
        torch.utils.data.Subset(full.dataset.dataset, idx[: args.calibration_size]), batch_size=128
    )
    images = calibration_images(calib, "cpu")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{cpu}, {platform.machine()}, {torch.backends.cpu.get_cpu_capability()}, "
        f"torch {torch.__version__}, 1 thread (OMP_NUM_THREADS=1, taskset -c 1, core shared)",
        "arch": args.arch,
        "dataset": args.dataset,
        "calibration_images": args.calibration_size,
        "test_images": len(test.dataset),
        "adaround_iterations": args.iterations,
        "fp32_top1": top1(model, test),
        "configs": {},
    }
    print(f"FP32 top-1 {result['fp32_top1']:.3f}", flush=True)

    def save():
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out + ".tmp", "w") as f:
            json.dump(result, f, indent=2)
        os.replace(args.out + ".tmp", args.out)

    for label in [c for c in args.configs.split(",") if c]:
        bits_w, bits_a = int(label[1 : label.index("A")]), int(label[label.index("A") + 1 :])
        entry = result["configs"].setdefault(label, {"rtn": {}})
        for clip in args.clips.split(","):
            gm, s = quantize(model, calib, images, bits_w, bits_a, clip)
            entry["rtn"][clip] = {"top1": top1(gm, test), "seconds": round(s, 2)}
            print(label, "RTN", clip, entry["rtn"][clip], flush=True)
            save()
        clip = max(entry["rtn"], key=lambda c: entry["rtn"][c]["top1"])  # the best RTN clip (on test: favours RTN)
        entry["best_clip"] = clip
        for method, kw in (
            ("bias_correction", dict(bias_correction=True)),
            ("adaround", dict(adaround=True, iterations=args.iterations)),
            ("adaround+bias_correction", dict(adaround=True, bias_correction=True, iterations=args.iterations)),
        ):
            gm, s = quantize(model, calib, images, bits_w, bits_a, clip, **kw)
            entry[method] = {"top1": top1(gm, test), "seconds": round(s, 2)}
            print(label, method, clip, entry[method], flush=True)
            save()
        if bits_a == 8:
            from ptq_accuracy import torch_ao

            start = time.perf_counter()
            ao = torch_ao(model, calib, bits_w)
            entry["torch_ao_rtn"] = {"top1": top1(ao, test), "seconds": round(time.perf_counter() - start, 2)}
            print(label, "torch.ao", entry["torch_ao_rtn"], flush=True)
            save()

    if args.skip_mixed:
        return
    # mixed precision at the size of uniform Wb (every conv/linear at b bits), A8, vs uniform WbA8
    holdout = torch.utils.data.Subset(full.dataset.dataset, idx[args.calibration_size :])
    xs, ys = zip(*(holdout[i] for i in range(len(holdout))))
    base = dict(
        bits_activations=8, bits_parameters=4, per_channel_wts=True, mode=MODE, clip_acts="AVG", clip_half_range=True
    )
    start = time.perf_counter()
    candidates = [int(b) for b in args.mp_bits.split(",")]
    table = measure_sensitivity(model, base, calib, torch.stack(xs), torch.as_tensor(ys), candidates, [], "cpu")
    result["mixed_precision"] = {
        "sensitivity_seconds": round(time.perf_counter() - start, 1),
        "candidates": candidates,
        "holdout_images": len(holdout),
        "budgets": {},
    }
    save()
    sizes = {n: e["params"] for n, e in table["layers"].items()}
    methods = [("rtn", {})] + (
        [("adaround", dict(adaround=True, iterations=args.iterations))] if args.mp_adaround else []
    )
    for avg in [int(b) for b in args.mp_avg_bits.split(",")]:
        bits, budget = choose_bits(table, avg_bits=avg)
        mp = {"bits": bits, "avg_bits": total_bits(sizes, bits) / sum(sizes.values()), "weights": sum(sizes.values())}
        result["mixed_precision"]["budgets"][f"W{avg}"] = mp
        for method, kw in methods:
            for name, over in ((f"uniform_w{avg}", None), ("mixed", {n: {"bits_weights": b} for n, b in bits.items()})):
                gm, s = quantize(model, calib, images, avg, 8, "AVG", overrides=over, **kw)
                mp[f"{name}_{method}"] = {"top1": top1(gm, test), "seconds": round(s, 2)}
                print("mixed precision", avg, name, method, mp[f"{name}_{method}"], flush=True)
                save()


if __name__ == "__main__":
    main()
