#!/usr/bin/env python3
"""Fine-tune FP32 checkpoints under each low-bit recipe of schedules/quant_aware_train/ and collect test top-1.

Runs the recipes one after another through apps/compress_classifier.py (the commands in
the recipes' comments), optionally with knowledge distillation from the FP32 checkpoint:

    python benchmarks/low_bit_accuracy.py --fp32 resnet20_cifar=FP32.pth.tar \\
        --fp32 preact_resnet20_cifar=PREACT_FP32.pth.tar --out docs/benchmarks/low_bit_accuracy.json
"""

import argparse
import glob
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
EPOCHS, LR = 8, 0.01


def run(arch, recipe, fp32, out_dir, name, kd=False):
    cmd = [sys.executable, os.path.join(ROOT, "apps", "compress_classifier.py"), "-a", arch, "--dataset", "digits",
           "--epochs", str(EPOCHS), "-b", "64", "--lr", str(LR), "-p", "0", "--exp-load-weights-from", fp32,
           "--compress", recipe, "--deterministic", "-o", out_dir, "-n", name]
    if kd:
        cmd += ["--kd-teacher", arch, "--kd-resume", fp32, "--kd-temperature", "4", "--kd-distill-wt", "0.7",
                "--kd-student-wt", "0.3"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:], "command": " ".join(cmd)}
    path = sorted(glob.glob(os.path.join(out_dir, f"{name}___*")))[-1]  # this run's folder (timestamped)
    summary = json.load(open(os.path.join(path, "summary.json")))
    return {"test_top1": summary["test"]["top1"], "best_val_top1": summary["best"]["top1"],
            "model_size_bits": summary.get("model_size_bits"), "seconds": round(seconds, 1),
            "command": " ".join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd[1:])}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fp32", action="append", required=True, metavar="ARCH=CHECKPOINT")
    p.add_argument("--only", default="", help="comma-separated substrings of recipe names to run")
    p.add_argument("--kd", default="pact_w4a4,dorefa_w4a4", help="recipes also run with KD from the FP32 checkpoint")
    p.add_argument("--work", default="/tmp/low_bit_runs")
    p.add_argument("--skip-existing", action="store_true", help="keep results already in --out")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    results = json.load(open(args.out)) if args.out and os.path.exists(args.out) else {}
    results.setdefault("machine", f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    runs = results.setdefault("runs", {})
    for spec in args.fp32:
        arch, fp32 = spec.split("=", 1)
        for recipe in sorted(glob.glob(os.path.join(ROOT, "schedules", "quant_aware_train", f"{arch}_*.yaml"))):
            base = os.path.basename(recipe)[len(arch) + 1:-5]
            if not base or (args.only and not any(s in base for s in args.only.split(","))):
                continue
            variants = [(base, False)] + ([(base + "+kd", True)] if any(base == k for k in args.kd.split(",")) else [])
            for name, kd in variants:
                key = f"{arch}/{name}"
                if args.skip_existing and "test_top1" in runs.get(key, {}):
                    continue
                runs[key] = run(arch, recipe, fp32, args.work, key.replace("/", "_"), kd)
                print(key, {k: v for k, v in runs[key].items() if k != "command"}, flush=True)
                if args.out:
                    with open(args.out + ".tmp", "w") as f:
                        json.dump(results, f, indent=1)
                    os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
