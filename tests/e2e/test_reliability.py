"""Bad input ends in a clear error (exit 2, the file/flag/key named, no traceback); nothing is lost or
written outside its place (issue 12). The apps run in-process: a traceback would surface here as an
exception instead of a return code."""

import errno
import json
import multiprocessing
import os
import subprocess
import sys
import time

import pytest
import torch

from compressor.app import post_train
from compressor.app.classifier import main
from compressor.calibration.stats_file import load_stats
from compressor.core import io as core_io
from compressor.core.errors import CheckpointError, RecipeError, StatsError
from compressor.core.io import clean_stale_temp_files, load_checkpoint, save_checkpoint
from compressor.recipe.build import read_recipe
from compressor.recipe.loader import load_recipe
from compressor.training import loop
from compressor.training.run_dir import RunDirectory, finite_or_null, make_run_folder

DIGITS = ["-a", "simplenet_digits", "--dataset", "digits", "-b", "64", "-p", "0", "--etrs", "0.3"]
QAT = """\
quantizers:
  q: {class: QuantAwareTrainRangeLinearQuantizer, bits_activations: 8, bits_weights: 8}
policies:
  - quantizer: {instance_name: q}
    starting_epoch: 0
    ending_epoch: 5
"""


def run_app(capsys, *argv, app=main):
    rc = app(list(argv))
    return rc, capsys.readouterr().err


def parse_error(capsys, *argv, parser=None):
    with pytest.raises(SystemExit) as exc:
        (parser or main)(list(argv))
    return exc.value.code, capsys.readouterr().err


def tree(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files)


# --- recipe loader: bounded ----------------------------------------------------------------------------


def alias_bomb(levels=9):
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    prev = "a"
    for name in "bcdefghijkl"[: levels - 1]:
        text += f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]\n"
        prev = name
    return text


@pytest.mark.parametrize(
    "text, line, message",
    [
        (alias_bomb(), 5, "more than 200000 values once aliases are expanded"),
        ("quantizers:\n" + "  " * 1 + "[" * 3000 + "]" * 3000, 2, "nesting deeper than 64 levels"),
        ("".join("  " * i + f"k{i}:\n" for i in range(100)), 65, "nesting deeper than 64 levels"),
        ("a: &x0 [1]\n" + "".join(f"b{i}: &x{i + 1} [*x{i}]\n" for i in range(100)), 62, "once aliases are expanded"),
        ("a: &a [*a]\n", 1, "an alias refers to the node that contains it"),
        ("policies:\n  - starting_epoch: 2001-13-45\n", 2, "cannot read value '2001-13-45'"),
        ("a: {[1]: 2}\n", 1, "unhashable key"),
        ("a: !!python/object/apply:os.system [ls]\n", 1, "could not determine a constructor"),
    ],
    ids=["alias-bomb", "deep-flow", "deep-block", "alias-chain", "self-alias", "bad-date", "list-key", "python-tag"],
)
def test_recipe_loader_refuses_with_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    start = time.perf_counter()
    with pytest.raises(RecipeError) as exc:
        read_recipe(str(path))
    assert time.perf_counter() - start < 5  # an alias bomb expands to 10**9 nodes; refused before that
    assert f"{path}:{line}:" in str(exc.value) and message in str(exc.value)


def test_recipe_loader_reads_only_bounded_regular_files(tmp_path):
    for path, message in [("/dev/zero", "not a regular file"), (str(tmp_path), "not a regular file")]:
        with pytest.raises(RecipeError, match=message):
            load_recipe(path)
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(64 * 1024 * 1024)  # sparse: 64 MiB of zeros
    with pytest.raises(RecipeError, match="more than the 4194304 a recipe may have"):
        load_recipe(str(big))
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"quantizers:\n  q: {class: caf\xe9}\n")
    with pytest.raises(RecipeError, match=rf"{latin}:2: .*byte 28 is not UTF-8"):
        load_recipe(str(latin))


def test_alias_bomb_on_the_command_line_writes_nothing(tmp_path, capsys):
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(alias_bomb())
    rc, err = run_app(capsys, *DIGITS, "--compress", str(recipe), "-o", str(tmp_path / "out"))
    assert rc == 2 and f"{recipe}:5:" in err and "alias bomb" in err
    assert not (tmp_path / "out").exists()


