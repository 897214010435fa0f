"""compressor compare: rows from summary.json files, sorting, formats, and clear errors for bad inputs."""

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from compressor.app.compare import load_rows, main, pareto_front, sort_rows, wilson_interval


def training_summary(top1, best, size=None, images=360, wall=10.0, kind="fp32", bits=(32, 32), recipe="none"):
    s = {"arch": "simplenet_digits", "dataset": "digits", "recipe": None, "epochs_run": 3, "epochs": 3,
         "best": {"epoch": 2, "top1": best}, "test": {"top1": top1, "top5": 100.0, "loss": 0.1, "images": images},
         "bits_weights": bits[0], "bits_activations": bits[1], "wall_time_s": wall,
         "hparams": {"kind": kind, "arch": "simplenet_digits", "dataset": "digits", "recipe": recipe,
                     "quantizer": "none", "method": "fp32", "bits_weights": bits[0], "bits_activations": bits[1],
                     "epochs": 3}}
    if size:
        s["model_size_bits"] = {"quantized": size, "fp32": 1_228_096}
        s["compute"] = {"layers": [], "totals": {"vs_fp32": {"bops": bits[0] * bits[1] / 1024}}}
    return s


def ptq_summary(top1, fp32_top1):
    """A post-training summary as written before the run record existed (no hparams, no images)."""
    return {"arch": "simplenet_digits", "dataset": "digits", "checkpoint": "x/best.pth.tar", "calibration_images": 256,
            "quantizer": {"bits_activations": 8, "bits_parameters": 8, "mode": "ASYMMETRIC_UNSIGNED"},
            "fp32": {"top1": fp32_top1, "top5": 100.0, "loss": 0.05},
            "quantized": {"top1": top1, "top5": 100.0, "loss": 0.06}, "top1_drop": fp32_top1 - top1,
            "export": {"engine": "x86", "onnx": {"agreement": 99.7}, "pytorch": {"agreement": 100.0}}}


def write(folder, data):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "summary.json"), "w") as f:
        f.write(data if isinstance(data, str) else json.dumps(data))
    return folder


@pytest.fixture
def logdir(tmp_path):
    write(tmp_path / "fp32___2026.01.01-000000", training_summary(97.5, 96.0, size=1_228_096, wall=12.0))
    write(tmp_path / "nested" / "qat___2026.01.01-000100",
          training_summary(98.3, 97.0, size=309_000, wall=30.0, kind="qat", bits=(8, 8), recipe="qat.yaml"))
    write(tmp_path / "ptq___2026.01.01-000200", ptq_summary(96.9, 97.5))
    return tmp_path


def test_wilson_interval_known_values():
    # 90 of 100: Wilson 95 % interval [82.56, 94.48] (Newcombe 1998, table I method 3)
    low, high = wilson_interval(90.0, 100)
    assert low == pytest.approx(82.56, abs=0.01) and high == pytest.approx(94.48, abs=0.01)
    low, high = wilson_interval(100.0, 360)
    assert high == pytest.approx(100.0) and low == pytest.approx(98.94, abs=0.01)
    assert wilson_interval(50.0, None) is None


def test_runs_found_recursively_with_their_values(logdir):
    rows, problems = load_rows([str(logdir)])
    assert problems == []
    by_run = {r["run"].split("___")[0]: r for r in rows}
    assert set(by_run) == {"fp32", "qat", "ptq"}
    assert by_run["qat"]["bits"] == "8/8" and by_run["qat"]["recipe"] == "qat.yaml"
    assert by_run["qat"]["size_vs_fp32"] == pytest.approx(309_000 / 1_228_096)
    assert by_run["fp32"]["top1_ci95"] == pytest.approx(wilson_interval(97.5, 360))
    assert by_run["qat"]["bops_vs_fp32"] == pytest.approx(1 / 16) and by_run["fp32"]["bops_vs_fp32"] == 1.0
    ptq = by_run["ptq"]  # legacy summary: read from its own keys
    assert (ptq["kind"], ptq["bits"], ptq["top1"], ptq["epochs"]) == ("ptq", "8/8", 96.9, 0)
    assert ptq["export_agreement"] == 99.7 and ptq["top1_ci95"] is None and ptq["best_val"] is None


def test_sorting(logdir):
    rows, _ = load_rows([str(logdir)])
    assert [r["top1"] for r in sort_rows(rows, "top1")] == [98.3, 97.5, 96.9]
    assert [r["run"][:4] for r in sort_rows(rows, "best_val")] == ["qat_", "fp32", "ptq_"]  # no value: last
    assert [r["run"][:4] for r in sort_rows(rows, "wall")] == ["fp32", "qat_", "ptq_"]
    assert [r["run"][:4] for r in sort_rows(rows, "size")] == ["qat_", "fp32", "ptq_"]


def test_markdown_highlights_what_differs(logdir, capsys):
    assert main([str(logdir), "--sort", "top1"]) == 0
    out = capsys.readouterr().out
    assert "Same in every run: arch = simplenet_digits, dataset = digits" in out
    assert "*bits W/A*" in out and "*kind*" in out and "*arch*" not in out
    table = [line for line in out.splitlines() if line.startswith("| ")][1:]
    assert [line.split("|")[1].strip()[:4] for line in table] == ["qat_", "fp32", "ptq_"]
    assert "**98.30**" in table[0] and "**" not in table[1] + table[2]
    assert "[95.3, 98.7]" in table[1]  # 97.5 % of 360: centre 97.00, half-width 1.68 (Wilson)


