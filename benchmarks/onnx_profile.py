#!/usr/bin/env python3
"""ONNX Runtime's own profile of two ONNX models, node by node (kernel time per call, one thread): where a pruned
model's time goes against the dense one's (issue 24). Nodes are matched by name; models from benchmarks/pruning.py.

    OMP_NUM_THREADS=1 python benchmarks/onnx_profile.py DENSE.onnx THINNED.onnx --batch 32 \\
        --out docs/benchmarks/fashion_mnist/pruning/onnx_profile.json
"""

import argparse
import collections
import json
import os
import sys
import tempfile

import numpy as np
import onnxruntime as ort
from inference_speed import machine  # benchmarks/ (the script's folder is on sys.path)

from compressor.core.io import atomic_write_text


def node_ms(path, batch, iters):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "profile")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name:
            np.random.default_rng(0).random((batch, *session.get_inputs()[0].shape[1:]), dtype=np.float32)}
    for _ in range(iters):
        session.run(None, feed)
    events = json.load(open(session.end_profiling()))
    total = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            total[e["name"][: -len("_kernel_time")]] += e["dur"]
    return {name: us / iters / 1e3 for name, us in total.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reference")
    ap.add_argument("other")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    a, b = node_ms(args.reference, args.batch, args.iters), node_ms(args.other, args.batch, args.iters)
    rows = {n: {"reference_ms": a[n], "other_ms": b.get(n, 0.0), "ratio": b.get(n, 0.0) / a[n]}
            for n in a if a[n] > 0.05}
    for n, r in rows.items():
        print(f"{n:40s} {r['reference_ms']:7.2f} {r['other_ms']:7.2f} {r['ratio']:5.2f}")
    print(f"total {sum(a.values()):.2f} ms -> {sum(b.values()):.2f} ms")
    result = {"command": "python " + " ".join(sys.argv), "batch": args.batch, "nodes": rows,
              "total_ms": [sum(a.values()), sum(b.values())], "machine": machine()}
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