# --- numbers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lr", "nan"], "--lr expects a number >= 0 (a finite number), got 'nan'"),
        (["--lr", "inf"], "--lr expects a number >= 0 (a finite number), got 'inf'"),
        (["--momentum", "nan"], "--momentum expects a number >= 0 (a finite number)"),
        (["--wd=-inf"], "--wd expects a number >= 0 (a finite number)"),
        (["--seed", "-1"], "--seed expects an integer in [0, 2**32 - 1], got -1"),
        (["--seed", str(2**70)], "--seed expects an integer in [0, 2**32 - 1]"),
        (["--etrs", "nan"], "--etrs expects a number in [0, 1] (a finite number)"),
        (["--epochs", str(10**30), "--evaluate"], "--epochs expects a positive integer up to 2147483647"),
        (["--epochs", "1.5"], "--epochs expects a positive integer up to 2147483647, got '1.5'"),
        (["--qe-calibration", "inf"], "--qe-calibration expects a count (a whole number) or a fraction in (0, 1]"),
        (["--qe-clip-n-stds", "nan"], "--qe-clip-n-stds expects a number > 0 (a finite number)"),
        (["-j", "100000"], "-j/--workers expects an integer in [0, 256], got 100000"),  # was a process storm
        (["--lapq-eval-size", "nan"], "--lapq-eval-size expects a fraction in (0, 1] (a finite number)"),
        (["--lapq-method", "bogus"], "invalid choice: 'bogus' (choose from 'Powell'"),
    ],
)
def test_bad_flag_numbers(tmp_path, capsys, argv, message):
    code, err = parse_error(capsys, *DIGITS, *argv, "-o", str(tmp_path))
    assert code == 2 and message in err and "Traceback" not in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "value, message",
    [("inf", "(a finite number), got 'inf'"), ("1.5", "got '1.5'"), ("0", "got 0"), ("nan", "got 'nan'")],
)
def test_calibration_size_is_a_count_or_a_fraction(capsys, value, message):
    code, err = parse_error(
        capsys, "--resume-from", "x", "--calibration-size", value, parser=post_train.post_train_parser().parse_args
    )
    assert code == 2 and "--calibration-size expects a count (a whole number) or a fraction in (0, 1]" in err
    assert message in err
    args = post_train.post_train_parser().parse_args(["--resume-from", "x", "--calibration-size", "300"])
    assert args.calibration_size == 300 and isinstance(args.calibration_size, int)


LR = """\
lr_schedulers:
  lr: {class: %s}
policies:
  - lr_scheduler: {instance_name: lr}
    starting_epoch: 0
    ending_epoch: 3
"""


@pytest.mark.parametrize(
    "spec, message",
    [
        ("StepLR, step_size: 1, gamma: .nan", "r.yaml:2: lr_schedulers.lr.gamma: expected finite numbers, got nan"),
        ("StepLR, step_size: 1, gamma: -10", "r.yaml:2: lr_schedulers.lr.gamma: expected a number > 0, got -10"),
        ("ExponentialLR, gamma: .inf", "r.yaml:2: lr_schedulers.lr.gamma: expected finite numbers, got inf"),
        ("MultiStepLR, milestones: abc", "lr_schedulers.lr.milestones: expected a list of epoch numbers"),
        ("MultiStepLR, milestones: [1, 2.5]", "lr_schedulers.lr.milestones: expected a list of epoch numbers"),
        ("MultiStepMultiGammaLR, milestones: [1], gammas: [.nan]", "lr_schedulers.lr.gammas: expected finite numbers"),
    ],
)
def test_recipe_numbers_in_domain(spec, message):
    with pytest.raises(RecipeError) as exc:
        read_recipe(LR % spec, file="r.yaml")
    assert message in str(exc.value)
    with pytest.raises(
        RecipeError, match=r"r.yaml:6: policies\[0\].ending_epoch: expected an integer in \[0, 1000000\]"
    ):
        read_recipe((LR % "StepLR, step_size: 1").replace("ending_epoch: 3", f"ending_epoch: {10**30}"), file="r.yaml")


def test_clip_n_std_without_n_stds_is_a_validation_error():
    recipe = """\
quantizers:
  q:
    class: PostTrainLinearQuantizer
    clip_acts: %s
    overrides:
      fc: {clip_acts: N_STD}
policies:
  - quantizer: {instance_name: q}
    starting_epoch: 0
    ending_epoch: 1
"""
    with pytest.raises(RecipeError) as exc:
        read_recipe(recipe % "n_std", file="q.yaml")
    assert "q.yaml:4: quantizers.q.clip_acts: N_STD needs clip_n_stds" in str(exc.value)
    assert "q.yaml:6: quantizers.q.overrides.fc.clip_acts: N_STD needs clip_n_stds" in str(exc.value)
    read_recipe((recipe % "N_STD").replace("    overrides:", "    clip_n_stds: 3\n    overrides:"), file="q.yaml")


