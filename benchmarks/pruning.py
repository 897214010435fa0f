#!/usr/bin/env python3
"""Fashion-MNIST pruning benchmark (issue 24): element-wise AGP at 50/70/80/90 % sparsity, filter pruning to
30/50 % fewer MACs with thinning, and the thinned model quantized to INT8, each against the same dense FP32
resnet20_cifar checkpoint (schedules/fashion_mnist/resnet20_cifar_fp32.yaml).

Each step is one command run as a subprocess and writes its own JSON under --out-dir (atomically) with its exact
command, the machine and the test top-1 on all 10,000 images with a 95 % Wilson interval; a step whose JSON
exists is skipped, and a fine-tuning killed mid-way resumes from its last epoch's checkpoint, so the benchmark runs
in pieces. Each pruned model is exported to ONNX (FP32; the INT8 steps quantize with apps/post_train_quant.py); the
``latency`` step times every exported file with ONNX Runtime in one process, in turn, against the dense FP32 file
(benchmarks/inference_speed.py's paired timer), and records each model's parameters and MACs (PyTorch's flop
counter, one 32x32 image) and weight sparsity.

    OMP_NUM_THREADS=1 python benchmarks/pruning.py --fp32-run runs/fashion_mnist/fp32___<stamp> \\
        [--steps filters50 agp80 ...] [--list]
"""

import argparse
import glob
import json
import os
import sys

import torch
from accuracy_stats import machine  # benchmarks/ (the script's folder is on sys.path)
from fashion_mnist_accuracy import accuracy, run, run_folders, write_json
from inference_speed import machine as runtime_machine
from inference_speed import time_onnx_files

from compressor.app.summary import sparsity_summary
from compressor.core.io import load_checkpoint
from compressor.core.state_keys import load_weights, model_state
from compressor.models import create_model
from compressor.pruning.thinning import apply_record

DATASET = "fashion_mnist"
# step -> epochs
FINE_TUNE = {"filters50": 6, "agp80": 6, "filters30": 6, "agp50": 6, "agp90": 6, "agp70": 6, "filters50b8": 6}
LR = 0.02
# step -> the FP32 model it quantizes
INT8 = {"int8_dense": "fp32", "int8_filters50": "filters50", "int8_filters50b8": "filters50b8"}
ORDER = ["fp32", "filters50", "agp80", "int8_dense", "int8_filters50", "filters30", "agp50", "agp90", "agp70",
         "filters50b8", "int8_filters50b8", "latency"]


def fine_tune_command(step, checkpoint, work):
    return ["apps/compress_classifier.py", "-a", "resnet20_cifar", "--dataset", DATASET, "--epochs",
            str(FINE_TUNE[step]), "-b", "128", "--lr", str(LR), "--wd", "5e-4", "--etrs", "0.25", "--evs", "0.5",
            "--seed", "1", "-p", "0", "--exp-load-weights-from", checkpoint, "--compress",
            f"schedules/fashion_mnist/resnet20_cifar_{step}.yaml", "-o", work, "-n", step]


def export_command(checkpoint, work, name):
    """FP32 ONNX of a (pruned, thinned) checkpoint, and its test top-1 (--evaluate)."""
    return ["apps/compress_classifier.py", "-a", "resnet20_cifar", "--dataset", DATASET, "--evaluate",
            "--exp-load-weights-from", checkpoint, "--export-onnx", "-b", "250", "-o", work, "-n", name]


def ptq_command(checkpoint, work, name):
    return ["apps/post_train_quant.py", "-a", "resnet20_cifar", "--dataset", DATASET, "--exp-load-weights-from",
            checkpoint, "--qe-per-channel", "--qeca", "avg", "--calibration-size", "512", "--export-onnx", "-b",
            "250", "-o", work, "-n", name]


def _run_once(cmd, work, name, resume_flag=None):
    """Run ``cmd`` unless a finished run folder ``name___*`` exists; resume a killed training."""
    done = [f for f in run_folders(work, name) if os.path.exists(os.path.join(f, "summary.json"))]
    seconds = 0.0
    if not done:
        go = cmd
        partial = [f for f in run_folders(work, name) if os.path.exists(os.path.join(f, "checkpoint.pth.tar"))]
        if partial and resume_flag:
            i = go.index(resume_flag)
            go = go[:i] + ["--resume-from", os.path.join(partial[-1], "checkpoint.pth.tar")] + go[i + 2:]
        seconds, code = run(go, os.path.join(work, f"{name}.out"))
        if code != 0:
            raise RuntimeError(f"{name} failed (exit {code}); see {os.path.join(work, name + '.out')}")
        done = [f for f in run_folders(work, name) if os.path.exists(os.path.join(f, "summary.json"))]
    return done[-1], seconds


