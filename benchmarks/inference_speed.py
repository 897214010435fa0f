#!/usr/bin/env python3
"""Inference latency and peak memory: FP32 eager, our simulated INT8, our exported INT8 (onnxruntime,
PyTorch int8 on qnnpack and x86) and torch.ao's converted model, side by side on this machine.

Each (model, batch, variant) runs in its own process, so peak RSS (ru_maxrss) is that variant's
alone; the variants of one configuration run back to back. Weights are random (no downloads here):
latency does not depend on their values. Quantization: 8-bit per-channel symmetric weights,
8-bit asymmetric activations calibrated on two random batches (ours: PostTrainLinearQuantizer;
torch.ao: its default x86 qconfig, prepare_fx/convert_fx).

    python benchmarks/inference_speed.py --out docs/benchmarks/inference_speed.json

``ours_onnxruntime`` is the default export (uint8 weights: exact on any x86 CPU);
``ours_onnxruntime_u8s8`` keeps int8 weights (onnxruntime's faster u8s8 kernels, which
saturate on CPUs without VNNI: measured 98.1 % agreement on digits instead of 100 %).
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import torch

CONFIGS = [("resnet18", 1, 224), ("resnet18", 8, 224), ("resnet20_cifar", 128, 32)]
VARIANTS = ["fp32", "ours_simulated", "ours_onnxruntime", "ours_onnxruntime_u8s8", "ours_torch_int8_qnnpack",
            "ours_torch_int8_x86", "ours_torch_int8_x86_a7", "torch_ao_x86"]


def build(arch, batch, size, variant):
    """A callable running one batch, for ``variant``."""
    from compressor.models import create_model

    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    dataset = "cifar10" if arch.endswith("_cifar") else "imagenet"
    model = create_model(arch, dataset).eval()
    calib = [torch.randn(batch, 3, size, size) for _ in range(2)]
    x = torch.randn(batch, 3, size, size)
    if variant == "fp32":
        return lambda: model(x)
    if variant == "torch_ao_x86":
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        torch.backends.quantized.engine = "x86"
        prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), (x,))
        with torch.no_grad():
            for c in calib:
                prepared(c)
        converted = convert_fx(prepared)
        return lambda: converted(x)
    from compressor.quantization.linear.ptq import PostTrainLinearQuantizer

    # _a7: 7-bit activations (torch.ao's reduce_range): fbgemm's 16-bit pair sums cannot saturate, so x86 is exact
    quantizer = PostTrainLinearQuantizer(model, bits_activations=7 if variant.endswith("_a7") else 8,
                                         bits_parameters=8, per_channel_wts=True,
                                         mode={"activations": "ASYMMETRIC_UNSIGNED", "weights": "SYMMETRIC"},
                                         integer_arithmetic=False)
    sim = quantizer.prepare_model().eval()
    quantizer.calibrate([(c, None) for c in calib])
    if variant == "ours_simulated":
        return lambda: sim(x)
    from compressor.deploy.convert import to_torch_int8

    engine = "x86" if "x86" in variant else "qnnpack"
    int8, _ = to_torch_int8(sim, engine)
    if variant.startswith("ours_torch_int8"):
        return lambda: int8(x)
    from compressor.deploy.onnx_export import export_onnx
    from compressor.deploy.verify import onnx_runner

    path = os.path.join(tempfile.mkdtemp(), "m.onnx")
    # u8s8: int8 weights as torch writes them (faster kernels, but they saturate on CPUs without VNNI)
    export_onnx(int8, x[:1], path, unsigned_weights=not variant.endswith("u8s8"))
    run = onnx_runner(path, threads=torch.get_num_threads())
    return lambda: run(x)


def measure(arch, batch, size, variant, iters, warmup):
    fn = build(arch, batch, size, variant)
    times = []
    with torch.no_grad():
        for i in range(warmup + iters):
            start = time.perf_counter()
            fn()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return {"median_ms": 1000 * statistics.median(times), "min_ms": 1000 * min(times),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default=None, help="e.g. resnet20_cifar")
    ap.add_argument("--one", nargs=4, metavar=("ARCH", "BATCH", "SIZE", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        arch, batch, size, variant = args.one
        print(json.dumps(measure(arch, int(batch), int(size), variant, args.iters, args.warmup)))
        return
    results = {"command": "python " + " ".join(sys.argv),
               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                          f"{torch.get_num_threads()} threads, torch {torch.__version__}", "runs": {}}
    for arch, batch, size in CONFIGS:
        if args.only and args.only != arch:
            continue
        key = f"{arch} batch {batch}"
        results["runs"][key] = {}
        for variant in VARIANTS:
            proc = subprocess.run([sys.executable, __file__, "--iters", str(args.iters), "--warmup", str(args.warmup),
                                   "--one", arch, str(batch), str(size), variant], capture_output=True, text=True)
            if proc.returncode != 0:
                results["runs"][key][variant] = {"error": proc.stderr[-500:]}
                print(key, variant, "ERROR", proc.stderr[-500:], flush=True)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results["runs"][key][variant] = r
            print(f"{key:24s} {variant:26s} {r['median_ms']:9.2f} ms  peak {r['peak_rss_mib']:7.0f} MiB", flush=True)
        fp32 = results["runs"][key]["fp32"]["median_ms"]
        for variant, r in results["runs"][key].items():
            if "median_ms" in r:
                r["speedup_vs_fp32"] = fp32 / r["median_ms"]
    print(json.dumps(results, indent=1))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
