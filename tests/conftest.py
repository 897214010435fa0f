"""Fixtures shared by the test modules (no test module imports another) and the ``slow`` marker.

``pytest -m "not slow"`` runs the fast set; CI (``.ci/run``) runs everything.
"""

import glob
import os
import subprocess
import sys

import pytest
import torch

from compressor.app.classifier import main as classifier_main
from compressor.core.io import load_checkpoint

# compressor is imported as installed (pip install -e .), or from PYTHONPATH in a worktree: no sys.path edits.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 0)) or max(1, min(2, os.cpu_count() or 1)))


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: runs an app end to end (trains, calibrates or starts a process); deselect with -m 'not slow'"
    )


@pytest.fixture(scope="session")
def root():
    return ROOT


def only_run_dir(out, name):
    """The one run folder ``name___<stamp>`` under ``out``."""
    (path,) = glob.glob(os.path.join(str(out), f"{name}___*"))
    return path


def _classifier_app(out, name, *extra, arch="simplenet_digits"):
    argv = [
        "-a",
        arch,
        "--dataset",
        "digits",
        "-b",
        "64",
        "--lr",
        "0.05",
        "-p",
        "0",
        "-o",
        str(out),
        "-n",
        name,
        *extra,
    ]
    assert classifier_main(argv) == 0
    return only_run_dir(out, name)


@pytest.fixture(scope="session")
def app():
    """``app(out, name, *flags, arch=...)``: the classifier app in-process on digits (-b 64, --lr 0.05);
    returns its run folder."""
    return _classifier_app


def assert_same_state(a, b):
    """Floating-point tensors within 1e-6; integer buffers (zero points, step counters, masks) and flags equal."""
    assert a.keys() == b.keys()
    for key, value in a.items():
        if torch.is_tensor(value) and value.is_floating_point():
            assert (value - b[key]).abs().max().item() <= 1e-6, key
        else:
            assert torch.equal(value, b[key]) if torch.is_tensor(value) else value == b[key], key


@pytest.fixture(scope="session")
def same_state():
    """``same_state(a, b)``: two model state dicts are equal (floats within 1e-6)."""
    return assert_same_state


def _whole_and_resumed(out, common, arch):
    whole = _classifier_app(out, "whole", "--epochs", "4", *common, arch=arch)
    half = _classifier_app(out, "half", "--epochs", "2", *common, arch=arch)
    rest = _classifier_app(
        out, "rest", "--epochs", "4", "--resume-from", os.path.join(half, "checkpoint.pth.tar"), *common, arch=arch
    )
    a = load_checkpoint(os.path.join(whole, "checkpoint.pth.tar"))
    b = load_checkpoint(os.path.join(rest, "checkpoint.pth.tar"))
    assert a["epoch"] == b["epoch"] == 3
    assert_same_state(a["state_dict"], b["state_dict"])
    return whole, rest, a, b


@pytest.fixture(scope="session")
def whole_and_resumed():
    """``whole_and_resumed(out, flags, arch)``: 4 epochs in one go, and 2 then --resume-from to 4;
    (whole run folder, resumed run folder, their final checkpoints), model states already compared."""
    return _whole_and_resumed


@pytest.fixture(scope="session")
def cli():
    """``cli(script, *args, cwd=ROOT)``: an app script of apps/ in a fresh process (exit code, stdout, stderr)."""

    def run(script, *args, cwd=ROOT):
        return subprocess.run(
            [sys.executable, os.path.join(ROOT, "apps", script), *args],
            capture_output=True,
            text=True,
            cwd=cwd,
            timeout=300,
        )

    return run


@pytest.fixture(scope="session")
def fp32_digits_run(tmp_path_factory):
    """One FP32 simplenet_digits run (4 epochs, --deterministic), shared by every test that needs a trained model:
    its run folder."""
    out = tmp_path_factory.mktemp("fp32")
    return _classifier_app(out, "fp32", "--epochs", "4", "--deterministic")


@pytest.fixture(scope="session")
def fp32_checkpoint(fp32_digits_run):
    return os.path.join(fp32_digits_run, "checkpoint.pth.tar")
