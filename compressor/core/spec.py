"""Declarative argument specs (the typed config base): a class lists its recipe keys, and validation reads the list.

Each spec's ``check`` returns None when the value is fine, else a message saying
what was expected. Keeping specs declarative lets a recipe be validated whole,
all errors at once, before any model is touched.
"""

import math

REQUIRED = object()


class Spec:
    def __init__(self, default=REQUIRED, doc=""):
        self.default = default
        self.doc = doc

    @property
    def required(self):
        return self.default is REQUIRED

    def check(self, value):
        return None


class Bits(Spec):
    """A bit width in [lo, hi], or null (keep floating point); ``fp_values`` also mean floating point."""

    def __init__(self, default, lo=2, hi=32, fp_values=(32,), doc=""):
        super().__init__(default, doc)
        self.lo, self.hi, self.fp_values = lo, hi, tuple(fp_values)

    def check(self, value):
        if value is None or value in self.fp_values:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not self.lo <= value <= self.hi:
            extra = f" or {', '.join(map(str, self.fp_values))}" if self.fp_values else ""
            return f"expected an integer bit width {self.lo}..{self.hi}{extra} or null (floating point), got {value!r}"
        return None


class Bool(Spec):
    def check(self, value):
        if not isinstance(value, bool):
            return f"expected true or false, got {value!r}"
        return None


class Float(Spec):
    def __init__(self, default, lo=None, hi=None, lo_open=False, hi_open=False, doc=""):
        super().__init__(default, doc)
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open

    def check(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"expected a finite number, got {value!r}"
        bad_lo = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        bad_hi = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        if bad_lo or bad_hi:
            lo = "(" if self.lo_open else "["
            hi = ")" if self.hi_open else "]"
            return f"expected a number in {lo}{self.lo}, {self.hi}{hi}, got {value!r}"
        return None


class Overrides(Spec):
    """Checked key by key by the recipe validator against the class's ``LAYER_KEYS``."""

    def __init__(self, doc=""):
        super().__init__(None, doc)

    def check(self, value):
        if value is not None and not isinstance(value, dict):
            return f"expected a mapping of module name (or regex) -> settings, got {type(value).__name__}"
        return None


class Choice(Spec):
    """One of ``choices`` (case-insensitive); null allowed when the default is null."""

    def __init__(self, default, choices, doc=""):
        super().__init__(default, doc)
        self.choices = list(choices)

    def check(self, value):
        if value is None and self.default is None:
            return None
        if not isinstance(value, str) or value.upper() not in self.choices:
            return f"expected one of {self.choices}, got {value!r}"
        return None


class Int(Spec):
    """An integer in [lo, hi]."""

    def __init__(self, default, lo=None, hi=None, doc=""):
        super().__init__(default, doc)
        self.lo, self.hi = lo, hi

    def check(self, value):
        if isinstance(value, bool) or not isinstance(value, int) or \
                (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            return f"expected an integer in [{self.lo}, {self.hi}], got {value!r}"
        return None


class OptionalInt(Spec):
    """An integer in [lo, hi], or null."""

    def __init__(self, default=None, lo=None, hi=None, doc=""):
        super().__init__(default, doc)
        self.lo, self.hi = lo, hi

    def check(self, value):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or \
                (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            return f"expected an integer in [{self.lo}, {self.hi}] or null, got {value!r}"
        return None


class OptionalFloat(Float):
    def check(self, value):
        return None if value is None else super().check(value)


class StatsSource(Spec):
    """A stats YAML path or an inline mapping (Distiller's ``model_activation_stats``)."""

    def check(self, value):
        if value is None or isinstance(value, (str, dict)):
            return None
        return f"expected a stats YAML path or a mapping of module name -> records, got {type(value).__name__}"
