#!/usr/bin/env python3
"""Every torchvision classifier through 8-bit post-training quantization, ONNX export and the agreement check.

Per arch (each in its own process, so that one crash or out-of-memory costs one row): the model with random
weights for 10 classes, batch-norm statistics taken on 256 digits training images served at the arch's input
size, its classifier head fitted as a linear probe on them (random weights alone give near-tied logits, on which
agreement means nothing), PTQ W8A8 (per-channel symmetric weights, asymmetric activations) calibrated on 32
training images, export for this CPU (``--int8-target auto``), and the app's agreement check on
``--test-images`` digits test images. Rows land in ``--out`` as they finish; a rerun skips the archs already
there (resumable).

    OMP_NUM_THREADS=2 python benchmarks/zoo.py --out docs/benchmarks/zoo.json
    python benchmarks/zoo.py --out /tmp/zoo/again.json --arch swin_v2_t --merge-into docs/benchmarks/zoo_avx2.json
    python benchmarks/zoo.py --table docs/benchmarks/zoo_avx2.json      # docs/zoo.md's table
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

# input size per arch: the smallest that the architecture takes (CNNs 64x64); archs whose classifier pools to a
# fixed grid (VGG, AlexNet) and MaxViT (window partitions of 7) at 224
SIZE_224 = ("vgg", "alexnet", "maxvit")
SIZE_96 = ("inception_v3",)


def input_size(arch):
    if arch.startswith(SIZE_224):
        return 224
    if arch.startswith(SIZE_96):
        return 96
    return 64


def build(arch, size):
    import torchvision

    extra = {"aux_logits": False, "init_weights": True} if arch in ("googlenet", "inception_v3") else {}
    if arch.startswith("vit_"):
        extra["image_size"] = size
    return torchvision.models.get_model(arch, weights=None, num_classes=10, **extra)


def head_of(model):
    """The last Linear (or 1x1 conv) the model calls: the classifier head the probe fits."""
    import torch

    last = None
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            last = module
    return last


def recalibrate_batchnorm(model, loader):
    """Batch-norm statistics of the data (random weights leave mean 0 / var 1, which collapses deep features)."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    model.train()
    with torch.no_grad():
        for x, _ in loader:
            model(x)
    model.eval()
    return len(norms)


def linear_probe(model, loader, steps=200):
    """Fit the head on the frozen features (its input, recorded by a hook); returns the training top-1."""
    import torch

    head = head_of(model)
    feats, labels = [], []
    hook = head.register_forward_pre_hook(lambda m, args: feats.append(args[0].detach()))
    with torch.no_grad():
        for x, y in loader:
            model(x)
            labels.append(y)
    hook.remove()
    feats, labels = torch.cat(feats), torch.cat(labels)
    opt = torch.optim.Adam(head.parameters(), 1e-2)
    for _ in range(steps):
        opt.zero_grad()
        logits = head(feats)
        logits = logits.flatten(2).mean(2) if logits.dim() > 2 else logits
        torch.nn.functional.cross_entropy(logits, labels).backward()
        opt.step()
    with torch.no_grad():
        return (model(torch.cat([x for x, _ in loader])).argmax(1) == labels).float().mean().item()


