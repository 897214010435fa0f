import glob
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from compressor.app.classifier import main as classifier
from compressor.app.post_train import main as post_train
from compressor.calibration.stats_file import load_stats
from compressor.core.io import load_checkpoint

pytestmark = pytest.mark.slow  # every test quantizes the shared trained model (fp32_checkpoint, conftest.py)


def ptq(tmp_path, name, *extra):
    argv = ["-a", "simplenet_digits", "--dataset", "digits", "-o", str(tmp_path), "-n", name, *extra]
    assert post_train(argv) == 0
    (path,) = glob.glob(os.path.join(tmp_path, f"{name}___*"))
    return path, json.load(open(os.path.join(path, "summary.json")))


def test_int8_per_channel_run_writes_every_output(tmp_path, fp32_checkpoint):
    path, summary = ptq(
        tmp_path,
        "int8",
        "--resume-from",
        fp32_checkpoint,
        "--qe-per-channel",
        "--qe-mode",
        "asym_u",
        "--qe-clip-acts",
        "avg",
        "--calibration-size",
        "256",
    )
    assert {
        "acts_quantization_stats.yaml",
        "layer_quant_params.yaml",
        "quantized_checkpoint.pth.tar",
        "summary.json",
        "int8.log",
        "sqnr_bits.png",
        "activation_histograms.png",
        "weight_histograms.png",
    } <= set(os.listdir(path))
    assert summary["calibration_images"] == 256
    assert abs(summary["fp32"]["top1"] - summary["quantized"]["top1"]) <= 1.0
    stats = load_stats(os.path.join(path, "acts_quantization_stats.yaml"))
    assert {"input", "relu1", "relu2", "relu3", "fc2"} <= set(stats)
    assert set(stats["relu1"]) >= {"min", "max", "avg_min", "avg_max", "mean", "std", "b", "shape"}
    params = yaml.safe_load(open(os.path.join(path, "layer_quant_params.yaml")))
    assert params["conv1"]["bits_weights"] == 8 and len(params["conv1"]["weight_scale"]) == 16
    assert params["relu1"]["clip_acts"] == "AVG" and params["relu1"]["zero_point"] == 0
    log = open(os.path.join(path, "int8.log")).read()
    assert "SQNR dB" in log and "Accumulators" in log

    # the quantized checkpoint evaluates with the classifier app, to the same accuracy
    assert (
        classifier(
            [
                "-a",
                "simplenet_digits",
                "--dataset",
                "digits",
                "--evaluate",
                "-o",
                str(tmp_path),
                "-n",
                "eval",
                "--resume-from",
                os.path.join(path, "quantized_checkpoint.pth.tar"),
            ]
        )
        == 0
    )
    (ev,) = glob.glob(os.path.join(tmp_path, "eval___*"))
    assert json.load(open(os.path.join(ev, "summary.json")))["test"]["top1"] == pytest.approx(
        summary["quantized"]["top1"]
    )

    # the written stats drive a second run to the same result
    _, again = ptq(
        tmp_path,
        "from_stats",
        "--resume-from",
        fp32_checkpoint,
        "--qe-per-channel",
        "--qe-mode",
        "asym_u",
        "--qe-clip-acts",
        "avg",
        "--qe-stats-file",
        os.path.join(path, "acts_quantization_stats.yaml"),
    )
    assert again["quantized"]["top1"] == pytest.approx(summary["quantized"]["top1"])
    assert again["calibration_images"] == 0


def test_ptq_recipe_and_low_bits(tmp_path, fp32_checkpoint, root):
    recipe = tmp_path / "w4a8.yaml"
    recipe.write_text("""\
quantizers:
  ptq:
    class: PostTrainLinearQuantizer
    bits_activations: 8
    bits_parameters: 4
    mode: {activations: ASYMMETRIC_UNSIGNED, weights: SYMMETRIC}
    per_channel_wts: true
    clip_acts: MSE
    overrides:
      conv1: {bits_weights: 8}
      fc2: {bits_weights: 8, clip_acts: NONE}
""")
    path, summary = ptq(tmp_path, "w4a8", "--exp-load-weights-from", fp32_checkpoint, "--compress", str(recipe))
    params = yaml.safe_load(open(os.path.join(path, "layer_quant_params.yaml")))
    assert params["conv1"]["bits_weights"] == 8 and params["conv2"]["bits_weights"] == 4
    assert params["relu2"]["clip_acts"] == "MSE" and params["fc2"]["clip_acts"] == "NONE"
    assert summary["quantized"]["top1"] > 50


def _cli(args, cwd):
    return subprocess.run(
        [sys.executable, os.path.join(cwd, "apps", "post_train_quant.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--qe-clip-acts", "n_std"], "--qe-clip-acts n_std needs --qe-clip-n-stds"),
        (["--qe-bits-acts", "1"], "--qe-bits-acts expects 0 (FP32) or 2..16, got 1"),
        (
            ["--qe-stats-file", "/nonexistent.yaml"],
            "/nonexistent.yaml: <top level>: cannot read stats file: No such file or directory",
        ),
        (["--qe-calibration", "0.1", "--qe-dynamic"], "not allowed with argument"),
        (["-b", "0"], "-b/--batch-size expects a positive integer up to 2147483647, got 0"),
        (
            ["--calibration-size", "-3"],
            "--calibration-size expects a count (a whole number) or a fraction in (0, 1], got -3.0",
        ),
    ],
)
def test_bad_flags_are_clear(tmp_path, root, fp32_checkpoint, extra, message):
    proc = _cli(
        [
            "-a",
            "simplenet_digits",
            "--dataset",
            "digits",
            "--resume-from",
            fp32_checkpoint,
            "-o",
            str(tmp_path),
            *extra,
        ],
        root,
    )
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_quantized_checkpoint_is_refused_as_input(tmp_path, root, fp32_checkpoint):
    path, _ = ptq(tmp_path, "first", "--resume-from", fp32_checkpoint)
    proc = _cli(
        [
            "-a",
            "simplenet_digits",
            "--dataset",
            "digits",
            "-o",
            str(tmp_path),
            "--resume-from",
            os.path.join(path, "quantized_checkpoint.pth.tar"),
        ],
        root,
    )
    assert proc.returncode == 2 and "is already quantized" in proc.stderr
    ckpt = load_checkpoint(os.path.join(path, "quantized_checkpoint.pth.tar"))  # weights_only=True
    assert ckpt["quantizer"]["class"] == "PostTrainLinearQuantizer"


