#!/usr/bin/env python3
"""Markdown tables (as in docs/results.md) from the JSON that benchmarks/ptq_accuracy.py writes.

    python benchmarks/ptq_tables.py docs/benchmarks/ptq_accuracy.json
"""

import json
import sys

METHODS = ["NONE", "AVG", "N_STD", "GAUSS", "LAPLACE", "PERCENTILE", "KL", "MSE"]


def table(result):
    with_ao = bool(result.get("torch_ao"))
    head = "| config | " + " | ".join(METHODS) + (" | torch.ao |" if with_ao else " |")
    lines = [head, "|---|" + "---|" * (len(METHODS) + with_ao)]
    for config, row in result["ours"].items():
        best = max(row.values())
        cells = [f"**{row[m]:.2f}**" if row[m] == best else f"{row[m]:.2f}" for m in METHODS]
        if with_ao:
            ao = result["torch_ao"].get(config)
            cells.append(f"{ao:.2f}" if ao is not None else "")
        lines.append(f"| {config} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(table(json.load(open(path))))
        print()
