#!/usr/bin/env python3
"""W8A8 post-training quantization of one trained family model (issue 22): ours with and without DFQ, per-tensor and
per-channel weights, beside torch.ao's x86 PTQ and ONNX Runtime's quantize_static, on the same calibration images.

    OMP_NUM_THREADS=1 python benchmarks/family_ptq.py --arch mobilenet_v2_cifar --checkpoint CK \\
        --out docs/benchmarks/fashion_mnist/families/mobilenet_v2_cifar_ptq_w8a8.json

Every row is evaluated on all 10,000 Fashion-MNIST test images with its 95 % Wilson interval, its per-image
correctness (packed, for McNemar's test) and the seconds it took (quantization + calibration + evaluation). Ours runs
in float fake quantization (the grids the export uses); the best of our W8A8 rows is then exported for this CPU and its
ONNX Runtime predictions compared with the simulation's on the same images (agreement). ONNX Runtime's rows quantize
the FP32 ONNX export of the same model (QDQ, per-channel int8 weights, uint8 activations: its defaults) with
MinMax, Entropy and Percentile calibration, after its quant_pre_process. ``--w8a8-rounding`` / ``--w4a8-rounding``
add rows with AdaRound, GPTQ and, with ``+bc``, empirical bias correction (e.g. ``nearest+bc``), on the settings of
the best W8A8 per-channel row. Rows land in --out as they finish; a rerun skips those already there (name the
roundings of the earlier pieces again: the best row is chosen among the rows this run knows the settings of).
"""

import argparse
import copy
import json
import os
import sys
import tempfile
import time
import warnings

import torch
from accuracy_stats import machine, pack_mask, wilson  # benchmarks/ (the script's folder is on sys.path)
from ptq_accuracy import torch_ao

from compressor.core.io import atomic_write_text, load_checkpoint
from compressor.core.state_keys import load_weights, model_state
from compressor.data import load_data
from compressor.data.loaders import load_calibration_data
from compressor.models import arch_family, create_model
from compressor.quantization.linear.ptq import PostTrainLinearQuantizer

warnings.filterwarnings("ignore")
EVAL_BATCH = 250


def entry(mask, seconds):
    correct, n = int(mask.sum()), len(mask)
    lo, hi = wilson(correct, n)
    return {"top1": 100.0 * correct / n, "correct": correct, "n": n, "ci95": [round(lo, 3), round(hi, 3)],
            "seconds": round(seconds, 1), "mask": pack_mask(mask)}


@torch.no_grad()
def predictions(run, test):
    return torch.cat([run(x).argmax(1) for x, _ in test])


def labels(test):
    return torch.cat([y for _, y in test])


def ours(model, calib, per_channel, clip, cle, smoothquant=None, bits_w=8, rounding="nearest", relu6="REPLACE",
         integer=False, split_gated=True):
    """Our PTQ; ``rounding``: nearest, gptq or adaround (500 steps per layer), with ``+bc`` also empirical bias
    correction; ``integer``: evaluate in the integer-exact simulation of the exported kernels instead of float fake
    quantization (the apps' default); ``split_gated``: the recipe's split_gated_activations."""
    from compressor.quantization.linear.refine import calibration_images, refine

    rounding, bias_correction = rounding.removesuffix("+bc"), rounding.endswith("+bc")

    q = PostTrainLinearQuantizer(copy.deepcopy(model), bits_activations=8, bits_parameters=bits_w,
                                 per_channel_wts=per_channel, clip_acts=clip,
                                 mode={"activations": "ASYMMETRIC_UNSIGNED", "weights": "SYMMETRIC"},
                                 integer_arithmetic=integer, cross_layer_equalization=cle, equalization_relu6=relu6,
                                 smoothquant_alpha=smoothquant, gptq=rounding == "gptq",
                                 adaround=rounding == "adaround", adaround_iterations=500,
                                 bias_correction=bias_correction, split_gated_activations=split_gated)
    gm = q.prepare_model().eval()
    q.calibrate(calib)
    if rounding != "nearest" or bias_correction:
        q.refinement_rows = refine(q, calibration_images(calib, "cpu"))
    return q, gm


def variants(model):
    """(row name part, per-channel weights, cross-layer equalization, SmoothQuant alpha) worth running on ``model``:
    DFQ where it finds layer pairs, SmoothQuant where a LayerNorm feeds linear layers."""
    from compressor.quantization.graph.equalize import find_pairs
    from compressor.quantization.graph.fold_bn import fold_batchnorm
    from compressor.quantization.linear.smoothquant import norm_linear_groups

    probe = fold_batchnorm(model)  # pairs appear once batch-norms are folded, as the quantizer does first
    has_pairs, has_norms = bool(find_pairs(probe)), bool(norm_linear_groups(probe))
    out = []
    for per_channel in (False, True):
        base = "per_channel" if per_channel else "per_tensor"
        out.append((base, per_channel, False, None))
        if has_pairs:
            out.append((base + "_cle", per_channel, True, None))
        if has_norms:
            out.append((base + "_sq0.5", per_channel, False, 0.5))
    return out


