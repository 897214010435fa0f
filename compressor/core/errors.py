"""Every error a user can cause, under one base class, so the apps turn all of them into a message.

``CompressorError`` means "the user's input is wrong, say so and exit 2"; anything else is a bug
and keeps its traceback.
"""


class CompressorError(ValueError):
    """A mistake in the user's input (recipe, flag, file, data): reported as a message, never a traceback."""


class UsageError(CompressorError):
    """A mistake in the command line or its inputs."""


class DataError(CompressorError):
    """A dataset is missing, malformed, or a split is empty."""


class ModelError(CompressorError):
    """An unknown architecture, or one that does not fit the dataset."""


class CheckpointError(CompressorError):
    """A checkpoint that cannot be read, or that does not fit this run."""


class StatsError(CompressorError):
    """A statistics file that does not fit the model, or holds bad values."""


class RangeError(CompressorError):
    """A quantization range that cannot be computed: min above max, a non-positive n_stds, ..."""


class DiskFullError(CompressorError):
    """The disk filled up while writing an output; the previous version of that file is intact."""


class DivergenceError(CompressorError):
    """Training produced non-finite losses, weights or quantizer ranges."""


class Interrupted(CompressorError):
    """The user stopped the run (Ctrl-C / SIGINT); exits 130 like a shell does for SIGINT."""

    exit_code = 130


class TraceError(CompressorError):
    """torch.fx could not trace the model."""


class WidenError(CompressorError):
    """WRPN widening cannot be applied to this model."""


class ConversionError(CompressorError):
    """The simulated model cannot be converted to an integer model."""


class ExportError(CompressorError):
    """Writing or checking an exported model failed."""


class QeError(CompressorError):
    """Distiller's --qe flags that contradict each other or the recipe."""


def format_path(path):
    """``("quantizers", "q", "overrides", 0)`` -> ``quantizers.q.overrides[0]``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


class RecipeIssue:
    """One mistake in a YAML file: where (file, line, key path) and what was expected."""

    def __init__(self, file, line, path, message):
        self.file, self.line, self.path, self.message = file, line, tuple(path), message

    def __str__(self):
        where = f"{self.file}:{self.line}" if self.line else f"{self.file}"
        return f"{where}: {format_path(self.path)}: {self.message}"


class RecipeError(CompressorError):
    """All the mistakes found in one recipe, reported together."""

    def __init__(self, issues):
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))
