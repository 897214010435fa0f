"""Linear quantization modes (Distiller's names) and parsing of the recipe's ``mode`` key."""

from enum import Enum

from compressor.core.spec import Spec


class LinearQuantMode(Enum):
    SYMMETRIC = 1
    SYMMETRIC_RESTRICTED = 2
    ASYMMETRIC_UNSIGNED = 3
    ASYMMETRIC_SIGNED = 4

    @property
    def symmetric(self):
        return self in (LinearQuantMode.SYMMETRIC, LinearQuantMode.SYMMETRIC_RESTRICTED)


MODE_NAMES = [m.name for m in LinearQuantMode]


def parse_mode(value):
    """Return (activations_mode, weights_mode) from a mode name or an {activations:, weights:} dict.

    Raises ValueError with a message meant for the user.
    """
    if isinstance(value, LinearQuantMode):
        return value, value
    if isinstance(value, str):
        mode = _one(value)
        return mode, mode
    if isinstance(value, dict):
        unknown = set(value) - {"activations", "weights"}
        if unknown:
            raise ValueError(f"mode dict takes only 'activations' and 'weights', got {sorted(unknown)}")
        acts = _one(value.get("activations", "SYMMETRIC"))
        wts = _one(value.get("weights", "SYMMETRIC"))
        return acts, wts
    raise ValueError(f"expected one of {MODE_NAMES} or a dict {{activations: MODE, weights: MODE}}, got {value!r}")


def _one(name):
    if isinstance(name, LinearQuantMode):
        return name
    if not isinstance(name, str) or name.upper() not in LinearQuantMode.__members__:
        raise ValueError(f"expected one of {MODE_NAMES}, got {name!r}")
    return LinearQuantMode[name.upper()]


class Mode(Spec):
    """A recipe's ``mode`` key: one of ``MODE_NAMES`` or {activations: MODE, weights: MODE}."""

    def describe(self):
        return " / ".join(MODE_NAMES) + ", or {activations: MODE, weights: MODE}"

    def check(self, value):
        try:
            parse_mode(value)
        except ValueError as exc:
            return str(exc)
        return None
