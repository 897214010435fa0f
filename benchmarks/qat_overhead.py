#!/usr/bin/env python3
"""QAT epoch time against FP32 epoch time, resnet20_cifar on digits, in one run.

Each variant trains from the same initial weights on the same batches; epochs
are interleaved (FP32, ours, torch.ao, FP32, ...) so machine drift hits all
alike, and the median epoch time is reported.

    python benchmarks/qat_overhead.py --epochs 3 --out docs/benchmarks/qat_overhead.json

``--recipe NAME=PATH`` (repeatable) adds the quantizer of a recipe as a variant, e.g. the
low-bit methods of schedules/quant_aware_train/ (``--no-default`` leaves out our 8-bit QAT
and torch.ao, keeping FP32 as the reference). ``--compile`` adds FP32 and our QAT under
torch.compile (compiled in the untimed first epoch); ``--torch-kernel`` adds our QAT with torch's
own fake-quantize kernels in place of ``fake_quant_op`` (what it cost before), ``--tensor-ops`` our QAT with the
one-pass CPU kernel switched off (``COMPRESSOR_CPU_KERNEL=0``: the vectorized tensor ops). ``--amp`` adds FP32 and
our QAT under bf16 autocast (the quantizers compute in float32, as the apps' ``--amp``), ``--channels-last`` adds
them with model and images in channels-last memory format (the apps' ``--channels-last``). ``--arch``,
``--image-size`` and ``--steps`` time other networks on digits resized, e.g.
``--arch mobilenet_v2 --image-size 224 -b 16 --steps 20``.
"""

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import time

import torch

from compressor.data import load_data
from compressor.models import create_model
from compressor.quantization import cpu_kernel
from compressor.quantization.linear.qat import QuantAwareTrainRangeLinearQuantizer


def ours(model, opt):
    q = QuantAwareTrainRangeLinearQuantizer(model, opt, bits_activations=8, bits_weights=8,
                                            mode="ASYMMETRIC_UNSIGNED", per_channel_wts=True)
    gm = q.prepare_model()
    q.set_state(True, True)
    return gm


def from_recipe(path):
    from compressor.recipe.build import build_scheduler, read_recipe

    def prepare(model, opt):
        scheduler = build_scheduler(read_recipe(path), model, opt)
        scheduler.on_epoch_begin(0, opt)  # the quantization policy's first epoch: quantizing
        return scheduler.model

    return prepare


def torch_ao(model, opt, size=32):
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    torch.backends.quantized.engine = "x86"
    return prepare_qat_fx(model.train(), get_default_qat_qconfig_mapping("x86"), (torch.randn(1, 3, size, size),))


def compiled(prepare):
    return lambda model, opt: torch.compile(prepare(model, opt))


@contextlib.contextmanager
def torch_kernels():
    """Our QAT with torch.fake_quantize_per_*_affine instead of fake_quant_op (the same values, bit for bit)."""
    from compressor.quantization import fake_quant

    def theirs(x, scale, zero_point, qmin, qmax, axis=None):
        if axis is None:
            return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)
        return torch.fake_quantize_per_channel_affine(x, scale, zero_point, axis, qmin, qmax)

    ours_op, fake_quant.fake_quantize = fake_quant.fake_quantize, theirs
    try:
        yield
    finally:
        fake_quant.fake_quantize = ours_op


def epoch_time(model, opt, loader, epoch, device, steps=None, channels_last=False):
    model.train()
    loader.sampler.set_epoch(epoch)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    # data loading is not what we measure
    batches = [(x.to(device).contiguous(memory_format=fmt), y.to(device)) for x, y in loader]
    batches = batches[:steps] if steps else batches
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for x, y in batches:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per variant (after one warm-up epoch)")
    ap.add_argument("-b", "--batch-size", type=int, default=64)
    ap.add_argument("--no-torch-ao", action="store_true", help="skip torch.ao's prepare_qat_fx reference")
    ap.add_argument("--no-default", action="store_true", help="only FP32 and the --recipe variants")
    ap.add_argument("--recipe", action="append", default=[], metavar="NAME=PATH", help="time a recipe's quantizer")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="also FP32 and our QAT under torch.compile")
    ap.add_argument("--torch-kernel", action="store_true", help="also our QAT with torch's fake-quantize kernels")
    ap.add_argument("--tensor-ops", action="store_true", help="also our QAT without the one-pass CPU kernel")
    ap.add_argument("--amp", action="store_true", help="also FP32 and our QAT under bf16 autocast")
    ap.add_argument("--channels-last", action="store_true", help="also FP32 and our QAT in channels-last format")
    ap.add_argument("--arch", default="resnet20_cifar")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=None, help="time only the first N batches of each epoch")
    args = ap.parse_args()
    device = torch.device(args.device)

    torch.manual_seed(0)
    size = args.image_size
    train, _, _ = load_data("digits", None, (3, size, size), args.batch_size)
    base = create_model(args.arch, "digits")
    variants = {"fp32": lambda m, o: m}
    contexts = {}
    if not args.no_default:
        variants["ours_qat"] = ours
        if args.torch_kernel:
            variants["ours_qat_torch_kernel"] = ours
            contexts["ours_qat_torch_kernel"] = torch_kernels
        if args.tensor_ops:
            variants["ours_qat_tensor_ops"] = ours
            contexts["ours_qat_tensor_ops"] = cpu_kernel.switched_off
        if not args.no_torch_ao:
            variants["torch_ao_qat"] = lambda m, o: torch_ao(m, o, size)
    if args.compile:
        variants["fp32_compiled"] = compiled(variants["fp32"])
        if not args.no_default:
            variants["ours_qat_compiled"] = compiled(ours)
    channels_last = set()
    for switch, suffix in ((args.amp, "amp_bf16"), (args.channels_last, "channels_last")):
        if not switch:
            continue
        for base_name in ("fp32",) + (() if args.no_default else ("ours_qat",)):
            name = f"{base_name}_{suffix}"
            variants[name] = variants[base_name]
            if suffix == "channels_last":
                channels_last.add(name)
            else:
                contexts[name] = lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    for spec in args.recipe:
        name, path = spec.split("=", 1)
        variants[name] = from_recipe(path)
    runs = {}
    for name, prepare in variants.items():
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        model = prepare(model, opt).to(device)
        if name in channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        runs[name] = (model, opt, [])
    for epoch in range(args.epochs + 1):
        for name, (model, opt, times) in runs.items():
            with contexts.get(name, contextlib.nullcontext)():
                t = epoch_time(model, opt, train, epoch, device, args.steps, name in channels_last)
            if epoch > 0:  # the first epoch warms caches and allocators
                times.append(t)
            print(f"epoch {epoch} {name:22s} {t:7.2f} s", flush=True)
    fp32 = statistics.median(runs["fp32"][2])
    result = {
        "command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python " + " ".join(sys.argv),
        "machine": (torch.cuda.get_device_name(device) if device.type == "cuda" else
                    f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                    f"{torch.get_num_threads()} threads") + f", torch {torch.__version__}",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "arch": args.arch,
        "image_size": size,
        "batch_size": args.batch_size,
        "steps_per_epoch": min(len(train), args.steps or len(train)),
        "median_epoch_s": {name: statistics.median(t) for name, (_, _, t) in runs.items()},
    }
    result["ratio_vs_fp32"] = {name: s / fp32 for name, s in result["median_epoch_s"].items()}
    print(json.dumps(result, indent=2))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
