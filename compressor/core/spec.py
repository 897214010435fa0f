"""Typed, validated configuration for everything a recipe can name.

A recipe component (quantizer, calibrator, distiller) declares its settings as a frozen
dataclass derived from ``Config``; each field is made with ``setting(spec, description)``:
the ``Spec`` checks a YAML value and returns a message saying what was expected, the
description documents the key (docs/recipes.md is generated from it), ``layer=True`` marks
keys that per-layer ``overrides`` may set. Validation reads the specs, so a recipe is checked
whole, every mistake reported with its ``file:line``, before any model is touched. After
validation the component holds its config as an immutable object: per-layer settings are the
same class with the overrides applied (``for_layer``), aliases are resolved when the object is
built (``resolve``), never by mutating it.
"""

import dataclasses
import math
from typing import Any, ClassVar

REQUIRED = object()


class Spec:
    """What a recipe value must be; ``check`` returns None when fine, else a message."""

    def __init__(self, default=REQUIRED):
        self.default = default

    @property
    def required(self):
        return self.default is REQUIRED

    def check(self, value):
        return None

    def describe(self):
        """The accepted values, for the generated docs."""
        return ""


class Bits(Spec):
    """A bit width in [lo, hi], or null (keep floating point); ``fp_values`` also mean floating point."""

    def __init__(self, default, lo=2, hi=32, fp_values=(32,)):
        super().__init__(default)
        self.lo, self.hi, self.fp_values = lo, hi, tuple(fp_values)

    def check(self, value):
        if value is None or value in self.fp_values:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not self.lo <= value <= self.hi:
            extra = f" or {', '.join(map(str, self.fp_values))}" if self.fp_values else ""
            return f"expected an integer bit width {self.lo}..{self.hi}{extra} or null (floating point), got {value!r}"
        return None

    def describe(self):
        fp = f"; {', '.join(map(str, self.fp_values))} or null = floating point" if self.fp_values else ""
        return f"{self.lo}..{self.hi}{fp}"


class Bool(Spec):
    def check(self, value):
        if not isinstance(value, bool):
            return f"expected true or false, got {value!r}"
        return None

    def describe(self):
        return "true / false"


class OptionalBool(Bool):
    """true, false or null (decided from the other settings)."""

    def __init__(self, default=None):
        super().__init__(default)

    def check(self, value):
        return None if value is None else super().check(value)

    def describe(self):
        return "true / false / null"


class Float(Spec):
    """A finite number in [lo, hi] (bounds optionally open); null too when ``optional``."""

    def __init__(self, default, lo=None, hi=None, lo_open=False, hi_open=False, optional=False):
        super().__init__(default)
        self.lo, self.hi, self.lo_open, self.hi_open, self.optional = lo, hi, lo_open, hi_open, optional

    def check(self, value):
        if value is None and self.optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"expected a finite number{' or null' if self.optional else ''}, got {value!r}"
        bad_lo = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        bad_hi = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        if bad_lo or bad_hi:
            return f"expected a number in {self.describe()}, got {value!r}"
        return None

    def describe(self):
        lo = "(" if self.lo_open else "["
        hi = ")" if self.hi_open else "]"
        lo_v = "-inf" if self.lo is None else self.lo
        hi_v = "inf" if self.hi is None else self.hi
        return f"{lo}{lo_v}, {hi_v}{hi}" + (" or null" if self.optional else "")


class OptionalFloat(Float):
    def __init__(self, default=None, **kwargs):
        super().__init__(default, optional=True, **kwargs)


