"""Distiller's activation-stats YAML: ``{name: {inputs: {0: record}, output: record}}``.

We write one ``output`` record per activation site (every tensor a quantizer needs);
Distiller's own files, which also hold ``inputs`` and records of modules that are not sites
here (e.g. a batch-norm fused into its conv), load too.
"""

import yaml

from compressor.core.io import atomic_write_text
from compressor.core.errors import StatsError
from compressor.calibration.stats_names import resolve

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


def match_stats(records, site_names, module_names, where="stats", chains=None, folded=None):
    """Map each site to its record (our names, or Distiller's per-module names: see ``stats_names``);
    a site without stats, or stats naming nothing in the model, is an error."""
    return resolve(records, site_names, module_names, chains=chains, folded=folded, where=where)
