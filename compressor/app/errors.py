"""One place that turns the user's mistakes into clear messages and exit code 2 (never a traceback)."""

import sys

import torch

from compressor.core.errors import CompressorError, RecipeError


def run_guarded(fn, *args):
    """Run an app's body; 0 on success, 2 with a message for a user mistake. Restores global torch state."""
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    try:
        fn(*args)
        return 0
    except RecipeError as exc:
        n = len(exc.issues)
        print(f"error: invalid recipe ({n} problem{'s' if n != 1 else ''}):", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return 2
    except CompressorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except OSError as exc:  # e.g. -o names a file, or a folder without write access; a full disk
        print(f"error: {exc.strerror or exc}: {exc.filename}" if exc.filename else f"error: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
