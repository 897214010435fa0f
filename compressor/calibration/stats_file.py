"""Distiller's activation-stats YAML: ``{name: {inputs: {0: record}, output: record}}``.

We write one ``output`` record per activation site (every tensor a quantizer needs);
Distiller's own files, which also hold ``inputs`` and records of modules that are not sites
here (e.g. a batch-norm fused into its conv), load too.
"""

import math

import yaml

from compressor.calibration.stats_names import resolve
from compressor.core.errors import RecipeError, StatsError
from compressor.core.io import atomic_write_text
from compressor.core.safe_yaml import load_yaml, read_text

RECORD_KEYS = ("min", "max", "avg_min", "avg_max", "mean", "std", "b")


def save_stats(path, records):
    data = {
        name: {"output": {k: (float(v) if k != "shape" else v) for k, v in rec.items()}}
        for name, rec in records.items()
    }
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    atomic_write_text(path, text)


def load_stats(source):
    """Records keyed by name from a path or an already-parsed dict; every value checked (StatsError naming
    file, line, layer and key)."""
    if isinstance(source, dict):
        data, where, lines = source, "model_activation_stats", {}
    else:
        where = source
        try:
            data, lines = load_yaml(read_text(source, "stats file"), source)
        except RecipeError as exc:
            raise StatsError("invalid statistics file:\n  " + "\n  ".join(map(str, exc.issues))) from None
    if not isinstance(data, dict):
        at = f"{where}:1" if lines or not isinstance(source, dict) else where
        raise StatsError(f"{at}: expected a mapping of module name -> {{inputs:, output:}}, got {type(data).__name__}")
    records, issues = {}, []

    def issue(path, message):
        line = next((lines[path[:n]] for n in range(len(path), 0, -1) if path[:n] in lines), None)
        at = f"{where}:{line}" if line else where
        issues.append(f"{at}: {'.'.join(map(str, path))}: {message}")

    for name, entry in data.items():
        if not isinstance(entry, dict) or not ({"inputs", "output"} & set(entry)):
            issue((name,), "expected {inputs: {0: record}, output: record}")
            continue
        if "output" in entry and _check(entry["output"], (name, "output"), issue):
            records[name] = entry["output"]
        inputs = entry.get("inputs")
        if isinstance(inputs, dict) and 0 in inputs and _check(inputs[0], (name, "inputs", 0), issue):
            records.setdefault(f"{name}#input", inputs[0])
    if issues:
        raise StatsError("invalid statistics file:\n  " + "\n  ".join(issues))
    return records


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(record, path, issue):
    """True when ``record`` is usable; else report each problem through ``issue(path, message)``."""
    if not isinstance(record, dict):
        issue(path, f"expected a record with {', '.join(RECORD_KEYS)}, got {type(record).__name__}")
        return False
    ok = True
    for key in ("min", "max"):
        if key not in record:
            issue(path, f"missing {key}")
            ok = False
    for key in RECORD_KEYS:
        value = record.get(key)
        if key in record and not (_is_number(value) and math.isfinite(value)):
            issue(path + (key,), f"expected a finite number, got {value!r}")
            ok = False
    if not ok:
        return False
    for lo, hi in (("min", "max"), ("avg_min", "avg_max")):
        if lo in record and hi in record and record[lo] > record[hi]:
            issue(path + (lo,), f"{lo} ({record[lo]}) is greater than {hi} ({record[hi]})")
            ok = False
    for key in ("std", "b"):
        if key in record and record[key] < 0:
            issue(path + (key,), f"expected a number >= 0, got {record[key]!r}")
            ok = False
    shape = record.get("shape")
    if (
        shape is not None
        and not isinstance(shape, str)
        and not (
            isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        )
    ):
        issue(path + ("shape",), f"expected a shape such as '(256, 16, 32, 32)', got {shape!r}")
        ok = False
    return ok


def match_stats(records, site_names, module_names, where="stats", chains=None, folded=None, relus=()):
    """Map each site to its record (our names, or Distiller's per-module names: see ``stats_names``);
    a site without stats, or stats naming nothing in the model, is an error."""
    return resolve(records, site_names, module_names, chains=chains, folded=folded, where=where, relus=relus)