def one(arch, test_images):
    import torch
    from torch.utils.data import DataLoader, Subset

    from compressor.data.digits import digits_datasets
    from compressor.deploy.export import export_quantized
    from compressor.quantization.linear.ptq import PostTrainLinearQuantizer

    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    size = input_size(arch)
    row = {"arch": arch, "input": [3, size, size]}
    start = time.perf_counter()
    train, test = digits_datasets((3, size, size))
    model = build(arch, size).eval()
    row["parameters"] = sum(p.numel() for p in model.parameters())
    probe = DataLoader(Subset(train, range(256)), batch_size=32)
    recalibrate_batchnorm(model, probe)
    row["probe_train_top1"] = 100 * linear_probe(model, probe)
    test_loader = DataLoader(Subset(test, range(test_images)), batch_size=24)
    with torch.no_grad():
        row["fp32_test_top1"] = 100 * sum((model(x).argmax(1) == y).sum().item() for x, y in test_loader) / test_images
    quantizer = PostTrainLinearQuantizer(model, bits_activations=8, bits_parameters=8, per_channel_wts=True,
                                         mode={"activations": "ASYMMETRIC_UNSIGNED", "weights": "SYMMETRIC"})
    sim = quantizer.prepare_model().eval()
    row["activation_sites"] = len(quantizer.activation_quantizers)
    row["quantized_weights"] = len(quantizer.weight_quantizers)
    quantizer.calibrate([(x, None) for x, _ in DataLoader(Subset(train, range(32)), batch_size=16)])
    row["ptq_s"] = round(time.perf_counter() - start, 1)
    with tempfile.TemporaryDirectory() as folder:
        report = export_quantized(sim, test_loader,
                                  onnx_path=os.path.join(folder, "m.onnx"), accept_disagreement=True)
    report.pop("int8_model", None)
    row["export"] = report
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="the JSON file the rows go to (required, except for --one)")
    ap.add_argument("--arch", nargs="*", help="these archs only (default: every torchvision classifier)")
    ap.add_argument("--test-images", type=int, default=120)
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per arch")
    ap.add_argument("--merge-into", metavar="JSON", help="after the run, put --out's rows into this file's rows "
                    "(a later run of some archs, after a fix), its command appended to that file's commands")
    ap.add_argument("--table", metavar="JSON", help="print the markdown table of docs/zoo.md from JSON and exit")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("ROW " + json.dumps(one(args.one, args.test_images)))
        return
    if args.table:
        print(table(json.load(open(args.table))["rows"]))
        return
    if not args.out:
        ap.error("--out is required")
    import torchvision

    archs = args.arch or sorted(torchvision.models.list_models(module=torchvision.models))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from inference_speed import machine  # CPU model, integer capability, threads, versions: one definition

    result = {"command": "python " + " ".join(sys.argv), "machine": machine(), "rows": {}}
    if os.path.exists(args.out):
        with open(args.out) as f:
            result["rows"] = json.load(f)["rows"]
    for arch in archs:
        if arch in result["rows"]:
            continue
        start = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, __file__, "--one", arch, "--test-images", str(args.test_images)],
                                  capture_output=True, text=True, timeout=args.timeout)
            rows = [line[4:] for line in proc.stdout.splitlines() if line.startswith("ROW ")]
            if rows:
                row = json.loads(rows[-1])
            else:
                tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                row = {"arch": arch, "error": tail[:500], "returncode": proc.returncode}
        except subprocess.TimeoutExpired:
            row = {"arch": arch, "error": f"took more than {args.timeout} s"}
        row.setdefault("seconds", round(time.perf_counter() - start, 1))
        result["rows"][arch] = row
        agree = row.get("export", {}).get("onnx", {}).get("agreement")
        print(f"{arch}: {agree if agree is not None else row.get('error')}", flush=True)
        write(args.out, result)
    if args.merge_into:
        merged = json.load(open(args.merge_into))
        merged["rows"].update({arch: result["rows"][arch] for arch in archs if arch in result["rows"]})
        merged["rows"] = dict(sorted(merged["rows"].items()))
        merged.setdefault("commands", []).append(result["command"])
        write(args.merge_into, merged)


def write(path, data):
    """JSON written atomically (temp file, then rename)."""
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1)
    os.replace(path + ".tmp", path)


def table(rows):
    """docs/zoo.md's table: one line per arch, refusals and time-outs in bold."""
    lines = ["| arch | input | FP32 top-1 | W8A8 sim top-1 | export agreement | largest logit diff | s |",
             "|---|---|---|---|---|---|---|"]
    for arch, r in sorted(rows.items()):
        onnx = (r.get("export") or {}).get("onnx") or {}
        if "error" in r or not onnx:
            lines.append(f"| {arch} | | | | **{str(r.get('error', 'no export'))[:150]}** | | {r['seconds']:.0f} |")
            continue
        lines.append(f"| {arch} | {r['input'][1]} | {r['fp32_test_top1']:.1f} | {onnx['simulated_top1']:.1f} | "
                     f"{onnx['agreement']:.2f} % | {onnx['max_logit_diff']:.3f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