class Int(Spec):
    """An integer in [lo, hi]; null too when ``optional``."""

    def __init__(self, default, lo=None, hi=None, optional=False):
        super().__init__(default)
        self.lo, self.hi, self.optional = lo, hi, optional

    def check(self, value):
        if value is None and self.optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or \
                (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            return f"expected an integer in {self.describe()}, got {value!r}"
        return None

    def describe(self):
        return f"[{self.lo}, {self.hi}]" + (" or null" if self.optional else "")


class OptionalInt(Int):
    def __init__(self, default=None, **kwargs):
        super().__init__(default, optional=True, **kwargs)


class Choice(Spec):
    """One of ``choices`` (case-insensitive); null allowed when the default is null."""

    def __init__(self, default, choices):
        super().__init__(default)
        self.choices = list(choices)

    def check(self, value):
        if value is None and self.default is None:
            return None
        if not isinstance(value, str) or value.upper() not in self.choices:
            return f"expected one of {self.choices}, got {value!r}"
        return None

    def describe(self):
        return " / ".join(self.choices) + (" / null" if self.default is None else "")


class Overrides(Spec):
    """Checked key by key by the recipe validator against the config's layer keys."""

    def __init__(self):
        super().__init__(None)

    def check(self, value):
        if value is not None and not isinstance(value, dict):
            return f"expected a mapping of module name (or regex) -> settings, got {type(value).__name__}"
        return None

    def describe(self):
        return "module name or regex -> {per-layer keys}"


class StatsSource(Spec):
    """A stats YAML path or an inline mapping (Distiller's ``model_activation_stats``)."""

    def check(self, value):
        if value is None or isinstance(value, (str, dict)):
            return None
        return f"expected a stats YAML path or a mapping of module name -> records, got {type(value).__name__}"

    def describe(self):
        return "path to a stats YAML, or an inline mapping"


def setting(spec, description, layer=False):
    """A config field validated by ``spec``, documented by ``description``; ``layer``: overrides may set it."""
    meta = {"spec": spec, "description": description, "layer": layer}
    if spec.required:
        return dataclasses.field(metadata=meta)
    default = spec.default
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Base of the typed settings of a recipe component (see the module docstring)."""

    # recipe keys that only say where state came from (e.g. a stats file), not what it is:
    # left out of checkpoints and of the resume comparison
    SOURCE_KEYS: ClassVar[tuple] = ()

    @classmethod
    def settings(cls):
        return {f.name: f for f in dataclasses.fields(cls) if "spec" in f.metadata}

    @classmethod
    def specs(cls):
        return {name: f.metadata["spec"] for name, f in cls.settings().items()}

    @classmethod
    def layer_keys(cls):
        return {name for name, f in cls.settings().items() if f.metadata["layer"]}

    @classmethod
    def from_args(cls, **kwargs):
        """The config of a (validated) recipe component's arguments, aliases resolved."""
        unknown = set(kwargs) - set(cls.settings())
        if unknown:
            raise TypeError(f"{cls.__name__} got unknown arguments {sorted(unknown)}")
        return cls(**kwargs).resolve()

    def resolve(self):
        """Return the config with derived values filled in (aliases); the default has none."""
        return self

    def for_layer(self, overrides):
        """This config with one layer's ``overrides`` (a dict of layer keys) applied (a null stays null)."""
        return dataclasses.replace(self, **overrides) if overrides else self

    def cross_check(self):
        """(key, message) pairs for combinations of values that do not work together. A config class mixed from
        several extends ``super().cross_check()``, so that every mixin's checks run."""
        return []

    def to_dict(self, with_sources=True):
        return {name: getattr(self, name) for name in self.settings()
                if with_sources or name not in self.SOURCE_KEYS}

    # read access by key, for code that iterates over keys (e.g. the per-layer table)
    def __getitem__(self, key):
        if key not in self.settings():
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key, default=None):
        return getattr(self, key) if key in self.settings() else default


def config_rows(config_cls) -> list[tuple[str, Any, str, str]]:
    """(key, default, accepted values, description) of every setting, for docs/recipes.md."""
    rows = []
    for name, f in config_cls.settings().items():
        spec = f.metadata["spec"]
        default = "required" if spec.required else spec.default
        accepted = spec.describe()
        if f.metadata["layer"]:
            accepted += " (per layer)"
        rows.append((name, default, accepted, f.metadata["description"]))
    return rows
