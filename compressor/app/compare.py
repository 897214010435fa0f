"""compressor compare: one row per run folder, from its summary.json (and recipe), as a table or a plot.

    compressor compare logs/ [--sort top1] [--format md|csv|json] [--plot pareto.png]

The user's daily loop is "run a recipe, compare it with the last ten runs"; this reads the record
every run writes (``compressor.app.run_record``: the same keys for every kind of run) and falls back
to the older summary.json keys for runs written before it. Test top-1 comes with its 95 % Wilson
score interval over the test images: on digits' 360 test images a 1-point difference is within
noise, which a bare number hides.
"""

import argparse
import csv
import io
import json
import math
import os
import sys

from tabulate import tabulate

from compressor.app.errors import run_guarded
from compressor.core.errors import UsageError
from compressor.core.io import atomic_write, atomic_write_text

SUMMARY = "summary.json"
# column -> header; the order of the table
COLUMNS = {
    "run": "run", "arch": "arch", "dataset": "dataset", "kind": "kind", "recipe": "recipe",
    "quantizer": "quantizer", "bits": "bits W/A", "method": "method", "epochs": "epochs",
    "top1": "test top-1", "top1_ci95": "95 % CI", "best_val": "best val top-1", "size_vs_fp32": "size vs FP32",
    "size_mib": "size MiB", "bops_vs_fp32": "BOPs vs FP32", "export_agreement": "export agree %",
    "wall_time_s": "wall s",
}
METRIC_COLUMNS = ("run", "top1", "top1_ci95", "best_val", "size_vs_fp32", "size_mib", "bops_vs_fp32",
                  "export_agreement", "wall_time_s")
SORT_KEYS = {  # --sort KEY: (column, descending)
    "top1": ("top1", True), "best_val": ("best_val", True), "size": ("size_mib", False),
    "wall": ("wall_time_s", False), "run": ("run", False),
}


def wilson_interval(percent, n, z=1.959964):
    """95 % Wilson score interval (in %) of a top-1 of ``percent`` % measured on ``n`` images."""
    if not n:
        return None
    p = percent / 100.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [100.0 * (centre - half), 100.0 * (centre + half)]


def find_runs(paths, unfinished=None):
    """Run folders (holding summary.json) under each path, recursively; errors for paths without any. Run folders
    without a summary.json (an app's args.yaml is written at the start, the summary at the end: the run crashed,
    was interrupted or still runs) go to ``unfinished`` when given."""
    found, problems = [], []
    for path in paths:
        if not os.path.exists(path):
            problems.append(f"{path}: no such file or folder")
            continue
        if os.path.isfile(path):
            path = os.path.dirname(path) if os.path.basename(path) == SUMMARY else path
        walked = sorted((dirpath, files) for dirpath, _, files in os.walk(path))
        runs = [dirpath for dirpath, files in walked if SUMMARY in files]
        partial = [dirpath for dirpath, files in walked if SUMMARY not in files and "args.yaml" in files]
        if unfinished is not None:
            unfinished += [r for r in partial if r not in unfinished]
        if not runs:
            problems.append(f"{path}: no run folder (none holds a {SUMMARY})"
                            + (f"; {len(partial)} unfinished" if partial else ""))
        found += [r for r in runs if r not in found]
    return found, problems


def _legacy_hparams(s):
    """The record's keys from a summary.json written before run_record existed."""
    if "quantized" in s:  # post-training
        q = s.get("quantizer") or {}
        return {"kind": "ptq", "arch": s.get("arch"), "dataset": s.get("dataset"), "recipe": "n/a",
                "quantizer": "PostTrainLinearQuantizer", "method": q.get("mode"),
                "bits_weights": q.get("bits_weights") or q.get("bits_parameters"),
                "bits_activations": q.get("bits_activations"), "epochs": 0}
    quantized = (s.get("bits_weights") or 32) < 32 or (s.get("bits_activations") or 32) < 32
    return {"kind": "quantized" if quantized else "fp32", "arch": s.get("arch"), "dataset": s.get("dataset"),
            "recipe": os.path.basename(s["recipe"]) if s.get("recipe") else "none", "quantizer": "n/a",
            "method": "n/a", "bits_weights": s.get("bits_weights"), "bits_activations": s.get("bits_activations"),
            "epochs": s.get("epochs")}


