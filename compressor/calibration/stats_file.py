"""Distiller's activation-stats YAML: ``{name: {inputs: {0: record}, output: record}}``.

We write one ``output`` record per activation site (every tensor a quantizer needs);
Distiller's own files, which also hold ``inputs`` and records of modules that are not sites
here (e.g. a batch-norm fused into its conv), load too.
"""

import yaml

from compressor.core.io import atomic_write_text
from compressor.core.errors import StatsError

RECORD_KEYS = ("min", "max", "avg_min", "avg_max", "mean", "std", "b")



def save_stats(path, records):
    data = {name: {"output": {k: (float(v) if k != "shape" else v) for k, v in rec.items()}}
            for name, rec in records.items()}
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    atomic_write_text(path, text)


def load_stats(source):
    """Records keyed by name from a path or an already-parsed dict."""
    if isinstance(source, dict):
        data, where = source, "model_activation_stats"
    else:
        where = source
        try:
            with open(source, encoding="utf-8") as f:
                data = yaml.safe_load(f)
        except OSError as exc:
            raise StatsError(f"cannot read stats file {source}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise StatsError(f"{source}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise StatsError(f"{where}: expected a mapping of module name -> {{inputs:, output:}}")
    records = {}
    for name, entry in data.items():
        if not isinstance(entry, dict) or not ({"inputs", "output"} & set(entry)):
            raise StatsError(f"{where}: {name}: expected {{inputs: {{0: record}}, output: record}}")
        for key in ("output",):
            if key in entry:
                records[name] = _check(entry[key], f"{where}: {name}.{key}")
        inputs = entry.get("inputs")
        if isinstance(inputs, dict) and 0 in inputs:
            records.setdefault(f"{name}#input", _check(inputs[0], f"{where}: {name}.inputs.0"))
    return records


def _check(record, where):
    if not isinstance(record, dict):
        raise StatsError(f"{where}: expected a record with {', '.join(RECORD_KEYS)}")
    missing = [k for k in ("min", "max") if k not in record]
    if missing:
        raise StatsError(f"{where}: missing {', '.join(missing)}")
    return record


def match_stats(records, site_names, module_names, where="stats"):
    """Map each site to its record; a site without stats, or stats naming no module, is an error."""
    unknown = [n for n in records if n.split("#")[0] not in site_names and n.split("#")[0] not in module_names]
    missing = [s for s in site_names if s not in records and not (s == "input" and _first_input(records))]
    problems = []
    if missing:
        problems.append(f"no statistics for {', '.join(missing)}")
    if unknown:
        problems.append(f"statistics for {', '.join(unknown)}, which the model does not have (renamed or another model?)")
    if problems:
        raise StatsError(f"{where} do not fit the model: " + "; ".join(problems) +
                         ". Re-collect them for this model (e.g. --qe-calibration).")
    result = {s: records[s] for s in site_names if s in records}
    if "input" in site_names and "input" not in result:
        result["input"] = _first_input(records)
    return result


def _first_input(records):
    for name, rec in records.items():
        if name.endswith("#input"):
            return rec
    return None
