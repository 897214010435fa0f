#!/usr/bin/env python3
"""Inference latency and peak memory: FP32 eager and FP32 onnxruntime, our exported INT8 per format
(ONNX QDQ u8s8 and u8u8 on onnxruntime, PyTorch int8 on the x86 engine) and torch.ao's converted
model, side by side on this machine, whose integer capability (AVX2 / AVX-512 VNNI / AMX) is stated.

Each (model, batch, variant) runs in its own process, so peak RSS (ru_maxrss) is that variant's
alone. ``--rounds R`` runs every variant of a configuration R times, interleaved (round 1 of all
variants, then round 2, ...), so ours and torch.ao's see the same background load; the table gives
the median over rounds of each process's median latency, measured as the process's CPU time per
batch (one thread: the compute cost, whatever else shares the core) next to wall-clock time.
Threads: as the environment says
(``OMP_NUM_THREADS``); onnxruntime gets the same count (intra_op_num_threads). Weights are random
(no downloads here): latency does not depend on their values. Quantization: 8-bit per-channel
symmetric weights, 8-bit asymmetric activations calibrated on two random batches (ours:
PostTrainLinearQuantizer; torch.ao: its default x86 qconfig, prepare_fx/convert_fx).

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/inference_speed.py --rounds 3 --same-process \
        --configs resnet20_cifar:128:32,resnet18:8:224 --out docs/benchmarks/inference_speed_vnni_quiet.json

``--same-process`` adds a paired comparison: every variant built in one process and timed batch by batch in
turn, reported as the median ratio to torch.ao's batch of the same turn (steadier on a virtual machine,
where one process's latency moves by up to 40 % against another's).

Your own exported files: ``python benchmarks/inference_speed.py --onnx model.onnx fp32.onnx --batch 8`` times each
file in turn on random inputs of its input shape (paired), the first as the reference.

``ours_onnx_u8s8``: int8 weights (exact and fast where u8 x s8 accumulates in 32 bits: VNNI, AMX, ARM
dot product; saturates on AVX2-only CPUs with 8-bit activations); ``ours_onnx_u8u8``: uint8 weights
(exact on any x86 CPU). ``--int8-target auto`` picks between them per CPU.
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
VARIANTS = ["fp32", "fp32_onnxruntime", "ours_onnx_u8s8", "torch_ao_x86", "ours_onnx_u8u8", "ours_torch_int8_x86"]
EXTRA_VARIANTS = ["ours_simulated", "ours_torch_int8_qnnpack", "ours_torch_int8_x86_a7", "ours_onnx_u8s8_a7",
                  "ours_onnx", "ort_quantize_static"]


def machine():
    """CPU model, the integer capability our exporter detects, torch's capability, threads."""
    from compressor.deploy.target import cpu_flags, detect_capability

    flags, arch = cpu_flags()
    model = platform.processor() or arch
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    import onnxruntime

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "int8_capability": detect_capability(flags, arch),
        "integer_flags": sorted(flags & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp"}),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


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
    from compressor.deploy.onnx_export import export_onnx
    from compressor.deploy.verify import onnx_runner

    path = os.path.join(tempfile.mkdtemp(), "m.onnx")
    if variant == "fp32_onnxruntime":  # graph optimizations on (onnxruntime's default: all)
        export_onnx(model, x[:1], path)
        run = onnx_runner(path, threads=torch.get_num_threads())
        return lambda: run(x)
    if variant == "ort_quantize_static":  # ONNX Runtime's own quantizer on the same FP32 ONNX and calibration images
        import onnx
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        export_onnx(model, x[:1], path)
        name = onnx.load(path).graph.input[0].name
        batches = iter([{name: c.numpy()} for c in calib])

        class Reader(CalibrationDataReader):
            def get_next(self):
                return next(batches, None)

        quantized = path.replace(".onnx", "_ort_int8.onnx")
        quantize_static(path, quantized, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        run = onnx_runner(quantized, threads=torch.get_num_threads())
        return lambda: run(x)
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
    quantizer = PostTrainLinearQuantizer(
        model,
        bits_activations=7 if variant.endswith("_a7") else 8,
        bits_parameters=8,
        per_channel_wts=True,
        mode={"activations": "ASYMMETRIC_UNSIGNED", "weights": "SYMMETRIC"},
        integer_arithmetic=False,
    )
    sim = quantizer.prepare_model().eval()
    quantizer.calibrate([(c, None) for c in calib])
    if variant == "ours_simulated":
        return lambda: sim(x)
    if variant.startswith("ours_torch_int8"):
        from compressor.deploy.convert import to_torch_int8

        int8, _ = to_torch_int8(sim, "x86" if "x86" in variant else "qnnpack")
        return lambda: int8(x)
    # int8 weights (u8s8) or uint8 weights (u8u8), written from our quantizer's parameters; ours_onnx: the format
    # --int8-target auto exports for this CPU (exact here)
    if variant == "ours_onnx":
        from compressor.deploy.target import format_here

        weights = format_here().weights
    else:
        weights = "uint8" if "u8u8" in variant else "int8"
    export_onnx(sim, x[:1], path, weights=weights)
    run = onnx_runner(path, threads=torch.get_num_threads())
    return lambda: run(x)


def measure(arch, batch, size, variant, iters, warmup):
    """Wall-clock and CPU time per batch. On a shared machine the process's CPU time (one thread) is the
    compute cost whatever else runs on the core; wall time adds the time the scheduler gave to others."""
    fn = build(arch, batch, size, variant)
    wall, cpu = [], []
    with torch.no_grad():
        for i in range(warmup + iters):
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            if i >= warmup:
                wall.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
    return {
        "median_ms": 1000 * statistics.median(cpu),
        "wall_median_ms": 1000 * statistics.median(wall),
        "min_ms": 1000 * min(cpu),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def interleaved(arch, batch, size, variants, iters, warmup):
    """Every variant built in this one process, then timed batch by batch in turn (A, B, C, A, B, C, ...).

    A paired comparison: on a noisy (virtual) machine one process's latency moves by up to 40 % against
    another's (page placement, neighbours), while consecutive batches in one process see the same
    conditions. Reports each variant's median CPU time and, per variant, the median over iterations of
    its time divided by torch.ao's in the same turn. Peak memory is not measured here (one process)."""
    if any("qnnpack" in v for v in variants):
        raise SystemExit("--same-process: the quantized engine is process-wide; leave out the qnnpack variants")
    fns = {v: build(arch, batch, size, v) for v in variants}
    cpu = {v: [] for v in variants}
    with torch.no_grad():
        for i in range(warmup + iters):
            for v, fn in fns.items():
                torch.backends.quantized.engine = "x86"
                start = time.process_time()
                fn()
                if i >= warmup:
                    cpu[v].append(time.process_time() - start)
    out = {v: {"median_ms": 1000 * statistics.median(t), "min_ms": 1000 * min(t)} for v, t in cpu.items()}
    for reference, key in (("torch_ao_x86", "vs_torch_ao"), ("ort_quantize_static", "vs_ort_quantize_static"),
                           ("fp32_onnxruntime", "vs_fp32_onnxruntime")):
        if reference in cpu:
            for v, t in cpu.items():
                out[v][key] = statistics.median(a / b for a, b in zip(t, cpu[reference]))
    return out


def time_onnx_files(paths, batch, iters, warmup, out=None):
    """Median CPU time per batch of each ONNX file, timed in turn (paired), with the first file as the reference."""
    import onnx

    from compressor.deploy.verify import onnx_runner

    runs, shapes = {}, set()
    for path in paths:
        dims = onnx.load(path).graph.input[0].type.tensor_type.shape.dim
        shapes.add(tuple(d.dim_value for d in dims[1:]))
        runs[path] = onnx_runner(path, threads=torch.get_num_threads())
    if len(shapes) != 1:
        raise SystemExit(f"--onnx: the files take different input shapes {sorted(shapes)}")
    x = torch.randn(batch, *shapes.pop())
    times = {p: [] for p in paths}
    for i in range(warmup + iters):
        for path, run in runs.items():
            start = time.process_time()
            run(x)
            if i >= warmup:
                times[path].append(time.process_time() - start)
    result = {"command": "python " + " ".join(sys.argv), "machine": machine(), "batch": batch,
              "files": {p: {"median_ms": 1000 * statistics.median(t),
                            "vs_first": statistics.median(a / b for a, b in zip(t, times[paths[0]]))}
                        for p, t in times.items()}}
    for path, r in result["files"].items():
        print(f"{path}: {r['median_ms']:.2f} ms per batch of {batch} ({r['vs_first']:.3f}x the first file)")
    if out:
        with open(out, "w") as f:
            json.dump(result, f, indent=1)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default=None, help="e.g. resnet20_cifar")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved repetitions of every variant")
    ap.add_argument("--configs", default=None, help="ARCH:BATCH:SIZE,... in this order (default: all)")
    ap.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated; also: {', '.join(EXTRA_VARIANTS)}"
    )
    ap.add_argument(
        "--same-process",
        action="store_true",
        help="also time the variants of each configuration in turn inside one process (paired comparison)",
    )
    ap.add_argument("--one", nargs=4, metavar=("ARCH", "BATCH", "SIZE", "VARIANT"), help=argparse.SUPPRESS)
    ap.add_argument("--onnx", nargs="+", metavar="FILE", help="time these ONNX files (yours: an --export-onnx output "
                    "and, say, an FP32 export of the same model) on random inputs of their own shape, paired")
    ap.add_argument("--batch", type=int, default=1, help="batch size for --onnx (default: 1)")
    args = ap.parse_args()
    if args.onnx:
        return time_onnx_files(args.onnx, args.batch, args.iters, args.warmup, args.out)
    if args.one:
        arch, batch, size, variant = args.one
        print(json.dumps(measure(arch, int(batch), int(size), variant, args.iters, args.warmup)))
        return
    results = {
        "command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} "
        f"taskset -c {','.join(map(str, sorted(os.sched_getaffinity(0))))} python " + " ".join(sys.argv),
        "machine": machine(),
        "runs": {},
    }
    print(json.dumps(results["machine"]), flush=True)
    variants = args.variants.split(",")
    configs = (
        CONFIGS
        if not args.configs
        else [(a, int(b), int(c)) for a, b, c in (item.split(":") for item in args.configs.split(","))]
    )
    for arch, batch, size in configs:
        if args.only and args.only != arch:
            continue
        key = f"{arch} batch {batch}"
        rounds = {v: [] for v in variants}
        for r in range(args.rounds):
            for variant in variants:
                proc = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--iters",
                        str(args.iters),
                        "--warmup",
                        str(args.warmup),
                        "--one",
                        arch,
                        str(batch),
                        str(size),
                        variant,
                    ],
                    capture_output=True,
                    text=True,
                )
                if proc.returncode != 0:
                    rounds[variant].append({"error": proc.stderr[-500:]})
                    print(key, variant, "ERROR", proc.stderr[-500:], flush=True)
                    continue
                one = json.loads(proc.stdout.strip().splitlines()[-1])
                rounds[variant].append(one)
                print(
                    f"{key:24s} round {r + 1} {variant:24s} {one['median_ms']:9.2f} ms CPU "
                    f"{one['wall_median_ms']:9.2f} ms wall  peak "
                    f"{one['peak_rss_mib']:7.0f} MiB",
                    flush=True,
                )
        results["runs"][key] = {}
        for variant, ones in rounds.items():
            ok = [o for o in ones if "median_ms" in o]
            if not ok:
                results["runs"][key][variant] = ones[0]
                continue
            results["runs"][key][variant] = {
                "median_ms": statistics.median(o["median_ms"] for o in ok),
                "rounds_ms": [o["median_ms"] for o in ok],
                "wall_median_ms": statistics.median(o["wall_median_ms"] for o in ok),
                "peak_rss_mib": max(o["peak_rss_mib"] for o in ok),
            }
        if args.same_process:
            same = interleaved(arch, batch, size, variants, args.iters, args.warmup)
            results.setdefault("same_process", {})[key] = same
            for variant, r in same.items():
                ratios = "  ".join(f"{r[k]:6.3f} x {k[3:]}" for k in ("vs_torch_ao", "vs_ort_quantize_static",
                                                                      "vs_fp32_onnxruntime") if k in r)
                print(f"{key:24s} same process {variant:24s} {r['median_ms']:9.2f} ms CPU  {ratios}", flush=True)
        fp32 = results["runs"][key].get("fp32", {}).get("median_ms")
        for r in results["runs"][key].values():
            if "median_ms" in r and fp32:
                r["speedup_vs_fp32"] = fp32 / r["median_ms"]
        if args.out:  # after each configuration, so a long run keeps what it measured
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)
    print(json.dumps(results, indent=1))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