def _test(s):
    return s.get("quantized") if "quantized" in s else s.get("test")


def _export_agreement(s):
    found = [t["agreement"] for t in (s.get("export") or {}).values() if isinstance(t, dict) and "agreement" in t]
    return min(found) if found else None


class AnalysisFolder(Exception):
    """A folder an app wrote that holds no trained or quantized model to compare (``--sensitivity``)."""


def load_row(run_dir):
    """One table row from ``run_dir``/summary.json; UsageError naming the file when it is not a summary."""
    path = os.path.join(run_dir, SUMMARY)
    if os.path.exists(path) and not os.path.isfile(path):  # a FIFO there once blocked compare forever
        raise UsageError(f"{path}: not a regular file")
    try:
        with open(path, encoding="utf-8") as f:
            s = json.load(f)
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot be read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: broken JSON at line {exc.lineno} column {exc.colno} ({exc.msg})") from None
    if isinstance(s, dict) and (s.get("kind") == "sensitivity" or ("sensitivity" in s and _test(s) is None)):
        raise AnalysisFolder(f"{run_dir}: a sensitivity analysis, not a run (skipped)")
    test = _test(s) if isinstance(s, dict) else None
    if not isinstance(test, dict) or not isinstance(test.get("top1"), (int, float)):
        raise UsageError(f"{path}: not a run summary (expected a 'test' or 'quantized' result with 'top1')")
    _check_summary(s, test, path)
    hp = s.get("hparams") or _legacy_hparams(s)
    size = s.get("model_size_bits") or {}
    best = s.get("best") or {}
    n = test.get("images")
    ci = wilson_interval(test["top1"], n)
    return {
        "run": os.path.basename(os.path.normpath(run_dir)), "path": run_dir,
        "arch": hp.get("arch"), "dataset": hp.get("dataset"), "kind": hp.get("kind"), "recipe": hp.get("recipe"),
        "quantizer": hp.get("quantizer"), "bits": f"{hp.get('bits_weights') or 32}/{hp.get('bits_activations') or 32}",
        "method": hp.get("method"), "epochs": hp.get("epochs"),
        "top1": test["top1"], "test_images": n, "top1_ci95": ci,
        "best_val": best.get("top1"),
        "size_vs_fp32": size["quantized"] / size["fp32"] if size.get("fp32") else None,
        "size_mib": size["quantized"] / 8 / 2 ** 20 if size.get("quantized") else None,
        "bops_vs_fp32": ((s.get("compute") or {}).get("totals") or {}).get("vs_fp32", {}).get("bops"),
        "export_agreement": _export_agreement(s), "wall_time_s": s.get("wall_time_s"),
        "fp32_top1": (s.get("fp32") or {}).get("top1"),
    }


def _check_summary(s, test, path):
    """A UsageError naming the file and key for values a table, a sort or a plot cannot take (a top-1 of 1e308 or
    -5, text where a number belongs, a mapping of the wrong type): they once ended in tracebacks."""
    def fail(key, expected, value):
        raise UsageError(f"{path}: {key} is {value!r}, expected {expected}")

    def number(key, value, lo=None, hi=None, optional=True):
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
                (lo is not None and value < lo) or (hi is not None and value > hi):
            fail(key, "a number" + (f" in [{lo}, {hi}]" if lo is not None and hi is not None else
                                    f" >= {lo}" if lo is not None else ""), value)

    number("top1", test["top1"], 0, 100, optional=False)
    number("test.images", test.get("images"), 0)
    for key in ("hparams", "best", "model_size_bits", "compute", "fp32", "export"):
        if s.get(key) is not None and not isinstance(s[key], dict):
            fail(key, "a mapping", s[key])
    number("best.top1", (s.get("best") or {}).get("top1"), 0, 100)
    number("fp32.top1", (s.get("fp32") or {}).get("top1"), 0, 100)
    number("wall_time_s", s.get("wall_time_s"), 0)
    for k in ("quantized", "fp32"):
        number(f"model_size_bits.{k}", (s.get("model_size_bits") or {}).get(k), 0)
    totals = (s.get("compute") or {}).get("totals")
    if totals is not None and not (isinstance(totals, dict) and isinstance(totals.get("vs_fp32", {}), dict)):
        fail("compute.totals", "a mapping with vs_fp32", totals)
    number("compute.totals.vs_fp32.bops", ((totals or {}).get("vs_fp32") or {}).get("bops"), 0)
    hp = s.get("hparams") or {}
    for key in ("kind", "arch", "dataset", "recipe", "quantizer", "method"):
        if hp.get(key) is not None and not isinstance(hp[key], str):
            fail(f"hparams.{key}", "text", hp[key])
    for key in ("bits_weights", "bits_activations", "epochs"):
        number(f"hparams.{key}", hp.get(key), 0)