# --- divergence ----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("recipe_text", [None, QAT], ids=["fp32", "qat"])
def test_divergence_stops_with_a_clear_error(tmp_path, capsys, recipe_text):
    extra = []
    if recipe_text:
        (tmp_path / "qat.yaml").write_text(recipe_text)
        extra = ["--compress", str(tmp_path / "qat.yaml")]
    rc, err = run_app(capsys, *DIGITS, "--epochs", "3", "--lr", "1e12", "-o", str(tmp_path / "out"), "-n", "d", *extra)
    assert rc == 2 and "training diverged in epoch 0" in err and "Traceback" not in err
    assert "no checkpoint was written yet" in err
    (folder,) = os.listdir(tmp_path / "out")
    assert "summary.json" not in os.listdir(tmp_path / "out" / folder)


def test_non_finite_weights_are_divergence():
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(Exception, match=r"epoch 4: weight holds NaN or infinite values"):
        loop.check_model(model, 4)


def test_summary_json_is_strict_json(tmp_path):
    run = RunDirectory(str(tmp_path), "j")
    try:
        run.write_json("summary.json", {"test": {"loss": float("nan"), "top1": float("inf"), "top5": 1.5}})
    finally:
        run.close()
    text = open(os.path.join(run.path, "summary.json")).read()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON")) == {
        "test": {"loss": None, "top1": None, "top5": 1.5}
    }
    assert finite_or_null([1.0, float("-inf"), (2, "x")]) == [1.0, None, [2, "x"]]


# --- run folders ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../x", "/abs/x", "a/b", "..", ".", "a\x01b", "x" * 200])
def test_run_names_are_plain_names(tmp_path, capsys, name):
    out = tmp_path / "deep" / "out"
    rc, err = run_app(capsys, *DIGITS, "--epochs", "1", "-o", str(out), "-n", name)
    assert rc == 2 and "-n/--name" in err and "Traceback" not in err
    assert tree(tmp_path) == [] and not os.path.exists("/abs/x")


def _make(args):
    out, barrier, queue = args
    barrier.wait()
    queue.put(make_run_folder(out, "same", stamp="2026.01.01-000000"))


def test_concurrent_runs_get_their_own_folders(tmp_path):
    ctx = multiprocessing.get_context("fork")
    n = 8
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_make, args=((str(tmp_path), barrier, queue),)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    paths = [queue.get(timeout=10) for _ in range(n)]
    assert len(set(paths)) == n
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in paths)
    assert "same___2026.01.01-000000" in os.listdir(tmp_path)


# --- data loss and late failures --------------------------------------------------------------------------


def test_no_output_overwrites_an_input(tmp_path, capsys):
    ckpt = tmp_path / "model.pth.tar"
    save_checkpoint(str(ckpt), {"w": torch.ones(3)})
    before = ckpt.read_bytes()
    recipe = tmp_path / "qat.yaml"
    recipe.write_text(QAT)
    for flag, target in (("--resume-from", ckpt), ("--compress", recipe)):
        rc, err = run_app(
            capsys,
            *DIGITS,
            "--epochs",
            "1",
            "--resume-from",
            str(ckpt),
            "--compress",
            str(recipe),
            "--export-onnx",
            str(target),
            "-o",
            str(tmp_path / "out"),
        )
        assert rc == 2 and f"--export-onnx {target} is the {flag} input" in err
    link = tmp_path / "link.pth.tar"
    link.symlink_to(ckpt)
    rc, err = run_app(
        capsys, "--resume-from", str(ckpt), "--export-onnx", str(link), "-o", str(tmp_path / "out"), app=post_train.main
    )
    assert rc == 2 and "is the --resume-from input" in err
    assert ckpt.read_bytes() == before and recipe.read_text() == QAT and not (tmp_path / "out").exists()


