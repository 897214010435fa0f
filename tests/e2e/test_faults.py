"""Faults (issue 12): a training killed with SIGKILL at random moments leaves a checkpoint that loads
(digest verified) and continues with --resume-from; Ctrl-C (SIGINT) ends in one line and exit 130."""

import glob
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from compressor.app.classifier import main
from compressor.core.io import load_checkpoint

DIGITS = ["-a", "simplenet_digits", "--dataset", "digits", "-b", "64", "-p", "0", "--etrs", "0.3", "--seed", "3"]
START_TIMEOUT_S = 300  # a busy CI core may take a while to import torch


def _ctrl_c_as_in_a_terminal():
    # a test run launched in the background ignores SIGINT (the shell sets SIG_IGN for '&' jobs) and a
    # child inherits that disposition. One such run saw the SIGINT test's 200-epoch child end with exit 0;
    # the cause is not proven (a child started with SIGINT ignored still exited 130 in a later check), so
    # the child gets the terminal's default explicitly and the test no longer depends on how it was launched
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(root, out, name, epochs):
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, os.path.join(root, "apps", "compress_classifier.py"), *DIGITS,
                             "--epochs", str(epochs), "-o", str(out), "-n", name],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=_ctrl_c_as_in_a_terminal)


def wait_for_checkpoint(proc, out, name):
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        found = glob.glob(os.path.join(out, f"{name}___*", "checkpoint.pth.tar"))
        if found:
            return found[0]
        if proc.poll() is not None:
            pytest.fail(f"training ended before its first checkpoint: {proc.stderr.read()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no checkpoint within the time limit")


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume(tmp_path, root):
    rng = random.Random(2026)
    for trial in range(3):
        out = tmp_path / f"trial{trial}"
        proc = start(root, out, "k", epochs=200)
        ckpt = wait_for_checkpoint(proc, out, "k")
        time.sleep(rng.uniform(0.0, 2.0))  # somewhere in an epoch, or in the middle of a checkpoint write
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        folder = os.path.dirname(ckpt)
        debris = [f for f in os.listdir(folder) if f.startswith(".tmp-")]
        for name in debris:  # a write cut short: age it past the staleness limit
            os.utime(os.path.join(folder, name), (time.time() - 3600,) * 2)
        saved = load_checkpoint(ckpt)  # the digest is verified: a half-written file would be refused
        assert not [f for f in os.listdir(folder) if f.startswith(".tmp-")]  # debris of the dead writer removed
        epoch = saved["epoch"]
        assert main([*DIGITS, "--epochs", str(epoch + 2), "--resume-from", ckpt, "-o", str(out), "-n", "r"]) == 0
        (resumed,) = glob.glob(os.path.join(out, "r___*", "checkpoint.pth.tar"))
        assert load_checkpoint(resumed)["epoch"] == epoch + 1


@pytest.mark.slow
def test_sigint_is_one_line_and_exit_130(tmp_path, root):
    proc = start(root, tmp_path, "i", epochs=200)
    wait_for_checkpoint(proc, tmp_path, "i")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: interrupted (Ctrl-C); last good checkpoint: ")
    path = lines[0].split("resume with --resume-from ")[1]
    assert load_checkpoint(path)["epoch"] >= 0