def load_rows(paths, notes=None):
    """(rows, problems): a row per readable run, a message per path or summary that could not be used; analysis
    folders (a sensitivity run) are skipped with a message in ``notes`` when given."""
    partial = []
    runs, problems = find_runs(paths, partial)
    if notes is not None:
        for run in partial:
            kept = [f for f in ("checkpoint.pth.tar", "best.pth.tar") if os.path.isfile(os.path.join(run, f))]
            notes.append(f"{run}: no {SUMMARY}: the run did not finish (crashed, interrupted or still running), "
                         "not in the table" + (f"; it kept {' and '.join(kept)}" if kept else ""))
    rows = []
    for run in runs:
        try:
            rows.append(load_row(run))
        except AnalysisFolder as exc:
            if notes is not None:
                notes.append(str(exc))
        except UsageError as exc:
            problems.append(str(exc))
    return rows, problems


def sort_rows(rows, key):
    column, descending = SORT_KEYS[key]
    present = [r for r in rows if r[column] is not None]
    missing = [r for r in rows if r[column] is None]  # runs without the value go last, in folder order
    return sorted(present, key=lambda r: r[column], reverse=descending) + missing


def _cell(column, value):
    if value is None:
        return ""
    if column == "top1_ci95":
        return f"[{value[0]:.1f}, {value[1]:.1f}]"
    if column in ("top1", "best_val", "export_agreement"):
        return f"{value:.2f}"
    if column in ("size_vs_fp32", "bops_vs_fp32"):
        return f"{value:.3f}x"
    if column == "size_mib":
        return f"{value:.4f}"
    if column == "wall_time_s":
        return f"{value:.1f}"
    return str(value)


def differing_columns(rows):
    """Setting columns whose value is not the same in every run (the metrics always differ in kind)."""
    return [c for c in COLUMNS if c not in METRIC_COLUMNS and len({str(r[c]) for r in rows}) > 1]


def to_markdown(rows):
    """Markdown: columns that differ between runs, the metrics, the best test top-1 in bold;
    what every run shares is one line above the table."""
    differ = differing_columns(rows)
    shown = ["run"] + differ + [c for c in METRIC_COLUMNS if c != "run"]
    shown = [c for c in shown if any(r[c] is not None for r in rows)]
    same = [f"{COLUMNS[c]} = {rows[0][c]}" for c in COLUMNS if c not in METRIC_COLUMNS and c not in differ]
    best = max(r["top1"] for r in rows)
    body = []
    for r in rows:
        cells = [_cell(c, r[c]) for c in shown]
        if r["top1"] == best and len(rows) > 1:
            cells[shown.index("top1")] = f"**{cells[shown.index('top1')]}**"
        body.append(cells)
    headers = [f"*{COLUMNS[c]}*" if c in differ else COLUMNS[c] for c in shown]
    text = tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)
    lines = [f"{len(rows)} run{'s' if len(rows) != 1 else ''}"]
    if same:
        lines.append("Same in every run: " + ", ".join(same))
    if differ:
        lines.append("Differ between runs (*italic* headers): " + ", ".join(COLUMNS[c] for c in differ))
    return "\n".join(lines) + "\n\n" + text + "\n"


def to_csv(rows):
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(list(COLUMNS) + ["top1_ci95_low", "top1_ci95_high", "test_images", "path"])
    for r in rows:
        ci = r["top1_ci95"] or [None, None]
        writer.writerow([("" if r[c] is None else r[c]) if c != "top1_ci95" else "" for c in COLUMNS]
                        + ["" if v is None else v for v in ci] + [r["test_images"] or "", r["path"]])
    return out.getvalue()


