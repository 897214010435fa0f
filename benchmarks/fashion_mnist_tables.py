#!/usr/bin/env python3
"""Markdown tables (as in docs/results.md) from the step JSONs of benchmarks/fashion_mnist_accuracy.py.

    python benchmarks/fashion_mnist_tables.py [docs/benchmarks/fashion_mnist]

PTQ cells: top-1 (95 % Wilson interval) and the change against FP32 in pp; a change marked * is
real at the 5 % level by McNemar's exact test on the same 10,000 images (the per-image correctness
is in the JSON). Fine-tuned rows have no per-image data: a change is marked * when the unpaired
two-proportion z-test rejects equality at 5 % (conservative for models tested on the same images).
"""

import json
import math
import os
import sys

from accuracy_stats import compare, unpack_mask  # benchmarks/ (the script's folder is on sys.path)

METHODS = ["NONE", "AVG", "N_STD", "GAUSS", "LAPLACE", "PERCENTILE", "KL", "MSE"]
CONFIGS = ["W8A8", "W6A6", "W4A8", "W4A4"]
FINE_TUNE = ["qat_8bit_seed1", "qat_8bit_seed2", "pact_w4a4", "dorefa_w4a4", "twn_ternary_a8", "ttq_ternary_a8"]


def load(folder, step):
    path = os.path.join(folder, f"{step}.json")
    return json.load(open(path)) if os.path.exists(path) else None


def cell(detail, fp32_mask):
    only_q, only_fp, p = compare(unpack_mask(detail["mask"]), fp32_mask)
    delta = (only_q - only_fp) / len(fp32_mask) * 100
    star = "*" if p < 0.05 else ""
    lo, hi = detail["ci95"]
    return f"{detail['top1']:.2f} ({lo:.2f}-{hi:.2f}) {delta:+.2f}{star}"


def ptq_table(folder):
    rows, fp32 = [], None
    for config in CONFIGS:
        data = load(folder, f"ptq_{config.lower()}")
        if data is None:
            rows.append(f"| {config} | " + " | ".join(["not run yet"] * (len(METHODS) + 1)) + " |")
            continue
        fp32 = fp32 or data["fp32"]
        fp32_mask = unpack_mask(data["fp32"]["mask"])
        details = data["ours_detail"][config]
        cells = [cell(details[m], fp32_mask) if m in details else "" for m in METHODS]
        ao = data.get("torch_ao_detail", {}).get(config)
        cells.append(cell(ao, fp32_mask) if ao else "")
        rows.append(f"| {config} | " + " | ".join(cells) + " |")
    notes = []
    for config in CONFIGS:  # our best method against torch.ao, paired on the same images
        data = load(folder, f"ptq_{config.lower()}")
        ao = data and data.get("torch_ao_detail", {}).get(config)
        if ao:
            details = data["ours_detail"][config]
            best = max(METHODS, key=lambda m: details[m]["correct"] if m in details else -1)
            only_ours, only_ao, p = compare(unpack_mask(details[best]["mask"]), unpack_mask(ao["mask"]))
            notes.append(f"- {config}: our best ({best}, {details[best]['top1']:.2f}) vs torch.ao ({ao['top1']:.2f}): "
                         f"{only_ours} images only ours gets right, {only_ao} only torch.ao's, McNemar p = {p:.2g}")
    head = "| config | " + " | ".join(METHODS) + " | torch.ao |\n|---|" + "---|" * (len(METHODS) + 1)
    fp32_line = f"FP32: {fp32['top1']:.2f} % ({fp32['ci95'][0]:.2f}-{fp32['ci95'][1]:.2f}), {fp32['n']} test images" \
        if fp32 else "FP32: not run yet"
    return fp32_line + "\n\n" + head + "\n" + "\n".join(rows) + "\n\n" + "\n".join(notes)


VARIANTS = [("before_fix", "before the fix: input and logits clipped, each method's own range"),
            ("own_range", "input and logits unclipped, each method's own range"),
            (None, "the fix (defaults now): also ranges keep [avg_min, avg_max]")]


def boundaries_table(folder):
    lines = ["| config | defaults | " + " | ".join(METHODS[1:]) + " |",
             "|---|---|" + "---|" * (len(METHODS) - 1)]
    for config in CONFIGS:
        low_bits = int(config.split("A")[1]) < 8  # below 8 activation bits the fix is the input/logits part only
        for variant, label in VARIANTS:
            data = load(folder, f"ptq_{config.lower()}" + (f"_{variant}" if variant else ""))
            if data is None or (variant is None and low_bits and load(folder, f"ptq_{config.lower()}_own_range")):
                continue
            fp32_mask = unpack_mask(data["fp32"]["mask"])
            details = data["ours_detail"][config]
            if variant is None and low_bits:
                label = "defaults now (input and logits unclipped; below 8 activation bits, each method's own range)"
            lines.append(f"| {config} | {label} | " +
                         " | ".join(cell(details[m], fp32_mask) if m in details else "" for m in METHODS[1:]) + " |")
    return "\n".join(lines) if len(lines) > 2 else "(not run yet)"


def z_test_p(c1, c2, n):
    p1, p2 = c1 / n, c2 / n
    pooled = (c1 + c2) / (2 * n)
    se = math.sqrt(max(pooled * (1 - pooled) * 2 / n, 1e-30))
    z = abs(p1 - p2) / se
    return math.erfc(z / math.sqrt(2))


def fine_tune_table(folder):
    fp32 = load(folder, "fp32")
    lines = ["| step | recipe | epochs x images, LR | test top-1 (95 % CI) | vs FP32 (pp) | best val (epoch) |",
             "|---|---|---|---|---|---|"]
    if fp32:
        t = fp32["test"]
        lines.append(f"| fp32 | schedules/fashion_mnist/resnet20_cifar_fp32.yaml | {fp32['epochs']} x 27,000 | "
                     f"{t['top1']:.2f} ({t['ci95'][0]:.2f}-{t['ci95'][1]:.2f}) | | "
                     f"{fp32['best_val']['top1']:.2f} ({fp32['best_val']['epoch']}) |")
    for step in FINE_TUNE:
        data = load(folder, step)
        if data is None:
            lines.append(f"| {step} | | | not run yet | | |")
            continue
        t = data["test"]
        delta = ""
        if fp32:
            d = t["top1"] - fp32["test"]["top1"]
            delta = f"{d:+.2f}" + ("*" if z_test_p(t["correct"], fp32["test"]["correct"], t["n"]) < 0.05 else "")
        lines.append(f"| {step} | {data['recipe']} | {data['epochs']} x {data['train_images_per_epoch']:,}, "
                     f"{data['lr']} | {t['top1']:.2f} ({t['ci95'][0]:.2f}-{t['ci95'][1]:.2f}) | {delta} | "
                     f"{data['best_val']['top1']:.2f} ({data['best_val']['epoch']}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    folder = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                                                "docs", "benchmarks", "fashion_mnist")
    print(ptq_table(folder), end="\n\n")
    print(boundaries_table(folder), end="\n\n")
    print(fine_tune_table(folder))
