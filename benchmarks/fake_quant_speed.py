#!/usr/bin/env python3
"""Fake quantization of one activation, ours (compressor/quantization/fake_quant_op.py: the one-pass CPU kernel, and
its vectorized tensor ops with the kernel switched off) against torch's kernel, eager and under torch.compile, forward
alone and forward plus backward; best of 5 rounds, one process (issue 23).

    OMP_NUM_THREADS=1 python benchmarks/fake_quant_speed.py --out docs/benchmarks/fake_quant_speed_avx2.json
"""

import argparse
import json
import sys

import torch
from accuracy_stats import best_seconds, machine  # benchmarks/ (the script's folder is on sys.path)

from compressor.core.io import atomic_write_text
from compressor.quantization import cpu_kernel
from compressor.quantization.fake_quant_op import fake_quantize


def best_ms(fn):
    return 1e3 * best_seconds(fn, iters=10, rounds=5)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="64,16,32,32", help="the activation (resnet20_cifar's layer1 at batch 64)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    x = torch.randn(shape).relu_()
    xg = x.clone().requires_grad_()
    grad = torch.randn(shape)
    scale, zero_point = torch.tensor([0.02]), torch.tensor([0], dtype=torch.int32)
    ours = lambda a: fake_quantize(a, scale, zero_point, 0, 255)  # noqa: E731
    theirs = lambda a: torch.fake_quantize_per_tensor_affine(a, scale, zero_point, 0, 255)  # noqa: E731
    assert cpu_kernel.ops() is not None, cpu_kernel.build_error()

    def tensor_ops(a):
        with cpu_kernel.switched_off():
            return ours(a)

    variants = {"torch": theirs, "ours": ours, "ours_tensor_ops": tensor_ops}
    if not args.no_compile:
        variants["ours_compiled"] = torch.compile(ours)
    rows = {}
    for name, fn in variants.items():
        rows[name] = {"forward_ms": best_ms(lambda fn=fn: fn(x)),
                      "forward_backward_ms": best_ms(lambda fn=fn: fn(xg).backward(grad))}
        print(name, rows[name], flush=True)
    result = {"command": "python " + " ".join(sys.argv), "shape": shape, "ms": rows, "machine": machine()}
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
