"""compress_classifier.py --sense element|filter|channel [--sense-range START STOP STEP]: Distiller's pruning
sensitivity analysis on the validation split (Distiller used the test set), written as sensitivity.csv in
Distiller's columns (parameter, sparsity, top1, top5, loss), a table in the log and sensitivity.png."""

import csv
import io
import logging
import os

import numpy as np
from tabulate import tabulate

from compressor.app import pictures
from compressor.core.errors import UsageError
from compressor.core.io import atomic_write_text
from compressor.core.progress import progress
from compressor.pruning.sensitivity import pruning_sensitivity
from compressor.training.loop import evaluate

log = logging.getLogger("compressor")


def sense_levels(sense_range):
    start, stop, step = sense_range
    if not (0 <= start < 1 and 0 < stop <= 1 and step > 0 and start < stop):
        raise UsageError(f"--sense-range START STOP STEP: expected 0 <= START < STOP <= 1 and STEP > 0, got "
                         f"{sense_range}")
    return [round(float(v), 6) for v in np.arange(start, stop, step)]


def run_sense(run, args):
    """The analysis of ``run``'s model (weights from --resume-from or --exp-load-weights-from)."""
    levels = sense_levels(args.sense_range)
    if not len(run.val_loader.dataset):
        raise UsageError("--sense evaluates on the validation split: give --vs > 0")
    model = run.model

    def score(m):
        return evaluate(m, run.val_loader, run.criterion, run.device, desc="sense")

    quiet = logging.getLogger("compressor.training.loop")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # one line per configuration would bury the table
    try:
        rows = pruning_sensitivity(model, score, args.sense, levels, progress)
    finally:
        quiet.setLevel(level)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["parameter", "sparsity", "top1", "top5", "loss"])
    for name, lvl, r in rows:
        writer.writerow([name, lvl, f"{r['top1']:.3f}", f"{r['top5']:.3f}", f"{r['loss']:.5f}"])
    csv_path = run.run.file("sensitivity.csv")
    atomic_write_text(csv_path, buf.getvalue())
    table = tabulate([(n, lvl, r["top1"], r["top5"], r["loss"]) for n, lvl, r in rows],
                     headers=["parameter", "sparsity", "top1", "top5", "loss"], floatfmt=".3f")
    log.info("Pruning sensitivity (%s, validation split, %d images):\n%s", args.sense,
             rows[0][2]["images"] if rows else 0, table)
    png = run.run.file("sensitivity.png")
    pictures.save(pictures.pruning_sensitivity_figure(rows, args.sense), png)
    log.info("Sensitivity written to %s and %s", csv_path, os.path.basename(png))
    return rows