def test_unwritable_outputs_fail_before_work(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    cases = [(str(tmp_path / "missing" / "m.onnx"), "does not exist"), (str(tmp_path), "is a folder")]
    if os.geteuid() != 0:  # root writes anywhere
        locked.chmod(0o500)
        cases.append((str(locked / "m.onnx"), "no permission to write"))
    for path, message in cases:
        rc, err = run_app(capsys, *DIGITS, "--epochs", "1", "--export-onnx", path, "-o", str(tmp_path / "out"))
        assert rc == 2 and f"--export-onnx {path}" in err and message in err
    (tmp_path / "file").write_text("x")
    rc, err = run_app(capsys, *DIGITS, "--epochs", "1", "-o", str(tmp_path / "file"))
    assert rc == 2 and "is a file, not a folder" in err
    assert not (tmp_path / "out").exists()


# --- checkpoints -----------------------------------------------------------------------------------------


def test_flipped_bytes_are_refused(tmp_path):
    path = tmp_path / "c.pth.tar"
    save_checkpoint(str(path), {"epoch": 1, "state_dict": {"w": torch.arange(40000, dtype=torch.float32)}})
    data = bytearray(path.read_bytes())
    start = data.index(torch.arange(40000, dtype=torch.float32)[1000:1001].numpy().tobytes())
    for i in range(start, start + 4000):  # 4,000 bytes inside the weight tensor
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} is corrupt: its content does not match"):
        load_checkpoint(str(path))


def test_checkpoint_without_digest_still_loads(tmp_path):
    path = tmp_path / "plain.pth.tar"
    torch.save({"w": torch.ones(2)}, path)  # another tool's file
    assert torch.equal(load_checkpoint(str(path))["w"], torch.ones(2))


GOOD = {"epoch": 1, "state_dict": {"w": torch.ones(2)}, "optimizer_state_dict": None, "best_scores": [[50.0, 90.0, 1]]}


@pytest.mark.parametrize(
    "content, message",
    [
        ({**GOOD, "epoch": "3"}, "'epoch' is '3', expected an integer >= 0"),
        ({**GOOD, "state_dict": [torch.ones(2)]}, "state_dict is a list, expected a mapping"),
        (torch.ones(3), "holds a Tensor, expected a mapping"),
        (7, "holds a int, expected a mapping"),
        (
            {**GOOD, "best_scores": [["a", 1, 2]]},
            "'best_scores' is [['a', 1, 2]], expected a list of [top1, top5, epoch]",
        ),
        ({**GOOD, "best_scores": 3}, "'best_scores' is 3"),
        (
            {**GOOD, "rng": {"python": 1, "numpy": [], "torch": 0}},
            "'rng' is {'python': 1, 'numpy': [], 'torch': 0}, expected",
        ),
        ({**GOOD, "state_dict": {"w": torch.tensor([1.0, float("nan")])}}, "state_dict['w'] holds NaN values"),
        ({"w": torch.tensor([float("inf")])}, "the state dict['w'] holds infinite values"),
    ],
)
def test_malformed_checkpoints_are_refused_at_load(tmp_path, content, message):
    path = tmp_path / "c.pth.tar"
    save_checkpoint(str(path), content)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(str(path))
    assert str(exc.value).startswith(f"checkpoint {path}") and message in str(exc.value)


def test_bad_checkpoints_fail_before_training(tmp_path, capsys):
    bad = tmp_path / "bad.pth.tar"
    save_checkpoint(str(bad), {**GOOD, "epoch": "3"})
    nan = tmp_path / "nan.pth.tar"
    save_checkpoint(str(nan), {"conv1.weight": torch.full((2,), float("nan"))})
    for argv, app in [
        (["--resume-from", str(bad), *DIGITS, "--epochs", "2"], main),
        (["--resume-from", str(nan), *DIGITS, "--epochs", "2"], main),
        (["--resume-from", str(nan), "-a", "simplenet_digits", "--dataset", "digits"], post_train.main),
    ]:
        rc, err = run_app(capsys, *argv, "-o", str(tmp_path / "out"), app=app)
        assert rc == 2 and "Traceback" not in err and ("'epoch' is '3'" in err or "holds NaN values" in err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_checkpoint_mode_follows_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        save_checkpoint(str(tmp_path / "c.pth.tar"), {"w": torch.ones(1)})
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "c.pth.tar").st_mode & 0o777 == mode


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    old = time.time() - 3600
    files = {
        name: tmp_path / name
        for name in (
            f".tmp-{dead.pid}-abc-checkpoint.pth.tar",  # dead writer, old: removed
            f".tmp-{os.getpid()}-abc-checkpoint.pth.tar",  # our own writer is alive: kept
            f".tmp-{dead.pid}-new-checkpoint.pth.tar",  # fresh: kept (could be a writer on another machine)
            ".tmp-notapid-checkpoint.pth.tar",  # not our pattern: kept
            "checkpoint.pth.tar",
        )
    }  # not a temp file: kept
    for name, path in files.items():
        path.write_text("x")
        if "new" not in name:
            os.utime(path, (old, old))
    link = tmp_path / f".tmp-{dead.pid}-lnk-x"
    link.symlink_to(files["checkpoint.pth.tar"])
    removed = clean_stale_temp_files(str(tmp_path), now=time.time())
    assert removed == [str(files[f".tmp-{dead.pid}-abc-checkpoint.pth.tar"])]
    assert sorted(os.listdir(tmp_path)) == sorted(
        set(files) - {f".tmp-{dead.pid}-abc-checkpoint.pth.tar"} | {link.name}
    )


