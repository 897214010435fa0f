#!/usr/bin/env python3
"""FP32 baselines of the hard-to-quantize families on Fashion-MNIST (issue 22), where every PTQ/QAT row starts.

One step per arch (``compressor/models/mobile_cifar.py``), each ``apps/compress_classifier.py`` under its recipe
``schedules/fashion_mnist/<arch>_fp32.yaml`` (cosine LR; the recipe states the budget). Each step writes
``--out-dir/<arch>_fp32.json`` atomically with its exact command, the machine, training images per second, the
final test top-1 on all 10,000 test images with its 95 % interval, and the best validation top-1. A step whose
JSON exists is skipped; a training killed mid-way resumes from its last epoch's checkpoint (``--resume-from``),
so the benchmark can run in pieces:

    OMP_NUM_THREADS=1 python benchmarks/train_families.py [--arch mobilenet_v2_cifar ...] [--list]

Checkpoints stay in ``--work`` (runs/families by default), never in git.
"""

import argparse
import json
import os
import sys

from accuracy_stats import machine  # benchmarks/ (the script's folder is on sys.path)
from fashion_mnist_accuracy import accuracy, resumable_run, write_json

# arch -> (epochs, fraction of the 54,000 training images per epoch, batch, lr, weight decay, optimizer);
# budgets sized to this 2-core machine (training images/s on one thread in the docstring of each recipe)
PLAN = {
    "mobilenet_v2_cifar": (8, 0.25, 128, 0.1, 1e-4, "sgd"),
    "vit_cifar": (8, 0.25, 128, 1e-3, 0.05, "adamw"),
    "efficientnet_b0_cifar": (8, 0.25, 128, 0.1, 1e-4, "sgd"),
    "mobilenet_v3_small_cifar": (8, 0.25, 128, 0.1, 1e-4, "sgd"),
    "convnext_cifar": (8, 0.25, 128, 2e-3, 0.05, "adamw"),
}


def command(arch, work):
    epochs, etrs, batch, lr, wd, opt = PLAN[arch]
    return ["apps/compress_classifier.py", "-a", arch, "--dataset", "fashion_mnist", "--epochs", str(epochs),
            "-b", str(batch), "--lr", str(lr), "--wd", str(wd), "--optimizer", opt, "--etrs", str(etrs),
            "--seed", "1", "--compress", f"schedules/fashion_mnist/{arch}_fp32.yaml", "-o", work, "-n", arch,
            "-p", "50"]


def train(arch, work):
    cmd = command(arch, work)
    folder, seconds, resumed = resumable_run(cmd, work, arch)
    summary = json.load(open(os.path.join(folder, "summary.json")))
    epochs, etrs = PLAN[arch][:2]
    images = int(round(54000 * etrs)) * epochs
    result = {"arch": arch, "command": "python " + " ".join(cmd), "recipe": f"schedules/fashion_mnist/{arch}_fp32.yaml",
              "epochs": epochs, "train_images_seen": images, "test": accuracy(summary["test"]["top1"], 10000),
              "best_val": summary["best"], "run_dir": folder,
              "checkpoint": os.path.join(folder, "checkpoint.pth.tar"),
              "seconds_this_piece": seconds, "wall_time_s": summary.get("wall_time_s")}
    if resumed:
        result["resumed_from"] = resumed
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="*", default=list(PLAN), choices=list(PLAN))
    p.add_argument("--work", default="runs/families", help="run folders (checkpoints) go here")
    p.add_argument("--out-dir", default="docs/benchmarks/fashion_mnist/families")
    p.add_argument("--list", action="store_true", help="print each step's command and exit")
    args = p.parse_args()
    if args.list:
        for arch in args.arch:
            print("python " + " ".join(command(arch, args.work)))
        return 0
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(args.out_dir, exist_ok=True)
    for arch in args.arch:
        out = os.path.join(args.out_dir, f"{arch}_fp32.json")
        if os.path.exists(out):
            print(f"{arch}: done ({out})")
            continue
        print(f"{arch}: training ...", flush=True)
        result = train(arch, args.work)
        result["machine"] = machine()
        write_json(out, result)
        print(f"{arch}: test top-1 {result['test']['top1']:.2f} % -> {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
