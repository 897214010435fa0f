#!/usr/bin/env python3
"""Markdown tables for docs/results.md from the family benchmarks' JSON (train_families.py, family_ptq.py,
family_qat.py).

    python benchmarks/family_tables.py [--dir docs/benchmarks/fashion_mnist/families]

One table per family: FP32, then every PTQ row (ours, ONNX Runtime's quantize_static, torch.ao), each with its test
top-1 on all 10,000 images, the 95 % interval, the change against FP32 and the seconds the row took; then the
QAT fine-tunings, with their export's agreement.
"""

import argparse
import glob
import json
import os

LABELS = {
    "fp32": "FP32",
    "fp32_relu6_as_relu": "FP32, ReLU6 replaced by ReLU (what DFQ equalizes)",
    "torch_ao_x86": "torch.ao PTQ, x86 qconfig (FX)",
}


def _setup(text):
    """per_channel_sq0.5_MSE -> per-channel + SmoothQuant 0.5 MSE (the JSON's row keys, spelled out)."""
    text = text.replace("per_channel", "per-channel").replace("per_tensor", "per-tensor")
    text = text.replace("_cle", " + DFQ").replace("_sq0.5", " + SmoothQuant 0.5")
    return text.replace("_", " ")


def label(key):
    if key.endswith("_unsplit"):  # family_ptq.py --no-split-gated
        return label(key.removesuffix("_unsplit")) + ", hardswish/SiLU whole (split_gated_activations: false)"
    if key in LABELS:
        return LABELS[key]
    if key.startswith("ort_quantize_static_"):
        method = key[len("ort_quantize_static_"):]
        rr = method.endswith("_reduce_range")
        return (f"ONNX Runtime quantize_static, {method.removesuffix('_reduce_range')} (QDQ, per-channel"
                f"{', reduce_range: 7-bit weights' if rr else ''})")
    for bits in ("w4a8", "w8a8"):
        if key.startswith(f"ours_{bits}_"):
            setup, rounding = key[len(f"ours_{bits}_"):].rsplit("_", 1)
            names = {"nearest": "round to nearest", "gptq": "GPTQ", "adaround": "AdaRound"}
            how = names[rounding.removesuffix("+bc")] + (" + bias correction" if rounding.endswith("+bc") else "")
            return f"ours {bits.upper()} {_setup(setup)}, {how}"
    if key.startswith("ours_"):
        parts = key[len("ours_"):].rsplit("_", 1)
        return f"ours W8A8 {_setup(parts[0])}, clip {parts[1]}"
    return key


QAT_LABELS = {"qat_8bit": "ours 8-bit QAT (W8A8 per-channel)", "qat_w4a8": "ours W4A8 QAT (per-channel)"}


def qat_lines(qat_rows, base):
    """Table rows of the QAT fine-tunings (family_qat.py), and a line per run on its export."""
    rows, notes = [], []
    for r in qat_rows:
        t = r["test"]
        delta = "" if base is None else f"{t['top1'] - base:+.2f}"
        rows.append(f"| {QAT_LABELS.get(r['step'], r['step'])}, {r['epochs']} x {r['train_images_per_epoch']:,} "
                    f"images | {t['top1']:.2f} | {t['ci95'][0]:.2f}-{t['ci95'][1]:.2f} | {delta} | "
                    f"{r.get('wall_time_s') or r['seconds_this_piece']:.0f} |")
        e, i = r.get("export_onnx") or {}, r.get("export_onnx_integer") or {}
        if e.get("agreement") is not None:
            again = "" if i.get("agreement") is None else (
                f" Judged as the apps judge it now, against the integer-exact simulation (batch-norm folded as "
                f"exported): **{i['agreement']:.2f} %** (simulated top-1 {i['simulated_top1']:.2f} %, ONNX "
                f"{i['exported_top1']:.2f} %, largest logit difference {i['max_logit_diff']:.4f}; `{i['command']}`).")
            for b in r.get("export_onnx_integer_before", []):
                again += f" Before the simulation's change `{i.get('tag')}`: {b['agreement']:.2f} %."
            against = {"integer": "the integer-exact simulation (the apps' check)"}.get(
                e.get("arithmetic"), "the float fake-quantized simulation")
            notes.append(f"{QAT_LABELS.get(r['step'], r['step'])} exported for this CPU: ONNX Runtime agrees with "
                         f"{against} on {e['agreement']:.2f} % of {e['images']:,} test "
                         f"images (ONNX top-1 {e['exported_top1']:.2f} %). Command: `{r['command']}`.{again}")
    return rows, notes


def table(fp32_info, ptq, qat_rows=()):
    rows = ptq["rows"]
    base = rows.get("fp32", {}).get("top1")
    lines = ["| model | test top-1 % | 95 % interval | vs FP32 (pp) | s |", "|---|---|---|---|---|"]
    for key, r in rows.items():
        if not isinstance(r, dict) or key in ("equalization", "smoothquant"):
            continue
        if "error" in r:
            lines.append(f"| {label(key)} | refused: {r['error'][:120]} | | | |")
            continue
        delta = "" if base is None or key == "fp32" else f"{r['top1'] - base:+.2f}"
        lines.append(f"| {label(key)} | {r['top1']:.2f} | {r['ci95'][0]:.2f}-{r['ci95'][1]:.2f} | {delta} | "
                     f"{r['seconds']:.0f} |")
    more, notes = qat_lines(qat_rows, base)
    lines += more
    best = ptq.get("best_export")
    if best:
        lines.append("")
        lines.append(f"Best of our W8A8 rows ({label(best['row'])}) exported for this CPU ({best['format']} weights): "
                     f"ONNX Runtime agrees with the simulation on {best['agreement']:.2f} % of the test images "
                     f"(ONNX top-1 {best['onnx_top1']:.2f} %).")
    best = ptq.get("best_export_integer")
    if best:
        lines.append(f"Against the integer-exact simulation (the apps' check) of the same row: "
                     f"{best['agreement']:.2f} % agreement (simulated top-1 {best['simulated_top1']:.2f} %, ONNX "
                     f"{best['onnx_top1']:.2f} %, {best['seconds']:.0f} s).")
    if notes:
        lines += [""] + notes
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="docs/benchmarks/fashion_mnist/families")
    args = ap.parse_args()
    for path in sorted(glob.glob(os.path.join(args.dir, "*_ptq_w8a8.json"))):
        ptq = json.load(open(path))
        arch = ptq["arch"]
        fp32_path = os.path.join(args.dir, f"{arch}_fp32.json")
        fp32_info = json.load(open(fp32_path)) if os.path.exists(fp32_path) else {}
        m = ptq["machine"]
        print(f"### {arch}\n")
        if fp32_info:
            print(f"FP32 training: `{fp32_info['command']}` ({fp32_info['train_images_seen']:,} training images seen, "
                  f"{fp32_info.get('wall_time_s') or 0:.0f} s).")
        print(f"PTQ: `{ptq['command']}` on {m['cpu']} ({m['cpu_capability']}), {m['threads']} thread(s), "
              f"{ptq['calibration_images']} calibration images.\n")
        if ptq.get("rerun"):
            earlier = "; ".join(f"`{c}`" for c in ptq.get("earlier_commands", []))
            print(f"Rerun: {ptq['rerun']}. Earlier commands: {earlier}.\n")
        qat = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(args.dir, f"{arch}_qat_*.json")))]
        print(table(fp32_info, ptq, qat))
        print()


if __name__ == "__main__":
    main()