# --- statistics files -----------------------------------------------------------------------------------

RECORD = "{min: -1.0, max: 2.0, avg_min: -0.5, avg_max: 1.5, mean: 0.1, std: 0.7, b: 0.5}"


@pytest.mark.parametrize(
    "change, message",
    [
        (("max: 2.0", "max: .nan"), ":4: conv1.output.max: expected a finite number, got nan"),
        (("min: -1.0", "min: -.inf"), ":4: conv1.output.min: expected a finite number, got -inf"),
        (("min: -1.0", "min: 5.0"), ":4: conv1.output.min: min (5.0) is greater than max (2.0)"),
        (("mean: 0.1", "mean: abc"), ":4: conv1.output.mean: expected a finite number, got 'abc'"),
        (("std: 0.7", "std: -1"), ":4: conv1.output.std: expected a number >= 0, got -1"),
        (("output:", "outptu:"), ":3: conv1: expected {inputs: {0: record}, output: record}"),
        (("output: {", "output: ["), ":4: <top level>: invalid YAML"),
    ],
)
def test_bad_statistics_files(tmp_path, change, message):
    path = tmp_path / "s.yaml"
    conv1 = f"  output: {RECORD}\n".replace(*change)
    path.write_text(f"fc:\n  output: {RECORD}\nconv1:\n{conv1}")
    with pytest.raises(StatsError) as exc:
        load_stats(str(path))
    assert f"{path}{message}" in str(exc.value)


def test_non_utf8_statistics_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_bytes(b"conv1:\n  output: {min: \xff}\n")
    with pytest.raises(StatsError, match=rf"{path}:2: <top level>: not a YAML text file \(byte 23 is not UTF-8\)"):
        load_stats(str(path))
    with pytest.raises(StatsError, match="model_activation_stats: fc.output.max: expected a finite number"):
        load_stats({"fc": {"output": {"min": 0.0, "max": float("nan")}}})


# --- faults --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_disk_full_while_saving_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    calls = []
    real = core_io._write_bytes

    def full_on_third_write(fd, data):  # checkpoints (zip files) of epoch 0: checkpoint, best; epoch 1: full
        if bytes(data[:2]) == b"PK":
            calls.append(len(data))
        if len(calls) == 3:
            os.write(fd, data[:100])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(core_io, "_write_bytes", full_on_third_write)
    rc, err = run_app(capsys, *DIGITS, "--epochs", "3", "-o", str(tmp_path), "-n", "full")
    (folder,) = os.listdir(tmp_path)
    ckpt = os.path.join(tmp_path, folder, "checkpoint.pth.tar")
    assert rc == 2 and "Traceback" not in err
    assert (
        f"error: no space left on device while writing {ckpt}; last good checkpoint: {ckpt}, "
        f"resume with --resume-from {ckpt}" in err
    )
    assert load_checkpoint(ckpt)["epoch"] == 0
    assert not [f for f in os.listdir(os.path.join(tmp_path, folder)) if f.startswith(".tmp-")]


@pytest.mark.slow
def test_ctrl_c_is_one_line_with_the_resume_hint(tmp_path, capsys, monkeypatch):
    real = loop.train_one_epoch
    from compressor.app import classifier

    def interrupted_in_epoch_1(*args, **kwargs):
        if args[5] == 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(classifier, "train_one_epoch", interrupted_in_epoch_1)
    rc, err = run_app(capsys, *DIGITS, "--epochs", "3", "-o", str(tmp_path), "-n", "c")
    (folder,) = os.listdir(tmp_path)
    ckpt = os.path.join(tmp_path, folder, "checkpoint.pth.tar")
    assert rc == 130
    assert err == f"error: interrupted (Ctrl-C); last good checkpoint: {ckpt}, resume with --resume-from {ckpt}\n"


