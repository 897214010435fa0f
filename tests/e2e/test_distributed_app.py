"""compress_classifier under torchrun (2 CPU processes, gloo, loopback): one run folder, exact resume."""

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from compressor.core.io import load_checkpoint

pytestmark = pytest.mark.slow

# 8-bit QAT from epoch 1 to 3 with StepLR: the recipe the end-to-end tests train and resume with
QAT_RECIPE = (Path(__file__).parents[1] / "data" / "qat_8bit_digits.yaml").read_text()


def torchrun(root, tmp_path, name, *extra, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           os.path.join(root, "apps", "compress_classifier.py"), "-a", "simplenet_digits", "--dataset", "digits",
           "-b", "64", "--lr", "0.05", "-p", "0", "-o", str(tmp_path), "-n", name, *extra]
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    folders = glob.glob(os.path.join(str(tmp_path), f"{name}___*"))
    assert len(folders) == 1, folders  # rank 0 writes; the other rank writes nothing of its own
    return folders[0], done


def test_ddp_run_writes_one_folder_and_resumes_exactly(tmp_path, root, same_state):
    recipe = tmp_path / "qat.yaml"
    recipe.write_text(QAT_RECIPE)  # quantization starts at epoch 1: the resume crosses its start
    common = ["--compress", str(recipe), "--deterministic", "--etrs", "0.3"]
    whole, out = torchrun(root, tmp_path, "whole", "--epochs", "2", *common)
    assert "DistributedDataParallel: 2 processes (gloo), global batch 64 = 32 per process" in out.stdout
    assert out.stdout.count("--- test ---") == 1  # rank 1 logs warnings only
    # the epoch's size (1,293 training images after the test and validation splits, --etrs 0.3), not a shard
    assert "Dataset digits: 388 training (this process: 194 of each epoch's)" in out.stdout
    half, _ = torchrun(root, tmp_path, "half", "--epochs", "1", *common)
    rest, _ = torchrun(root, tmp_path, "rest", "--epochs", "2", "--resume-from",
                       os.path.join(half, "checkpoint.pth.tar"), *common)
    a = load_checkpoint(os.path.join(whole, "checkpoint.pth.tar"))
    b = load_checkpoint(os.path.join(rest, "checkpoint.pth.tar"))
    assert a["epoch"] == b["epoch"] == 1 and len(a["rng_ranks"]) == 2
    same_state(a["state_dict"], b["state_dict"])
    assert any("activation_quantizers" in k for k in a["state_dict"])
    sa = json.load(open(os.path.join(whole, "summary.json")))
    sb = json.load(open(os.path.join(rest, "summary.json")))
    assert sa["test"] == sb["test"]