def model_facts(checkpoint):
    """Parameters, MACs of one image (all, and on nonzero weights) and weight sparsity of a checkpoint's model
    (thinned shapes restored), with the dense architecture's."""
    data = load_checkpoint(checkpoint)
    model = create_model("resnet20_cifar", DATASET)
    if isinstance(data, dict) and data.get("thinning"):
        apply_record(model, data["thinning"])
    load_weights(model, model_state(data))
    facts = sparsity_summary(model, torch.zeros(1, 3, 32, 32), create_model("resnet20_cifar", DATASET))
    return facts | {"thinned": bool(isinstance(data, dict) and data.get("thinning"))}


def _onnx_of(folder):
    found = sorted(glob.glob(os.path.join(folder, "*.onnx")))
    return found[0] if found else None


def step_result(step, args):
    work = args.work
    if step == "fp32":
        folder, seconds = _run_once(export_command(args.checkpoint, work, "fp32_export"), work, "fp32_export")
        summary = json.load(open(os.path.join(folder, "summary.json")))
        return {"command": "python " + " ".join(export_command(args.checkpoint, work, "fp32_export")),
                "checkpoint": args.checkpoint, "test": accuracy(summary["test"]["top1"], 10000),
                "onnx": _onnx_of(folder), **model_facts(args.checkpoint)}
    if step in FINE_TUNE:
        cmd = fine_tune_command(step, args.checkpoint, work)
        folder, seconds = _run_once(cmd, work, step, "--exp-load-weights-from")
        summary = json.load(open(os.path.join(folder, "summary.json")))
        checkpoint = os.path.join(folder, "checkpoint.pth.tar")
        exported, _ = _run_once(export_command(checkpoint, work, f"{step}_export"), work, f"{step}_export")
        return {"command": "python " + " ".join(cmd), "recipe": f"schedules/fashion_mnist/resnet20_cifar_{step}.yaml",
                "epochs": FINE_TUNE[step], "lr": LR, "train_images_per_epoch": 13500,
                "test": accuracy(summary["test"]["top1"], 10000), "best_val": summary["best"],
                "checkpoint": checkpoint, "onnx": _onnx_of(exported), "seconds": seconds, **model_facts(checkpoint)}
    if step in INT8:
        source = json.load(open(os.path.join(args.out_dir, f"{INT8[step]}.json")))
        cmd = ptq_command(source["checkpoint"], work, step)
        folder, seconds = _run_once(cmd, work, step)
        summary = json.load(open(os.path.join(folder, "summary.json")))
        return {"command": "python " + " ".join(cmd), "from": INT8[step],
                "test": accuracy(summary["quantized"]["top1"], 10000),
                "onnx": _onnx_of(folder), "export": summary.get("export"), "seconds": seconds}
    if step == "latency":
        rows = {}
        for name in ORDER[:-1]:
            path = os.path.join(args.out_dir, f"{name}.json")
            if os.path.exists(path) and json.load(open(path)).get("onnx"):
                rows[name] = json.load(open(path))["onnx"]
        paths = [rows.pop("fp32")] + list(rows.values())
        timing = time_onnx_files(paths, args.batch, args.iters, 5)
        names = ["fp32"] + list(rows)
        return {"command": "python " + " ".join(sys.argv), "batch": args.batch, "iters": args.iters,
                "threads": torch.get_num_threads(), "runtime": runtime_machine(),
                "files": {n: timing["files"][p] | {"onnx": p, "bytes": os.path.getsize(p)}
                          for n, p in zip(names, paths)}}
    raise ValueError(step)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fp32-run", required=True, help="the FP32 training's run folder (its checkpoint.pth.tar)")
    p.add_argument("--steps", nargs="*", default=ORDER, choices=ORDER)
    p.add_argument("--work", default="runs/pruning", help="run folders (checkpoints, ONNX files) go here")
    p.add_argument("--out-dir", default="docs/benchmarks/fashion_mnist/pruning")
    p.add_argument("--batch", type=int, default=32, help="latency: images per ONNX Runtime call")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--list", action="store_true", help="print each fine-tuning's command and exit")
    args = p.parse_args()
    args.checkpoint = os.path.join(args.fp32_run, "checkpoint.pth.tar")
    if args.list:
        for step in FINE_TUNE:
            print("python " + " ".join(fine_tune_command(step, args.checkpoint, args.work)))
        return 0
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(args.out_dir, exist_ok=True)
    for step in args.steps:
        out = os.path.join(args.out_dir, f"{step}.json")
        if os.path.exists(out) and step != "latency":
            print(f"{step}: done ({out})")
            continue
        print(f"{step} ...", flush=True)
        result = step_result(step, args)
        result["machine"] = machine()
        write_json(out, result)
        print(f"{step}: {result.get('test', {}).get('top1', '')} -> {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
