#!/usr/bin/env python3
"""Agreement of the exported INT8 model with the simulation on the digits test split at ImageNet size.

No trained resnet18 is available offline, so its classifier is fitted as a linear probe on the
frozen random-init features of ``--probe-images`` training images (digits resized to 3x224x224):
enough to give the 360 test images distinct, confident predictions, which is what an agreement
check needs. Then 8-bit post-training quantization (per-channel symmetric weights, asymmetric
activations calibrated on 64 training images), export for ``--int8-target`` (default auto: this
CPU), and the check that the app runs after every export.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/export_agreement.py \
        --out docs/benchmarks/export_agreement_vnni.json
"""

import argparse
import json
import os
import sys
import tempfile
import warnings

import torch
from torch.utils.data import DataLoader, Subset

from compressor.data.digits import digits_datasets
from compressor.deploy.export import export_quantized
from compressor.models import create_model
from compressor.quantization.linear.ptq import PostTrainLinearQuantizer


def linear_probe(model, loader, steps=300):
    feats, labels = [], []
    head = model.fc
    model.fc = torch.nn.Identity()
    with torch.no_grad():
        for x, y in loader:
            feats.append(model(x))
            labels.append(y)
    model.fc = head
    feats, labels = torch.cat(feats), torch.cat(labels)
    opt = torch.optim.Adam(head.parameters(), 1e-2)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(feats), labels).backward()
        opt.step()
    return (head(feats).argmax(1) == labels).float().mean().item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--probe-images", type=int, default=512)
    ap.add_argument("--int8-target", default="auto")
    ap.add_argument(
        "--integer-arithmetic",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="simulate conv/linear with integer sums and requantization, as the apps do (default: on)",
    )
    ap.add_argument("--pytorch", action="store_true", help="also check the PyTorch int8 model")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    train, test = digits_datasets((3, args.size, args.size))
    model = create_model(args.arch, "digits").eval()
    probe_top1 = linear_probe(model, DataLoader(Subset(train, range(args.probe_images)), batch_size=32))
    quantizer = PostTrainLinearQuantizer(
        model,
        bits_activations=8,
        bits_parameters=8,
        per_channel_wts=True,
        mode={"activations": "ASYMMETRIC_UNSIGNED", "weights": "SYMMETRIC"},
        integer_arithmetic=args.integer_arithmetic,
    )
    sim = quantizer.prepare_model().eval()
    quantizer.calibrate([(x, None) for x, _ in DataLoader(Subset(train, range(64)), batch_size=32)])
    folder = tempfile.mkdtemp()
    report = export_quantized(
        sim,
        DataLoader(test, batch_size=24),
        onnx_path=os.path.join(folder, "m.onnx"),
        pytorch_path=os.path.join(folder, "int8.pth.tar") if args.pytorch else None,
        target=args.int8_target,
        accept_disagreement=True,
    )
    report.pop("int8_model")
    result = {
        "command": "python " + " ".join(sys.argv),
        "arch": args.arch,
        "input": [3, args.size, args.size],
        "integer_arithmetic": args.integer_arithmetic,
        "probe_train_top1": 100 * probe_top1,
        "export": report,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