def test_a_flag_mistake_under_torchrun_is_printed_once_and_named_in_torchruns_summary(tmp_path, root):
    """-b 63 fails on both ranks: one "error:" line (rank 0), and torchrun's summary shows our message as the
    root cause (from its error file) instead of "To enable traceback see ..."."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(root, "apps", "compress_classifier.py"), "-a", "simplenet_digits", "--dataset", "digits",
           "-b", "63", "-p", "0", "-o", str(tmp_path)]
    done = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    printed = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(printed) <= 1, printed  # none when torchrun stopped rank 0 before it printed
    root_cause = done.stderr.split("Root Cause")[1]
    assert "error: -b/--batch-size 63 is the global batch; with 2 processes it must be a multiple of 2" in root_cause
    assert "To enable traceback see" not in done.stderr


def test_a_rank_killed_mid_training_leaves_one_clear_error_on_rank_0(tmp_path, root):
    """kill -9 of rank 1 while training: rank 0 says another process is gone and how to resume (exit 1), with no
    gloo traceback; the last checkpoint still loads."""
    import signal

    err = _signal_a_rank_after_the_first_checkpoint(tmp_path, root, 1, signal.SIGKILL)
    assert "error: another process of this torchrun job is gone" in err
    assert "--resume-from" in err
    assert "pair.cc" not in err and "GLHF" not in err  # gloo's own traceback text
    ckpt = glob.glob(os.path.join(str(tmp_path), "k___*", "checkpoint.pth.tar"))[0]
    assert load_checkpoint(ckpt)["epoch"] >= 0


def test_rank_0_stopped_by_torchruns_sigterm_says_so_and_how_to_resume(tmp_path, root):
    """torchrun's agent sends SIGTERM to the other workers when one dies; when that reaches rank 0 before gloo
    reports the dead peer (a busy machine), rank 0 still says what happened instead of ending silently."""
    import signal

    err = _signal_a_rank_after_the_first_checkpoint(tmp_path, root, 0, signal.SIGTERM)
    assert "error: another process of this torchrun job is gone, or the job was stopped (torchrun sent SIGTERM)" in err
    assert "--resume-from" in err and "Traceback" not in err.split("torchrun sent SIGTERM")[0]


def _signal_a_rank_after_the_first_checkpoint(tmp_path, root, rank, signum):
    """Start a long 2-process torchrun training, send ``signum`` to ``rank`` once a checkpoint exists; its stderr."""
    import time

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(root, "apps", "compress_classifier.py"), "-a", "simplenet_digits", "--dataset", "digits",
           "-b", "64", "--epochs", "400", "-p", "0", "-o", str(tmp_path), "-n", "k"]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        victim = None
        while victim is None and time.monotonic() < deadline:
            time.sleep(0.5)
            ckpt = glob.glob(os.path.join(str(tmp_path), "k___*", "checkpoint.pth.tar"))
            for pid in os.listdir("/proc") if ckpt else ():
                try:
                    cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
                    env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
                except OSError:
                    continue
                if str(tmp_path).encode() in cmdline and f"RANK={rank}".encode() in env and \
                        f"LOCAL_RANK={rank}".encode() in env:
                    victim = int(pid)
        assert victim, f"rank {rank} not found after the first checkpoint"
        os.kill(victim, signum)
        _, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode != 0
    return err


PRUNE_RECIPE = """version: 1
pruners:
  filters: {class: L1RankedStructureParameterPruner, group_type: Filters, desired_sparsity: 0.5,
            weights: [conv1.weight]}
  fine: {class: AutomatedGradualPruner, initial_sparsity: 0.2, final_sparsity: 0.5, weights: [conv2.weight]}
extensions:
  thinner: {class: FilterRemover}
policies:
  - pruner: {instance_name: filters}
    epochs: [0]
  - extension: {instance_name: thinner}
    epochs: [1]
  - pruner: {instance_name: fine}
    starting_epoch: 1
    ending_epoch: 3
"""


def test_pruning_under_torchrun_thinning_refused_and_a_thinned_checkpoint_resumes(tmp_path, root, app):
    recipe = tmp_path / "prune.yaml"
    recipe.write_text(PRUNE_RECIPE)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(root, "apps", "compress_classifier.py"), "-a", "simplenet_digits", "--dataset", "digits",
           "-b", "64", "-p", "0", "-o", str(tmp_path), "--compress", str(recipe), "--epochs", "3"]
    done = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "thins the model at epoch 1: not under torchrun" in done.stderr.split("Root Cause")[1]
    thinned = app(tmp_path, "one", "--compress", str(recipe), "--epochs", "2", "--etrs", "0.3")  # one process
    rest, _ = torchrun(root, tmp_path, "rest", "--epochs", "3", "--etrs", "0.3", "--resume-from",
                       os.path.join(thinned, "checkpoint.pth.tar"))
    ck = load_checkpoint(os.path.join(rest, "checkpoint.pth.tar"))
    assert ck["state_dict"]["conv1.weight"].shape[0] == 8 and ck["thinning"]["conv1"]["out"]
    w = ck["state_dict"]["conv2.weight"]
    assert (w == 0).float().mean().item() == pytest.approx(0.5, abs=1e-3)  # AGP under DDP, masks held
