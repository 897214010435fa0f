#!/usr/bin/env python3
"""Bug 14(a), measured: a Distiller statistics file (one record per module of the unfolded model) used for a
model whose batch-norms are folded. Before the fix each folded conv took its own (pre-BN) record; now it takes
the BN's output record, as Distiller does. This script quantizes with both mappings (the old one reproduced by
dropping the BN records from the file) and reports per-site SQNR and test top-1.

    python benchmarks/distiller_stats_fold.py --checkpoint FP32_CKPT --out docs/benchmarks/distiller_stats_fold.json
"""

import argparse
import json
import math
import platform

import torch

from compressor.calibration.module_stats import collect_module_stats
from compressor.core.io import load_checkpoint
from compressor.core.state_keys import load_weights, model_state
from compressor.data import load_data
from compressor.data.loaders import load_calibration_data
from compressor.models import create_model
from compressor.quantization.linear.ptq import PostTrainLinearQuantizer


@torch.no_grad()
def top1(model, loader):
    correct = total = 0
    for x, y in loader:
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    return 100.0 * correct / total


@torch.no_grad()
def sqnr(q, gm, x):
    captured = {}
    hooks = [fq.register_forward_hook(lambda m, i, o, n=name: captured.setdefault(n, []).append(o.double()))
             for name, fq in q.activation_quantizers.items()]
    q.set_state(False, False)
    gm(x)
    q.set_state(True, False)
    gm(x)
    for h in hooks:
        h.remove()
    return {n: 10 * math.log10(ref.pow(2).sum().item() / max((ref - qo).pow(2).sum().item(), 1e-30))
            for n, (ref, qo) in captured.items()}


def quantize(model, stats, bits_a, bits_w):
    q = PostTrainLinearQuantizer(model, bits_activations=bits_a, bits_parameters=bits_w, mode="ASYMMETRIC_UNSIGNED",
                                 per_channel_wts=True, model_activation_stats=stats)
    return q, q.prepare_model().eval()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--arch", default="resnet20_cifar")
    p.add_argument("--bits-acts", type=int, default=4)
    p.add_argument("--bits-wts", type=int, default=8)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    model = create_model(a.arch, "digits")
    load_weights(model, model_state(load_checkpoint(a.checkpoint)))
    model.eval()
    _, _, test = load_data("digits", None, (3, 32, 32), 128)
    calib = load_calibration_data("digits", None, (3, 32, 32), 128, 512)
    stats = collect_module_stats(model, calib)
    folded_bns = {n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    old_stats = {n: r for n, r in stats.items() if n not in folded_bns}  # what the old mapping read
    x = next(iter(calib))[0]
    result = {"arch": a.arch, "checkpoint": a.checkpoint, "bits_activations": a.bits_acts, "bits_weights": a.bits_wts,
              "machine": platform.processor() or platform.machine(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "fp32_top1": top1(model, test)}
    for label, s in (("conv_pre_bn_record", old_stats), ("bn_output_record", stats)):
        q, gm = quantize(model, s, a.bits_acts, a.bits_wts)
        per_site = sqnr(q, gm, x)
        changed = sorted(n for n in per_site if n.endswith(("conv2", "downsample.0")))
        result[label] = {"top1": top1(gm, test), "mean_sqnr_db_folded_conv_sites":
                         sum(per_site[n] for n in changed) / len(changed),
                         "sqnr_db": {n: round(v, 2) for n, v in per_site.items()}}
        print(f"{label}: top-1 {result[label]['top1']:.2f}  mean SQNR at the {len(changed)} conv sites before adds "
              f"{result[label]['mean_sqnr_db_folded_conv_sites']:.2f} dB")
    print(f"FP32 top-1 {result['fp32_top1']:.2f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
