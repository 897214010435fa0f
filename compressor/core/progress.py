"""Progress bars for long steps (training and evaluation epochs, calibration, export verification).

Shown only when both stdout and stderr are terminals: a run whose output goes to a log file, a pipe
or CI stays free of carriage-return noise (tqdm's own ``disable=None`` looks at stderr only, so a
run logged with ``> run.log`` would still draw into the terminal's stderr, or into the log with
``2>&1``). ``leave=False``: a finished bar disappears and the log lines stay as they were.
"""

import sys

from tqdm import tqdm


def interactive():
    """True when the user watches a terminal (stdout and stderr both TTYs)."""
    streams = (sys.stdout, sys.stderr)
    return all(s is not None and hasattr(s, "isatty") and s.isatty() for s in streams)


def progress(iterable, desc, total=None):
    """``iterable`` wrapped in a tqdm bar on a terminal, passed through untouched otherwise."""
    return tqdm(iterable, desc=desc, total=total, leave=False, disable=not interactive(), dynamic_ncols=True)
