#!/usr/bin/env python3
"""How much a conv + batch-norm amplifies 8-bit quantization noise on its input, in the FP32 model (issue 22): the
input of ``--conv`` is captured on calibration images, uniform noise of one 8-bit step of the input's range is
added, and the SQNR of the input and of the conv + batch-norm output (``--bn``) are compared; the batch-norm's
gains |gamma| / std are reported. Why EfficientNet-B0 collapses under every W8A8 method (docs/results.md).

    OMP_NUM_THREADS=1 python benchmarks/noise_amplification.py --arch efficientnet_b0_cifar \\
        --checkpoint runs/families/efficientnet_b0_cifar___<stamp>/checkpoint.pth.tar \\
        --conv features.1.0.block.0.0 --bn features.1.0.block.0.1 \\
        --out docs/benchmarks/fashion_mnist/families/efficientnet_b0_cifar_noise.json
"""

import argparse
import json
import sys

import torch
from accuracy_stats import machine  # benchmarks/ (the script's folder is on sys.path)

from compressor.core.io import atomic_write_text, load_checkpoint
from compressor.core.state_keys import load_weights
from compressor.data.loaders import load_calibration_data
from compressor.models import create_model


def sqnr_db(signal, noisy):
    return float(10 * torch.log10(signal.pow(2).mean() / (signal - noisy).pow(2).mean()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--conv", required=True)
    ap.add_argument("--bn", required=True)
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = create_model(args.arch, args.dataset)
    load_weights(model, load_checkpoint(args.checkpoint)["state_dict"])
    model.eval()
    conv, bn = model.get_submodule(args.conv), model.get_submodule(args.bn)
    images = next(iter(load_calibration_data(args.dataset, None, (3, 32, 32), args.images, args.images)))[0]
    seen = []
    handle = conv.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach()))
    with torch.no_grad():
        model(images)
        handle.remove()
        x = seen[0]
        step = (x.max() - x.min()) / 255
        noisy = x + (torch.rand_like(x) - 0.5) * step
        y, y_noisy = bn(conv(x)), bn(conv(noisy))
        gain = (bn.weight.abs() / torch.sqrt(bn.running_var + bn.eps))
        per_channel = [sqnr_db(y[:, c], y_noisy[:, c]) for c in range(y.shape[1])]
    result = {"command": "python " + " ".join(sys.argv), "images": len(images),
              "input_sqnr_db": sqnr_db(x, noisy), "output_sqnr_db": sqnr_db(y, y_noisy),
              "worst_channel_sqnr_db": min(per_channel),
              "bn_gain": {"max": float(gain.max()), "median": float(gain.median())},
              "bn_running_var_min": float(bn.running_var.min()), "machine": machine()}
    print(json.dumps(result, indent=1))
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