# --- outputs never replace inputs ----------------------------------------------------------------------------


def test_mp_recipe_onto_an_input_is_refused_before_anything_runs(tmp_path, capsys):
    from compressor.app import post_train

    recipe = tmp_path / "ptq.yaml"
    recipe.write_text("quantizers:\n  q:\n    class: PostTrainLinearQuantizer\n")
    before = recipe.read_text()
    rc = post_train.main(["-a", "simplenet_digits", "--dataset", "digits", "--resume-from", str(tmp_path / "x.pth"),
                          "--compress", str(recipe), "--sensitivity", "--target-avg-bits", "4",
                          "--mp-recipe", str(recipe), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "--mp-recipe" in err and "is the --compress input" in err
    assert recipe.read_text() == before and not (tmp_path / "out").exists()


def test_compare_output_inside_a_compared_run_is_refused(tmp_path, capsys):
    from compressor.app.compare import main as compare

    run = tmp_path / "r___2026.01.01-000000"
    run.mkdir()
    summary = {"arch": "a", "dataset": "d", "test": {"top1": 90.0, "top5": 99.0, "loss": 0.1, "images": 10}}
    (run / "summary.json").write_text(json.dumps(summary))
    assert compare([str(tmp_path), "-o", str(run / "summary.json")]) == 2
    assert "inside the compared run folder" in capsys.readouterr().err
    assert json.loads((run / "summary.json").read_text()) == summary


def test_a_recipe_named_like_a_run_file_is_copied_under_another_name(tmp_path):
    from compressor.training.run_dir import RunDirectory

    recipe = tmp_path / "args.yaml"
    recipe.write_text("policies: []\n")
    run = RunDirectory(str(tmp_path / "logs"), "t")
    copy = run.copy_in(str(recipe))
    assert os.path.basename(copy) == "input_args.yaml" and open(copy).read() == "policies: []\n"
    log_named = tmp_path / "t.log"
    log_named.write_text("policies: []\n")
    assert os.path.basename(run.copy_in(str(log_named))) == "input_t.log"
    run.close()


def test_sensitivity_from_refuses_fifos_and_malformed_tables_naming_them(tmp_path):
    from compressor.app.sensitivity import load_sensitivity
    from compressor.core.errors import UsageError

    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    start = time.perf_counter()
    with pytest.raises(UsageError, match="not a regular file"):  # once: blocked forever on the open
        load_sensitivity(str(fifo))
    assert time.perf_counter() - start < 5
    for text, message in [("layers: {}\n", "no 'layers' mapping with layers"),
                          ("layers:\n  conv1: {weights: {8: {top1: 90}}}\n", "layers.conv1: expected a mapping with"),
                          ("layers: [\n", "invalid YAML")]:
        path = tmp_path / "t.yaml"
        path.write_text(text)
        with pytest.raises(UsageError, match=message):
            load_sensitivity(str(path))
    good = tmp_path / "good.yaml"
    good.write_text("layers:\n  conv1: {params: 432, weights: {8: {top1: 90.0, sqnr_db: 30.0}}}\n")
    assert load_sensitivity(str(good))["layers"]["conv1"]["weights"][8]["top1"] == 90.0


@pytest.mark.slow
def test_sensitivity_from_another_architecture_is_refused(tmp_path, capsys):
    from compressor.app import post_train
    from compressor.app.classifier import main as classifier

    assert classifier(["-a", "simplenet_digits", "--dataset", "digits", "--epochs", "1", "--etrs", "0.1", "-p", "0",
                       "-o", str(tmp_path), "-n", "fp32"]) == 0
    (fp32,) = [os.path.join(tmp_path, d) for d in os.listdir(tmp_path) if d.startswith("fp32___")]
    table = tmp_path / "resnet_sensitivity.yaml"
    table.write_text("layers:\n  layer1.0.conv1: {params: 2304, weights: {4: {top1: 90.0, sqnr_db: 20.0}}}\n")
    rc = post_train.main(["-a", "simplenet_digits", "--dataset", "digits", "--resume-from",
                          os.path.join(fp32, "best.pth.tar"), "--sensitivity-from", str(table),
                          "--target-avg-bits", "4", "-o", str(tmp_path)])
    assert rc == 2 and "layers layer1.0.conv1 are not layers of simplenet_digits" in capsys.readouterr().err