def test_csv_and_json(logdir, capsys):
    assert main([str(logdir), "--format", "csv", "--sort", "size"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["run"][:4] for r in rows] == ["qat_", "fp32", "ptq_"]
    assert float(rows[1]["top1_ci95_low"]) == pytest.approx(wilson_interval(97.5, 360)[0])
    assert rows[2]["best_val"] == "" and rows[2]["export_agreement"] == "99.7"
    assert main([str(logdir), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data) == 3 and {d["kind"] for d in data} == {"fp32", "qat", "ptq"}


def test_folder_without_runs_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "no run folder (none holds a summary.json)" in err and "Traceback" not in err
    assert main([str(tmp_path / "missing")]) == 2
    assert "missing: no such file or folder" in capsys.readouterr().err


def test_broken_summaries_are_named_and_the_rest_still_shown(logdir, capsys):
    write(logdir / "cut___1", '{"arch": "simplenet_digits", "test": {"top1": ')
    write(logdir / "other___1", json.dumps({"hello": 1}))
    assert main([str(logdir)]) == 2
    captured = capsys.readouterr()
    assert "cut___1/summary.json: broken JSON at line 1" in captured.err
    assert "other___1/summary.json: not a run summary" in captured.err
    assert "2 inputs could not be compared" in captured.err and "Traceback" not in captured.err
    assert captured.out.count("___2026") == 3  # the three good runs are still compared


def test_plot_and_pareto_front(logdir, tmp_path):
    rows, _ = load_rows([str(logdir)])
    assert [r["run"][:4] for r in pareto_front(rows)] == ["qat_"]  # smaller and more accurate than fp32
    png = tmp_path / "pareto.png"
    assert main([str(logdir), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_module_and_console_entry_points(logdir, root):
    env = {**os.environ, "PYTHONPATH": root}
    for cmd in ([sys.executable, "-m", "compressor.compare"], [sys.executable, "-m", "compressor.cli", "compare"]):
        out = subprocess.run(cmd + [str(logdir), "--format", "json"], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr
        assert len(json.loads(out.stdout)) == 3
    out = subprocess.run([sys.executable, "-m", "compressor.cli", "nope"], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "unknown command 'nope'" in out.stderr


def test_a_sensitivity_folder_is_skipped_with_a_note_not_an_error(logdir, capsys):
    # the README's --sensitivity command writes a run folder with its own summary: compare used to exit 2 on it
    write(logdir / "sens___2026.01.01-000300", {"kind": "sensitivity", "arch": "simplenet_digits",
                                                 "dataset": "digits", "sensitivity": "s/sensitivity.yaml"})
    write(logdir / "old_sens___2026.01.01-000400", {"arch": "simplenet_digits", "sensitivity": "x.yaml"})
    assert main([str(logdir)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("3 runs") and "sens___" not in out
    assert err.count("a sensitivity analysis, not a run (skipped)") == 2 and "error" not in err


@pytest.mark.parametrize("change, message", [
    (lambda s: s["test"].update(top1=1e308), "top1 is 1e+308, expected a number in [0, 100]"),
    (lambda s: s["test"].update(top1=-5), "top1 is -5, expected a number in [0, 100]"),
    (lambda s: s["test"].update(images="many"), "test.images is 'many', expected a number >= 0"),
    (lambda s: s.update(hparams=[1, 2]), "hparams is [1, 2], expected a mapping"),
    (lambda s: s.update(best="yes"), "best is 'yes', expected a mapping"),
    (lambda s: s["compute"].update(totals=3), "compute.totals is 3, expected a mapping with vs_fp32"),
    (lambda s: s["hparams"].update(epochs="3"), "hparams.epochs is '3', expected a number >= 0"),
    (lambda s: s.update(wall_time_s="slow"), "wall_time_s is 'slow', expected a number >= 0"),
])
def test_malformed_summaries_are_errors_naming_file_and_key(tmp_path, capsys, change, message):
    good = write(tmp_path / "good___2026.01.01-000000", training_summary(97.5, 96.0, size=1_228_096))
    s = training_summary(97.5, 96.0, size=1_228_096)
    change(s)
    bad = write(tmp_path / "bad___2026.01.01-000100", s)
    assert main([str(tmp_path), "--sort", "top1"]) == 2  # the good run is shown, the bad one named
    out, err = capsys.readouterr()
    assert os.path.basename(good) in out and f"{bad}/summary.json: {message}" in err


def test_plot_needs_a_picture_file_name(logdir, capsys):
    assert main([str(logdir), "--plot", str(logdir / "pareto.txt")]) == 2
    assert "--plot" in capsys.readouterr().err


def test_a_fifo_as_summary_is_refused_without_blocking(tmp_path, capsys):
    run = tmp_path / "r___2026.01.01-000000"
    run.mkdir()
    os.mkfifo(run / "summary.json")
    assert main([str(tmp_path)]) == 2
    assert "summary.json: not a regular file" in capsys.readouterr().err


def test_an_unfinished_run_beside_complete_ones_is_named_in_a_note(logdir, capsys):
    """A crashed run (args.yaml and a checkpoint, no summary.json) was left out without a word."""
    crashed = logdir / "crashed___2026.01.01-000000"
    crashed.mkdir()
    (crashed / "args.yaml").write_text("arch: resnet20_cifar\n")
    (crashed / "checkpoint.pth.tar").write_bytes(b"x")
    notes = []
    rows, problems = load_rows([str(logdir)], notes)
    assert problems == [] and len(rows) == 3
    assert notes == [f"{crashed}: no summary.json: the run did not finish (crashed, interrupted or still running), "
                     "not in the table; it kept checkpoint.pth.tar"]
    assert main([str(logdir)]) == 0
    assert "note: " + notes[0] in capsys.readouterr().err
