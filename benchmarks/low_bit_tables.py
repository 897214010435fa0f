#!/usr/bin/env python3
"""Render docs/benchmarks/low_bit_accuracy.json (from low_bit_accuracy.py) as the Markdown tables in docs/results.md.

    python benchmarks/low_bit_tables.py docs/benchmarks/low_bit_accuracy.json --fp32 resnet20_cifar=98.889 \\
        --fp32 preact_resnet20_cifar=99.722
"""

import argparse
import json


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("json")
    ap.add_argument("--fp32", action="append", default=[], metavar="ARCH=TOP1")
    args = ap.parse_args()
    fp32 = {a: float(t) for a, t in (s.split("=") for s in args.fp32)}
    runs = json.load(open(args.json))["runs"]
    archs = sorted({k.split("/")[0] for k in runs}, key=lambda a: (a != "resnet20_cifar", a))
    for arch in archs:
        print(f"\n**{arch}** (FP32 test top-1 {fp32.get(arch, float('nan')):.3f})\n")
        print("| recipe | test top-1 | vs FP32 (pp) | model size vs FP32 |")
        print("|---|---|---|---|")
        for key in sorted(k for k in runs if k.startswith(arch + "/")):
            r = runs[key]
            name = key.split("/", 1)[1]
            if "error" in r:
                print(f"| {name} | failed | | |")
                continue
            size = r.get("model_size_bits") or {}
            ratio = f"{size['fp32'] / size['quantized']:.1f}x smaller" if size else ""
            delta = r["test_top1"] - fp32[arch] if arch in fp32 else float("nan")
            print(f"| {name} | {r['test_top1']:.3f} | {delta:+.2f} | {ratio} |")


if __name__ == "__main__":
    main()
