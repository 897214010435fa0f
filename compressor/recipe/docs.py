"""The recipe-key tables of docs/recipes.md, generated from the components' typed configs so they cannot drift.

``python tools/recipe_docs.py`` rewrites every table between a ``<!-- keys: CLASS -->`` marker and the
next ``<!-- end keys -->``; ``--check`` only reports whether the file is up to date (a test runs it).
"""

import re

from compressor.core.spec import config_rows
from compressor.recipe.components import SECTIONS

MARKER = re.compile(r"(<!-- keys: (\w+) -->\n)(.*?)(<!-- end keys -->)", re.S)


def _component(name):
    for registry in SECTIONS.values():
        cls = registry.get(name)
        if cls is not None and hasattr(cls, "CONFIG"):
            return cls
    raise KeyError(f"docs marker names {name!r}, which is no registered quantizer, calibrator or distiller")


def _cell(value):
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return text.replace("|", "\\|")


def keys_table(name):
    """A markdown table of ``name``'s recipe keys: key, default, accepted values, meaning."""
    config = _component(name).CONFIG
    per_layer = "overrides" in config.settings()
    lines = ["| key | default | accepted | meaning |", "|---|---|---|---|"]
    for key, default, accepted, description in config_rows(config):
        if not per_layer:
            accepted = accepted.replace(" (per layer)", "")
        lines.append(f"| `{key}` | {_cell(default)} | {_cell(accepted)} | {_cell(description)} |")
    return "\n".join(lines) + "\n"


def render(text):
    """``text`` with every marked table regenerated."""
    return MARKER.sub(lambda m: m.group(1) + keys_table(m.group(2)) + m.group(4), text)
