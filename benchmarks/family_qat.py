#!/usr/bin/env python3
"""8-bit and W4A8 quantization-aware fine-tuning of the trained family models (issue 22's QAT rows).

Each step fine-tunes one arch's FP32 checkpoint (benchmarks/train_families.py) under a recipe of
schedules/fashion_mnist/ with ``apps/compress_classifier.py``: 2 epochs of a random quarter of the 54,000 training
images, the FP32 schedule's optimizer at its LR / 100, seed 1; then tests all 10,000 test images and exports the
QAT model to ONNX for this CPU with the agreement check (ONNX Runtime's predictions against the simulation's).
Each step writes ``--out-dir/<arch>_<step>.json`` atomically (command, machine, top-1 with its 95 % interval,
export agreement, seconds); a step whose JSON exists is skipped, a fine-tuning killed mid-way resumes from its
last epoch's checkpoint:

    OMP_NUM_THREADS=1 python benchmarks/family_qat.py --arch efficientnet_b0_cifar [--steps qat_8bit] [--list]

``--recheck-export`` exports a finished step's QAT checkpoint again (``--evaluate --export-onnx``) and records the
check as ``export_onnx_integer``: since QAT models are judged in integer arithmetic (batch-norm folded as exported),
not in their float fake quantization.

Checkpoints stay in ``--work`` (runs/families by default), never in git.
"""

import argparse
import glob
import json
import os
import sys

from accuracy_stats import machine  # benchmarks/ (the script's folder is on sys.path)
from fashion_mnist_accuracy import accuracy, resumable_run, write_json
from train_families import PLAN

STEPS = {"qat_8bit": "families_qat_8bit.yaml", "qat_w4a8": "families_qat_w4a8.yaml"}  # step -> recipe
EPOCHS, LR_FACTOR = 2, 0.01


def fp32_checkpoint(arch, work):
    found = sorted(glob.glob(os.path.join(work, f"{arch}___*", "checkpoint.pth.tar")))
    if not found:
        raise SystemExit(f"no FP32 checkpoint of {arch} under {work}: run benchmarks/train_families.py --arch {arch}")
    return found[-1]


def command(arch, step, checkpoint, work):
    _, etrs, batch, lr, wd, opt = PLAN[arch]
    return ["apps/compress_classifier.py", "-a", arch, "--dataset", "fashion_mnist", "--epochs", str(EPOCHS),
            "-b", str(batch), "--lr", f"{lr * LR_FACTOR:g}", "--wd", str(wd), "--optimizer", opt, "--etrs", str(etrs),
            "--seed", "1", "-p", "0", "--exp-load-weights-from", checkpoint,
            "--compress", f"schedules/fashion_mnist/{STEPS[step]}", "-o", work, "-n", f"{arch}_{step}",
            "--export-onnx", "--export-accept-disagreement"]


def fine_tune(arch, step, work):
    cmd = command(arch, step, fp32_checkpoint(arch, work), work)
    folder, seconds, resumed = resumable_run(cmd, work, f"{arch}_{step}")
    summary = json.load(open(os.path.join(folder, "summary.json")))
    onnx = (summary.get("export") or {}).get("onnx", {})
    result = {"arch": arch, "step": step, "command": "OMP_NUM_THREADS=1 python " + " ".join(cmd),
              "recipe": f"schedules/fashion_mnist/{STEPS[step]}", "epochs": EPOCHS,
              "train_images_per_epoch": int(round(54000 * PLAN[arch][1])),
              "test": accuracy(summary["test"]["top1"], 10000), "best_val": summary["best"],
              "export_onnx": {k: onnx.get(k) for k in ("agreement", "simulated_top1", "exported_top1", "images",
                                                         "arithmetic", "max_logit_diff")},
              "run_dir": folder, "seconds_this_piece": seconds, "wall_time_s": summary.get("wall_time_s")}
    if resumed:
        result["resumed_from"] = resumed
    return result


def recheck_export(result, work, tag=None):
    """The finished step's checkpoint evaluated and exported again by the app; its agreement check as it is now.
    ``tag``: a new check after the previous one (runs named ``..._recheck_<tag>``)."""
    name = f"{result['arch']}_{result['step']}_recheck" + (f"_{tag}" if tag else "")
    cmd = ["apps/compress_classifier.py", "-a", result["arch"], "--dataset", "fashion_mnist",
           "--resume-from", os.path.join(result["run_dir"], "checkpoint.pth.tar"), "--compress", result["recipe"],
           "--evaluate", "--export-onnx", "--export-accept-disagreement", "-o", work, "-n", name]
    folder, seconds, _ = resumable_run(cmd, work, name)
    onnx = (json.load(open(os.path.join(folder, "summary.json"))).get("export") or {}).get("onnx", {})
    keys = ("agreement", "simulated_top1", "exported_top1", "max_logit_diff", "images", "arithmetic")
    return {**{k: onnx.get(k) for k in keys}, "command": "OMP_NUM_THREADS=1 python " + " ".join(cmd),
            "seconds": seconds}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", required=True, choices=list(PLAN))
    p.add_argument("--steps", nargs="+", default=list(STEPS), choices=list(STEPS))
    p.add_argument("--work", default="runs/families", help="FP32 run folders are found, QAT ones written, here")
    p.add_argument("--out-dir", default="docs/benchmarks/fashion_mnist/families")
    p.add_argument("--list", action="store_true", help="print each step's command and exit")
    p.add_argument("--recheck-export", action="store_true",
                   help="export each finished step's checkpoint again and record its agreement check")
    p.add_argument("--recheck-tag", default=None,
                   help="with --recheck-export: check again where a check is recorded (after a change to the "
                        "integer simulation); the previous record moves to export_onnx_integer_before")
    args = p.parse_args()
    for arch in args.arch:
        for step in args.steps:
            if args.list:
                print("python " + " ".join(command(arch, step, fp32_checkpoint(arch, args.work), args.work)))
                continue
            out = os.path.join(args.out_dir, f"{arch}_{step}.json")
            if os.path.exists(out) and args.recheck_export:
                result = json.load(open(out))
                again = args.recheck_tag and result.get("export_onnx_integer", {}).get("tag") != args.recheck_tag
                if "export_onnx_integer" not in result or again:
                    if "export_onnx_integer" in result:
                        result.setdefault("export_onnx_integer_before", []).append(result["export_onnx_integer"])
                    check = recheck_export(result, args.work, args.recheck_tag)
                    result["export_onnx_integer"] = {**check, **({"tag": args.recheck_tag} if args.recheck_tag else {})}
                    write_json(out, result)
                print(f"{arch} {step}: export agreement {result['export_onnx']['agreement']} % (float simulation) "
                      f"-> {result['export_onnx_integer']['agreement']} % ({out})", flush=True)
                continue
            if os.path.exists(out):
                print(f"{arch} {step}: done ({out})")
                continue
            print(f"{arch} {step}: fine-tuning ...", flush=True)
            result = fine_tune(arch, step, args.work)
            result["machine"] = machine()
            write_json(out, result)
            print(f"{arch} {step}: test top-1 {result['test']['top1']:.2f} %, export agreement "
                  f"{result['export_onnx']['agreement']} -> {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