def to_json(rows):
    return json.dumps(rows, indent=2) + "\n"


FORMATS = {"md": to_markdown, "csv": to_csv, "json": to_json}


def pareto_front(rows):
    """Runs no other run beats on both size (smaller) and test top-1 (higher), smallest first."""
    pts = sorted((r for r in rows if r["size_mib"] is not None), key=lambda r: (r["size_mib"], -r["top1"]))
    front, best = [], -1.0
    for r in pts:
        if r["top1"] > best:
            front.append(r)
            best = r["top1"]
    return front


PLOT_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")


def plot(rows, path):
    """Test top-1 (with its 95 % interval) against model size; the Pareto front joined."""
    import matplotlib  # only the --plot path needs it; a third-party import, allowed inside a function

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext and ext not in PLOT_FORMATS:  # no extension: PNG
        raise UsageError(f"--plot {path}: expected a picture file ({', '.join(PLOT_FORMATS)}), got '.{ext}'")
    pts = [r for r in rows if r["size_mib"] is not None]
    if not pts:
        raise UsageError(f"--plot {path}: no run reports a model size (summary.json 'model_size_bits')")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for r in pts:
        ci = r["top1_ci95"]
        err = [[r["top1"] - ci[0]], [ci[1] - r["top1"]]] if ci else None
        ax.errorbar(r["size_mib"] * 1024, r["top1"], yerr=err, fmt="o", capsize=3)
        ax.annotate(r["run"].split("___")[0], (r["size_mib"] * 1024, r["top1"]), textcoords="offset points",
                    xytext=(5, 5), fontsize=8)
    front = pareto_front(pts)
    ax.plot([r["size_mib"] * 1024 for r in front], [r["top1"] for r in front], "--o", color="gray",
            markerfacecolor="none", markersize=13, label="Pareto front (ringed)")
    ax.set_xlabel("model size (KiB, weights at their bit widths)")
    ax.set_ylabel("test top-1 (%) with 95 % interval")
    ax.set_title("accuracy vs model size")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    ext = os.path.splitext(path)[1].lstrip(".") or "png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=ext))
    plt.close(fig)


def compare_parser():
    p = argparse.ArgumentParser(prog="compressor compare", description="Compare run folders: one row per run.")
    p.add_argument("runs", metavar="RUN_DIR", nargs="+", help="run folders, or folders searched recursively")
    p.add_argument("--sort", choices=sorted(SORT_KEYS), default=None,
                   help="sort rows by this column (top1, best_val: highest first; size, wall: smallest first)")
    p.add_argument("--format", choices=sorted(FORMATS), default="md")
    p.add_argument("--plot", metavar="FILE.png", default=None, help="also draw test top-1 against model size")
    p.add_argument("-o", "--output", metavar="FILE", default=None, help="write the table here (default: stdout)")
    return p


def _refuse_overwriting_a_run(output, paths):
    """-o must not replace a file of a compared run folder (its summary.json or a checkpoint)."""
    target = os.path.realpath(output)
    runs, _ = find_runs(paths)
    for run in runs:
        if os.path.commonpath([os.path.realpath(run), target]) == os.path.realpath(run):
            raise UsageError(f"-o {output} is inside the compared run folder {run}: it would replace that run's own "
                             "file; write the table elsewhere")


def compare(args):
    notes = []
    rows, problems = load_rows(args.runs, notes)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not rows:
        raise UsageError("no run to compare" + (" (see above)" if problems else ""))
    if args.sort:
        rows = sort_rows(rows, args.sort)
    text = FORMATS[args.format](rows)
    if args.output:
        _refuse_overwriting_a_run(args.output, args.runs)
        atomic_write_text(args.output, text)  # write errors (a full disk) surface: no 0-byte table with exit 0
    else:
        sys.stdout.write(text)
    if args.plot:
        plot(rows, args.plot)
    if problems:  # the good runs are shown, but a broken or empty input is an error for scripts and CI
        raise UsageError(f"{len(problems)} input{'s' if len(problems) != 1 else ''} could not be compared")


def main(argv=None):
    return run_guarded(compare, compare_parser().parse_args(argv))