def fp32_onnx(model, path):
    from compressor.deploy.onnx_export import export_onnx

    export_onnx(model, torch.zeros(1, 3, 32, 32), path)  # the batch axis stays free
    return path


def ort_quantized(fp32_path, calib, method, out_path):
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out_path.replace(".onnx", "_pre.onnx")
    quant_pre_process(fp32_path, prepared)  # what ONNX Runtime asks for before quantize_static (fusions, shapes)
    name = onnx.load(prepared).graph.input[0].name
    batches = iter([{name: x.numpy()} for x, _ in calib])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(batches, None)

    # "<method>_reduce_range": 7-bit weights, ONNX Runtime's advice for u8s8 on CPUs without VNNI (AVX2's
    # 16-bit pair sums saturate)
    base, reduce_range = method.removesuffix("_reduce_range"), method.endswith("_reduce_range")
    quantize_static(prepared, out_path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=reduce_range,
                    calibrate_method=getattr(CalibrationMethod, base))
    return out_path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--calibration-size", type=int, default=512)
    ap.add_argument("--methods", nargs="+", default=["NONE", "AVG", "MSE"], help="our clip methods")
    ap.add_argument("--ort-methods", nargs="*",
                    default=["MinMax", "Entropy", "Percentile", "MinMax_reduce_range", "Percentile_reduce_range"])
    ap.add_argument("--skip-torch-ao", action="store_true")
    ap.add_argument("--w4a8", action=argparse.BooleanOptionalAction, default=True,
                    help="W4A8 rows: round to nearest, GPTQ, AdaRound")
    roundings = ["nearest", "gptq", "adaround"]
    ap.add_argument("--w8a8-rounding", nargs="*", default=[], choices=roundings[1:] + [r + "+bc" for r in roundings],
                    help="also W8A8 rows with these roundings (settings of the best W8A8 per-channel row); +bc: "
                    "with empirical bias correction")
    ap.add_argument("--w4a8-rounding", nargs="*", default=roundings, choices=roundings + [r + "+bc" for r in roundings],
                    help="the W4A8 rows' roundings (with --w4a8)")
    ap.add_argument("--integer-export", action=argparse.BooleanOptionalAction, default=True,
                    help="also judge the best row's export against the integer-exact simulation")
    ap.add_argument("--rounding-setup", metavar="SETUP",
                    help="the W8A8 row whose settings the rounded rows take (e.g. per_channel_LAPLACE), instead of "
                         "the best per-channel row")
    ap.add_argument("--split-gated", action=argparse.BooleanOptionalAction, default=True,
                    help="split_gated_activations of our rows; --no-split-gated: rows named *_unsplit, hardswish/SiLU "
                         "as one float op each")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    suffix = "" if args.split_gated else "_unsplit"
    torch.manual_seed(0)
    result = json.load(open(args.out)) if os.path.exists(args.out) else {}
    rows = result.setdefault("rows", {})
    command = "python " + " ".join(sys.argv)
    if result.setdefault("command", command) != command:  # a later piece (e.g. only the integer export) adds rows
        result.setdefault("later_commands", []).append(command)
    result.update({"machine": machine(), "arch": args.arch, "checkpoint": args.checkpoint, "dataset": args.dataset})

    def save():
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")

    model = create_model(args.arch, args.dataset)
    load_weights(model, model_state(load_checkpoint(args.checkpoint)))
    model.eval()
    shape = arch_family(args.arch)[1]
    _, _, test = load_data(args.dataset, None, shape, EVAL_BATCH)
    calib = load_calibration_data(args.dataset, None, shape, 128, args.calibration_size)
    result["calibration_images"], result["test_images"] = len(calib.dataset), len(test.dataset)
    truth = labels(test)

    def row(key, make_run):
        if key in rows:
            print(f"{key}: {rows[key]['top1']:.2f} (done)")
            return
        start = time.perf_counter()
        run = make_run()
        rows[key] = entry(predictions(run, test) == truth, time.perf_counter() - start)
        save()
        print(f"{key}: {rows[key]['top1']:.2f} {rows[key]['ci95']} ({rows[key]['seconds']:.0f} s)", flush=True)

    row("fp32", lambda: model)
    quantizers, settings = {}, {}
    for name, per_channel, cle, sq in variants(model):
        for clip in args.methods:
            key = f"ours_{name}_{clip}{suffix}"
            settings[key] = (per_channel, clip, cle, sq)

            def make(key=key):
                q, gm = ours(model, calib, *settings[key], split_gated=args.split_gated)
                quantizers[key] = (q, gm)
                if q.equalization:
                    rows.setdefault("equalization", {})[key] = {
                        k: v for k, v in q.equalization.items() if k not in ("pairs", "range_ratio_before",
                                                                              "range_ratio_after")}
                if q.smoothquant:
                    rows.setdefault("smoothquant", {})[key] = q.smoothquant
                return gm

            row(key, make)
    if any(isinstance(m, torch.nn.ReLU6) for m in model.modules()):  # the FP32 model equalization compares against
        relu = copy.deepcopy(model)
        for name, m in list(relu.named_modules()):
            if isinstance(m, torch.nn.ReLU6):
                relu.set_submodule(name, torch.nn.ReLU(inplace=m.inplace))
        row("fp32_relu6_as_relu", lambda: relu)

    work = tempfile.mkdtemp()
    fp32_path = os.path.join(work, "fp32.onnx")
    for method in args.ort_methods:
        def make_ort(method=method):
            from compressor.deploy.verify import onnx_runner

            if not os.path.exists(fp32_path):
                fp32_onnx(model, fp32_path)
            return onnx_runner(ort_quantized(fp32_path, calib, method, os.path.join(work, f"{method}.onnx")))

        row(f"ort_quantize_static_{method}", make_ort)
    if not args.skip_torch_ao:
        try:
            row("torch_ao_x86", lambda: torch_ao(model, calib, 8))  # ptq_accuracy.py's: x86 qconfig, FX
        except Exception as exc:  # torch.ao's FX tracer refuses some models: record why
            rows["torch_ao_x86"] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
            save()
            print("torch_ao_x86:", rows["torch_ao_x86"]["error"])

    def rounded_rows(bits_w, roundings):
        """Per-channel rows at ``bits_w``-bit weights with the settings (clip, DFQ or SmoothQuant) of the best W8A8
        per-channel row, for each rounding: nearest, GPTQ, AdaRound."""
        w8 = {k: v for k, v in rows.items() if k.startswith("ours_per_channel") and "top1" in v and k in settings}
        best8 = max(w8, key=lambda k: w8[k]["top1"]) if not args.rounding_setup else \
            f"ours_{args.rounding_setup}{suffix}"
        _, clip, cle, sq = settings[best8]
        for rounding in roundings:
            key = f"ours_w{bits_w}a8_{best8[len('ours_'):].removesuffix(suffix)}_{rounding}{suffix}"
            settings[key] = (True, clip, cle, sq, bits_w, rounding)

            def make(key=key):
                q, gm = ours(model, calib, *settings[key], split_gated=args.split_gated)
                quantizers[key] = (q, gm)
                return gm

            row(key, make)

    rounded_rows(8, args.w8a8_rounding)  # W8A8 with learned (AdaRound) or second-order (GPTQ) rounding

    ours_rows = {k: v for k, v in rows.items()
                 if k.startswith("ours_") and "w4a8" not in k and "top1" in v and k in settings}
    best = max(ours_rows, key=lambda k: ours_rows[k]["top1"])
    if "best_export" not in result or result["best_export"].get("row") != best:
        from compressor.deploy.onnx_export import export_onnx
        from compressor.deploy.target import format_here
        from compressor.deploy.verify import onnx_runner

        if best not in quantizers:
            quantizers[best] = ours(model, calib, *settings[best], split_gated=args.split_gated)
        q, gm = quantizers[best]
        start = time.perf_counter()
        path = export_onnx(gm, torch.zeros(1, 3, 32, 32), os.path.join(work, "best.onnx"),
                           weights=format_here().weights)
        exported = predictions(onnx_runner(path), test)
        simulated = predictions(gm, test)
        result["best_export"] = {"row": best, "format": format_here().weights,
                                 "agreement": 100.0 * float((exported == simulated).double().mean()),
                                 "onnx_top1": 100.0 * float((exported == truth).double().mean()),
                                 "seconds": round(time.perf_counter() - start, 1)}
        save()
    if args.integer_export and result.get("best_export_integer", {}).get("row") != best:
        # the same export judged against the integer-exact simulation (what the apps' agreement check compares
        # with): float fake quantization rounds accumulators and requantization differently from the kernels
        from compressor.deploy.onnx_export import export_onnx
        from compressor.deploy.target import format_here
        from compressor.deploy.verify import onnx_runner
        from compressor.quantization.linear.integer_sim import integer_evaluation

        start = time.perf_counter()
        if best not in quantizers:
            quantizers[best] = ours(model, calib, *settings[best], split_gated=args.split_gated)
        q, gm = quantizers[best]  # the same model, its integer arithmetic switched on
        path = export_onnx(gm, torch.zeros(1, 3, 32, 32), os.path.join(work, "best_integer.onnx"),
                           weights=format_here().weights)
        exported = predictions(onnx_runner(path), test)
        with integer_evaluation(gm, True):
            simulated = predictions(gm, test)
        result["best_export_integer"] = {
            "row": best, "format": format_here().weights,
            "agreement": 100.0 * float((exported == simulated).double().mean()),
            "simulated_top1": 100.0 * float((simulated == truth).double().mean()),
            "onnx_top1": 100.0 * float((exported == truth).double().mean()),
            "seconds": round(time.perf_counter() - start, 1)}
        save()
        print("best, integer simulation:", result["best_export_integer"], flush=True)
    # W4A8: per-channel weights (with DFQ or SmoothQuant where W8A8 gained from them), activations clipped as the best
    # W8A8 per-channel row, weights rounded to nearest, by GPTQ and by AdaRound
    if args.w4a8:
        rounded_rows(4, args.w4a8_rounding)
    print("best:", result["best_export"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