def test_classifier_qe_flags_use_the_same_flow(tmp_path, fp32_checkpoint):
    assert (
        classifier(
            [
                "-a",
                "simplenet_digits",
                "--dataset",
                "digits",
                "-o",
                str(tmp_path),
                "-n",
                "qe",
                "--resume-from",
                fp32_checkpoint,
                "--qe",
                "--qe-per-channel",
                "--qe-clip-acts",
                "laplace",
                "--qe-calibration",
                "0.2",
            ]
        )
        == 0
    )
    (path,) = glob.glob(os.path.join(tmp_path, "qe___*"))
    summary = json.load(open(os.path.join(path, "summary.json")))
    assert summary["quantizer"]["clip_acts"] == "LAPLACE" and summary["quantizer"]["per_channel_wts"] is True
    assert summary["calibration_images"] == round(1293 * 0.2)
    assert classifier(["-a", "simplenet_digits", "--dataset", "digits", "--qe"]) == 2  # no model to quantize


def test_export_flags_write_checked_integer_models(tmp_path, root, fp32_checkpoint):
    proc = _cli(
        [
            "-a",
            "simplenet_digits",
            "--dataset",
            "digits",
            "--resume-from",
            fp32_checkpoint,
            "-n",
            "exp",
            "-o",
            str(tmp_path),
            "--qe-per-channel",
            "--qe-mode-wts",
            "sym",
            "--qe-mode-acts",
            "asym_u",
            "--qe-convert-pytorch",
            "--export-onnx",
            "--int8-target",
            "avx2",
        ],
        root,
    )
    assert proc.returncode == 0, proc.stderr
    (path,) = glob.glob(os.path.join(tmp_path, "exp___*"))
    summary = json.load(open(os.path.join(path, "summary.json")))
    export = summary["export"]
    for key in ("pytorch", "onnx"):
        assert export[key]["agreement"] >= 99.5  # the bar, on the 360 test images
        assert export[key]["simulated_top1"] == pytest.approx(summary["quantized"]["top1"])
        assert os.path.isfile(export[key]["path"])
        # integer weights, not FP32 (this small model pays proportionally more for scales and framing:
        # resnet20_cifar measures 0.32x ONNX / 0.37x PyTorch, docs/performance.md)
        assert export[key]["bytes"] < 0.45 * export["fp32_parameter_bytes"]
    assert export["integer_layers"] == 4
    ckpt = torch.load(export["pytorch"]["path"], weights_only=True)
    assert ckpt["arch"] == "simplenet_digits" and ckpt["engine"] == "qnnpack"
    # the target (named here; auto = this CPU) and the format chosen for it: in summary.json, the log, the ONNX file
    assert (export["int8_target"], export["format"], export["engine"]) == ("avx2", "u8u8", "qnnpack")
    assert "INT8 target: avx2 (named by --int8-target); format u8u8" in open(os.path.join(path, "exp.log")).read()
    import onnx

    props = {p.key: p.value for p in onnx.load(export["onnx"]["path"]).metadata_props}
    assert props["int8_target"] == "avx2" and props["int8_format"] == "u8u8"


def test_dynamic_ptq_export_is_a_clear_error(tmp_path, root, fp32_checkpoint):
    proc = _cli(
        [
            "-a",
            "simplenet_digits",
            "--dataset",
            "digits",
            "--resume-from",
            fp32_checkpoint,
            "-o",
            str(tmp_path),
            "--qe-dynamic",
            "--export-onnx",
        ],
        root,
    )
    assert proc.returncode == 2 and "dynamic" in proc.stderr and "Traceback" not in proc.stderr


def test_channels_last_calibrates_and_evaluates_like_the_default_format(tmp_path, fp32_checkpoint):
    """--channels-last in the post-training app: the same ranges and the same quantized top-1 on the test split."""
    common = ["--resume-from", fp32_checkpoint, "--qe-per-channel", "--calibration-size", "256"]
    plain_dir, plain = ptq(tmp_path, "plain", *common)
    last_dir, last = ptq(tmp_path, "last", *common, "--channels-last")
    assert last["quantized"]["top1"] == plain["quantized"]["top1"] and last["fp32"]["top1"] == plain["fp32"]["top1"]
    assert last["fp32"]["loss"] == pytest.approx(plain["fp32"]["loss"], rel=1e-5)  # conv algorithms: last bits
    ranges = [load_stats(os.path.join(d, "acts_quantization_stats.yaml")) for d in (plain_dir, last_dir)]
    for name, record in ranges[0].items():
        assert ranges[1][name]["min"] == pytest.approx(record["min"], rel=1e-5, abs=1e-6), name
        assert ranges[1][name]["max"] == pytest.approx(record["max"], rel=1e-5, abs=1e-6), name
