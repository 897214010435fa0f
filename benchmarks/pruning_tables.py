#!/usr/bin/env python3
"""Markdown tables for docs/results.md and docs/performance.md from benchmarks/pruning.py's JSON.

    python benchmarks/pruning_tables.py [--dir docs/benchmarks/fashion_mnist/pruning]
"""

import argparse
import json
import os

LABELS = {"fp32": "dense FP32", "agp50": "AGP element-wise 50 %", "agp70": "AGP element-wise 70 %",
          "agp80": "AGP element-wise 80 %", "agp90": "AGP element-wise 90 %",
          "filters30": "filters, ~30 % fewer MACs, thinned", "filters50": "filters, ~50 % fewer MACs, thinned",
          "int8_dense": "dense INT8 (PTQ W8A8 per-channel)", "int8_filters50": "filters ~50 %, thinned, INT8",
          "filters50b8": "filters, >= 50 % fewer MACs in multiples of 8, thinned",
          "int8_filters50b8": "filters >= 50 % in multiples of 8, thinned, INT8"}


def load(folder, step):
    path = os.path.join(folder, f"{step}.json")
    return json.load(open(path)) if os.path.exists(path) else None


def accuracy_table(folder):
    base = load(folder, "fp32")
    lines = ["| model | test top-1 % | 95 % interval | vs dense FP32 (pp) | parameters | MACs (one image) | "
             "MACs on nonzero weights | weight sparsity | s (fine-tune or PTQ) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for step, name in LABELS.items():
        r = load(folder, step)
        if r is None:
            continue
        facts = r if "macs" in r else (load(folder, r["from"]) or {}) if "from" in r else {}
        delta = "" if step == "fp32" else f"{r['test']['top1'] - base['test']['top1']:+.2f}"
        lines.append(f"| {name} | {r['test']['top1']:.2f} | {r['test']['ci95'][0]:.2f}-{r['test']['ci95'][1]:.2f} | "
                     f"{delta} | {facts.get('parameters', 0):,} | {facts.get('macs', 0):,} | "
                     f"{facts.get('macs_on_nonzero_weights', 0):,} | {100 * facts.get('weights', 0):.1f} % | "
                     f"{r.get('seconds', 0):.0f} |")
    return "\n".join(lines)


def latency_table(folder):
    r = load(folder, "latency")
    if r is None:
        return "(latency not measured yet)"
    m = r["runtime"]
    lines = [f"ONNX Runtime {m['onnxruntime']} on {m['cpu']} (int8: {m['int8_capability']}; integer flags "
             f"{', '.join(m['integer_flags'])}), "
             f"{r['threads']} thread(s), batch {r['batch']}, median of {r['iters']} paired runs: `{r['command']}`", "",
             "| model | ONNX file KiB | ms per batch | vs dense FP32 |", "|---|---|---|---|"]
    for step, t in r["files"].items():
        lines.append(f"| {LABELS.get(step, step)} | {t['bytes'] / 1024:.0f} | {t['median_ms']:.2f} | "
                     f"{t['vs_first']:.3f}x |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="docs/benchmarks/fashion_mnist/pruning")
    args = ap.parse_args()
    print(accuracy_table(args.dir))
    print()
    print(latency_table(args.dir))


if __name__ == "__main__":
    main()
