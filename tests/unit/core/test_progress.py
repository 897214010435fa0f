"""Progress bars: drawn on a terminal, silent when output goes to a log, a pipe or CI."""

import io
import sys

from compressor.core.progress import progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bar_only_when_stdout_and_stderr_are_terminals(monkeypatch):
    monkeypatch.setattr(sys, "stdout", Terminal())
    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = progress(range(3), "calibrate")
    assert not bar.disable and list(bar) == [0, 1, 2]
    assert "calibrate" in sys.stderr.getvalue()
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # stdout to a log file: no bar
    bar = progress(range(3), "calibrate")
    assert bar.disable and list(bar) == [0, 1, 2]


def test_silent_in_a_pipe(monkeypatch):
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    monkeypatch.setattr(sys, "stderr", err := io.StringIO())
    assert list(progress(iter("ab"), "verify export", total=2)) == ["a", "b"]
    assert err.getvalue() == ""
