#!/usr/bin/env python3
"""Fashion-MNIST accuracy benchmark (issue 9): PTQ grid beside torch.ao, 8-bit QAT, PACT, DoReFa, TWN, TTQ.

Everything starts from ONE FP32 resnet20_cifar checkpoint (schedules/fashion_mnist/resnet20_cifar_fp32.yaml)
and is tested on all 10,000 Fashion-MNIST test images. The work is a list of steps, each one command
run as a subprocess; each step writes its own JSON under --out-dir atomically (temp file, then rename)
with its exact command, the machine (CPU model, torch.backends.cpu.get_cpu_capability()) and every
top-1 with its count of correct images and 95 % Wilson interval. A step whose JSON exists is skipped,
so the benchmark resumes where it stopped; a fine-tuning killed mid-way resumes from its last epoch's
checkpoint. One CPU core runs it all in about 80 minutes (PTQ grid ~25, each fine-tuning 6-10):

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/fashion_mnist_accuracy.py \\
        --fp32-run runs/fashion_mnist/fp32___<stamp> [--steps ptq_w8a8 qat_8bit_seed1 ...] [--list]

Fine-tunings are short (2-3 epochs of a random quarter of the 54,000 training images each, small
LR; the recipes under schedules/fashion_mnist/ say why): a 2-core machine cannot afford Distiller's
CIFAR schedules, and these numbers are what a user gets from that budget, not the methods' ceiling.
Tables for docs/results.md: benchmarks/fashion_mnist_tables.py.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import time

from accuracy_stats import machine, wilson  # benchmarks/ (the script's folder is on sys.path)

from compressor.core.io import atomic_write

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

DATASET = "fashion_mnist"
FINE_TUNE = {  # step -> (recipe, epochs, lr, seed)
    "qat_8bit_seed1": ("resnet20_cifar_qat_8bit.yaml", 2, 0.001, 1),
    "qat_8bit_seed2": ("resnet20_cifar_qat_8bit.yaml", 2, 0.001, 2),
    "pact_w4a4": ("resnet20_cifar_pact_w4a4.yaml", 3, 0.01, 1),
    "dorefa_w4a4": ("resnet20_cifar_dorefa_w4a4.yaml", 3, 0.01, 1),
    "twn_ternary_a8": ("resnet20_cifar_twn_ternary_a8.yaml", 3, 0.01, 1),
    "ttq_ternary_a8": ("resnet20_cifar_ttq_ternary_a8.yaml", 3, 0.01, 1),
}
CLIPPING = ["AVG", "N_STD", "GAUSS", "LAPLACE", "PERCENTILE", "KL", "MSE"]  # NONE clips nothing either way
# PTQ variants: the defaults (input and logits unclipped, ranges keep [avg_min, avg_max]); "before_fix"
# (both as before issue 9: --clip-boundaries --no-keep-avg); "own_range" (input and logits unclipped, each
# method's own range: --no-keep-avg), which separates the two parts of the fix.
VARIANT_FLAGS = {"before_fix": ["--clip-boundaries", "--no-keep-avg"], "own_range": ["--no-keep-avg"]}
# in the order they run: what the done-when needs first, the rest as time allows
ORDER = ["fp32", "ptq_w8a8", "ptq_w4a8", "qat_8bit_seed1", "qat_8bit_seed2", "pact_w4a4", "ptq_w6a6", "ptq_w4a4",
         "ptq_w8a8_before_fix", "dorefa_w4a4", "twn_ternary_a8", "ttq_ternary_a8", "ptq_w4a4_own_range",
         "ptq_w4a4_before_fix", "ptq_w8a8_own_range", "ptq_w6a6_own_range", "ptq_w4a8_own_range"]


def ptq_command(step, checkpoint, out):
    config = step.split("_")[1].upper()
    cmd = ["benchmarks/ptq_accuracy.py", "--dataset", DATASET, "--checkpoint", checkpoint, "--configs", config,
           "--skip-calibration-cost", "--no-integer-arithmetic", "--out", out]
    variant = step.split("_", 2)[2] if step.count("_") >= 2 else None
    if variant:
        cmd += ["--methods", *CLIPPING, *VARIANT_FLAGS[variant], "--skip-torch-ao"]
    return cmd


def fine_tune_command(step, checkpoint, work):
    recipe, epochs, lr, seed = FINE_TUNE[step]
    return ["apps/compress_classifier.py", "-a", "resnet20_cifar", "--dataset", DATASET, "--epochs", str(epochs),
            "-b", "128", "--lr", str(lr), "--wd", "5e-4", "--etrs", "0.25", "--evs", "0.5", "--seed", str(seed),
            "-p", "0", "--exp-load-weights-from", checkpoint, "--compress", f"schedules/fashion_mnist/{recipe}",
            "-o", work, "-n", step]


def run(cmd, log_path):
    """Run ``python cmd`` from the repository root, output to ``log_path``; returns (seconds, exit code)."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    start = time.perf_counter()
    with open(log_path, "a") as log:
        code = subprocess.call([sys.executable, *cmd], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return round(time.perf_counter() - start, 1), code


def accuracy(top1, n):
    correct = int(round(top1 * n / 100))
    lo, hi = wilson(correct, n)
    return {"top1": 100.0 * correct / n, "correct": correct, "n": n, "ci95": [round(lo, 3), round(hi, 3)]}


def run_folders(work, name):
    return sorted(glob.glob(os.path.join(work, f"{name}___*")))


def fp32_step(args):
    """The FP32 baseline: its training command, final test top-1 and best validation, from its run folder."""
    summary = json.load(open(os.path.join(args.fp32_run, "summary.json")))
    log_file = glob.glob(os.path.join(args.fp32_run, "*.log"))
    command = None
    for line in open(log_file[0]) if log_file else ():
        if "Command line:" in line:
            command = "python " + line.split("Command line:", 1)[1].strip()
            break
    return {"command": command, "checkpoint": args.checkpoint, "test": accuracy(summary["test"]["top1"], 10000),
            "best_val": summary["best"], "epochs": summary["epochs"], "run_dir": args.fp32_run}


def resumable_run(cmd, work, name):
    """Run the app command ``cmd`` (run folders ``work/name___*``) to completion once: a finished run (its
    summary.json) is reused; a run killed mid-way continues from its last epoch's checkpoint (``--resume-from``
    in place of ``--exp-load-weights-from``: the same batches, the same result). Returns (run folder, seconds of
    this call, the checkpoint it resumed from or None)."""
    def finished():
        return [f for f in run_folders(work, name) if os.path.exists(os.path.join(f, "summary.json"))]

    done, seconds, resumed = finished(), 0.0, None
    if not done:
        partial = [f for f in run_folders(work, name) if os.path.exists(os.path.join(f, "checkpoint.pth.tar"))]
        go = cmd
        if partial:
            resumed = os.path.join(partial[-1], "checkpoint.pth.tar")
            if "--exp-load-weights-from" in go:
                i = go.index("--exp-load-weights-from")
                go = go[:i] + go[i + 2:]
            go = go + ["--resume-from", resumed]
        seconds, code = run(go, os.path.join(work, f"{name}.out"))
        if code != 0:
            raise RuntimeError(f"{name} failed (exit {code}); see {os.path.join(work, name + '.out')}")
        done = finished()
    return done[-1], seconds, resumed


def fine_tune_step(step, args):
    cmd = fine_tune_command(step, args.checkpoint, args.work)
    folder, seconds, resumed = resumable_run(cmd, args.work, step)
    summary = json.load(open(os.path.join(folder, "summary.json")))
    recipe, epochs, lr, seed = FINE_TUNE[step]
    result = {"command": "python " + " ".join(cmd), "recipe": f"schedules/fashion_mnist/{recipe}", "epochs": epochs,
              "lr": lr, "seed": seed, "train_images_per_epoch": 13500, "test": accuracy(summary["test"]["top1"], 10000),
              "best_val": summary["best"], "model_size_bits": summary.get("model_size_bits"),
              "bits_weights": summary.get("bits_weights"), "bits_activations": summary.get("bits_activations"),
              "run_dir": folder, "seconds": seconds}
    if resumed:
        result["resumed_from"] = resumed
    return result


def write_json(path, data):
    text = json.dumps(data, indent=1)

    def dump(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(path, dump)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fp32-run", required=True, help="run folder of the FP32 baseline (summary.json, checkpoints)")
    p.add_argument("--checkpoint", default=None,
                   help="FP32 checkpoint (default: the run's checkpoint.pth.tar, the final epoch's model, "
                        "the one its summary.json tested)")
    p.add_argument("--out-dir", default=os.path.join(ROOT, "docs", "benchmarks", DATASET))
    p.add_argument("--work", default=os.path.join(ROOT, "runs", "fashion_mnist_bench"),
                   help="run folders and logs of the steps (not committed)")
    p.add_argument("--steps", nargs="+", default=ORDER, choices=ORDER)
    p.add_argument("--list", action="store_true", help="print each step's state and command, run nothing")
    args = p.parse_args()
    args.fp32_run = os.path.abspath(args.fp32_run)
    args.checkpoint = os.path.abspath(args.checkpoint or os.path.join(args.fp32_run, "checkpoint.pth.tar"))
    os.makedirs(args.work, exist_ok=True)
    for step in [s for s in ORDER if s in args.steps]:
        out = os.path.join(args.out_dir, f"{step}.json")
        if step == "fp32":
            cmd = ["(reads", args.fp32_run + ")"]
        elif step.startswith("ptq_"):
            cmd = ptq_command(step, args.checkpoint, os.path.relpath(out, ROOT))
        else:
            cmd = fine_tune_command(step, args.checkpoint, args.work)
        if args.list:
            print(f"{step:28s} {'done' if os.path.exists(out) else 'to run'}: python {' '.join(cmd)}")
            continue
        if os.path.exists(out):
            print(f"{step}: done ({os.path.relpath(out, ROOT)})", flush=True)
            continue
        print(f"{step}: running  python {' '.join(cmd)}", flush=True)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        if step == "fp32":
            data = fp32_step(args)
        elif step.startswith("ptq_"):
            seconds, code = run(cmd, os.path.join(args.work, f"{step}.out"))
            if code != 0:
                raise SystemExit(f"{step} failed (exit {code}); see {os.path.join(args.work, step + '.out')}")
            data = json.load(open(out))  # written (atomically) by ptq_accuracy.py itself
            data["seconds"] = seconds
        else:
            data = fine_tune_step(step, args)
        data = {"step": step, "started": started, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                "machine": machine(), **data}
        write_json(out, data)
        print(f"{step}: written {os.path.relpath(out, ROOT)}", flush=True)


if __name__ == "__main__":
    main()
