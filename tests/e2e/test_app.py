import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compressor.app.classifier import main
from compressor.core.io import load_checkpoint

# 8-bit QAT from epoch 1 to 3 with StepLR: the recipe the end-to-end tests train and resume with
QAT_RECIPE = (Path(__file__).parents[1] / "data" / "qat_8bit_digits.yaml").read_text()
FP32_RECIPE = (
    QAT_RECIPE.split("lr_schedulers:")[0].split("quantizers:")[0]
    + "lr_schedulers:"
    + QAT_RECIPE.split("lr_schedulers:")[1].split("  - quantizer")[0]
    + "  - lr_scheduler"
    + QAT_RECIPE.split("  - lr_scheduler")[1]
)


@pytest.mark.slow
def test_digits_run_writes_every_output(tmp_path, app):
    recipe = tmp_path / "qat.yaml"
    recipe.write_text(QAT_RECIPE)
    path = app(tmp_path, "full", "--epochs", "2", "--compress", str(recipe), "--confusion", "--param-hist")
    files = set(os.listdir(path))
    assert {"full.log", "qat.yaml", "checkpoint.pth.tar", "best.pth.tar", "summary.json"} <= files
    summary = json.load(open(os.path.join(path, "summary.json")))
    assert summary["arch"] == "simplenet_digits" and summary["dataset"] == "digits"
    assert summary["epochs_run"] == 2
    assert summary["test"]["top1"] > 50.0  # learns within 2 epochs
    assert set(summary["test"]) == {"top1", "top5", "loss", "images"} and summary["test"]["images"] == 360
    log = open(os.path.join(path, "full.log")).read()
    assert "==> Top1: " in log and "Quantized layers" in log and "Confusion matrix" in log
    ckpt = load_checkpoint(os.path.join(path, "checkpoint.pth.tar"))  # weights_only=True
    assert ckpt["epoch"] == 1 and ckpt["arch"] == "simplenet_digits" and ckpt["recipe"]["quantizers"]
    assert ckpt["quantizer"]["config"]["bits_weights"] == 8

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(path)
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in [
        "Performance/Training/Overall Loss",
        "Performance/Training/Objective Loss",
        "Performance/Training/Top1",
        "Performance/Training/Top5",
        "Performance/Training/LR",
        "Performance/Training/Images per second",
        "Performance/Validation/Loss",
        "Performance/Validation/Top1",
        "Performance/Validation/Top5",
        "Performance/Test/Loss",
        "Performance/Test/Top1",
        "Performance/Test/Top5",
    ]:
        assert tag in tags, tag
    assert events.Tags()["histograms"]
    val = [e.value for e in events.Scalars("Performance/Validation/Top1")]
    assert summary["best"]["top1"] == pytest.approx(max(val)) and val[summary["best"]["epoch"]] == max(val)
    assert [round(e.value, 6) for e in events.Scalars("Performance/Training/LR")] == [0.05, 0.035]  # StepLR 0.7
    speeds = [e.value for e in events.Scalars("Performance/Training/Images per second")]
    assert len(speeds) == 2 and all(s > 0 for s in speeds)  # throughput per epoch, in TensorBoard ...
    assert summary["throughput"]["train_images_per_s"] == pytest.approx(speeds, rel=1e-3, abs=0.06)  # ... and summary
    assert "training images in" in log and "images/s" in log
    hparams = events.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in hparams and b"simplenet_digits" in hparams["_hparams_/session_start_info"]


@pytest.mark.slow
def test_evaluate_resumed_checkpoint_reproduces_test_score(tmp_path, app):
    recipe = tmp_path / "qat.yaml"
    recipe.write_text(QAT_RECIPE)
    trained = app(tmp_path, "train", "--epochs", "2", "--compress", str(recipe), "--deterministic")
    ev = app(
        tmp_path,
        "eval",
        "--evaluate",
        "--resume-from",
        os.path.join(trained, "checkpoint.pth.tar"),
        "--export-onnx",
        "--qe-convert-pytorch",
    )
    a = json.load(open(os.path.join(trained, "summary.json")))["test"]
    summary = json.load(open(os.path.join(ev, "summary.json")))
    assert a == pytest.approx(summary["test"])
    # a QAT checkpoint exports too (batch-norm folded into the integer weights' scales), checked on the test split
    for key in ("onnx", "pytorch"):
        assert summary["export"][key]["agreement"] >= 99.5
        assert summary["export"][key]["simulated_top1"] == pytest.approx(summary["test"]["top1"])
    assert os.path.isfile(os.path.join(ev, "eval.onnx"))


@pytest.mark.slow
@pytest.mark.parametrize("recipe_text, extra, arch", [
    (FP32_RECIPE, (), "resnet20_cifar"), (QAT_RECIPE, (), "resnet20_cifar"),
    # bf16 is emulated on CPUs without AVX512-BF16 (8 min for resnet20_cifar here): the small net
    (QAT_RECIPE, ("--amp", "--channels-last"), "simplenet_digits")], ids=["fp32", "qat", "qat_amp_bf16_channels_last"])
def test_resume_equals_uninterrupted_run(tmp_path, recipe_text, extra, arch, whole_and_resumed):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text)
    common = ["--compress", str(recipe), "--deterministic", "--etrs", "0.3", *extra]
    whole, rest, a, b = whole_and_resumed(tmp_path, common, arch)
    if "quantizers" in recipe_text:
        assert any("activation_quantizers" in k for k in a["state_dict"])
    sa = json.load(open(os.path.join(whole, "summary.json")))
    sb = json.load(open(os.path.join(rest, "summary.json")))
    assert sa["test"]["top1"] == sb["test"]["top1"]
    assert sb["epochs_run"] == 2


@pytest.mark.slow
def test_distiller_recipe_runs_unchanged(tmp_path, root, app):
    recipe = os.path.join(root, "schedules", "distiller", "quant_aware_train_linear_quant.yaml")
    path = app(tmp_path, "distiller", "--epochs", "1", "--compress", recipe)
    assert json.load(open(os.path.join(path, "summary.json")))["bits_weights"] == 8
    assert "Quantization: quantize-and-observe" in open(os.path.join(path, "distiller.log")).read()
    state = load_checkpoint(os.path.join(path, "checkpoint.pth.tar"))["state_dict"]
    act = state["activation_quantizers.relu1.observer.num_updates"]
    assert act.item() == 21 and state["activation_quantizers.relu1._extra_state"]["enabled"]  # 21 steps observed


@pytest.mark.slow
def test_recipe_whose_quantizers_no_policy_applies_warns_that_it_trains_fp32(tmp_path, root, app):
    recipe = os.path.join(root, "schedules", "post_train_quant", "w4a8_rtn.yaml")  # PTQ: no policies
    path = app(tmp_path, "ptq_recipe", "--epochs", "1", "--etrs", "0.1", "--compress", recipe)
    warning = [line for line in open(os.path.join(path, "ptq_recipe.log")) if "no policy applies one" in line]
    assert len(warning) == 1 and "w4a8_rtn.yaml declares quantizers (post_train_quantizer)" in warning[0]
    assert "trains in FP32" in warning[0]
    state = load_checkpoint(os.path.join(path, "checkpoint.pth.tar"))["state_dict"]
    assert not any("quantizer" in k for k in state)  # indeed FP32: the warning tells the truth
    qat = app(tmp_path, "qat_recipe", "--epochs", "1", "--etrs", "0.1", "--compress",
              os.path.join(root, "schedules", "distiller", "quant_aware_train_linear_quant.yaml"))
    assert "no policy applies one" not in open(os.path.join(qat, "qat_recipe.log")).read()


@pytest.mark.slow
def test_resume_with_other_recipe_is_a_clear_error(tmp_path, root, app):
    recipe = tmp_path / "qat.yaml"
    recipe.write_text(QAT_RECIPE)
    trained = app(tmp_path, "train8", "--epochs", "2", "--compress", str(recipe))
    other = tmp_path / "qat4.yaml"
    other.write_text(QAT_RECIPE.replace("bits_weights: 8", "bits_weights: 4"))
    proc = _cli(
        "--dataset",
        "digits",
        "-a",
        "simplenet_digits",
        "--epochs",
        "3",
        "--compress",
        str(other),
        "--resume-from",
        os.path.join(trained, "checkpoint.pth.tar"),
        "-o",
        str(tmp_path),
        cwd=root,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "bits_weights: 8 in the checkpoint, 4 in the recipe" in proc.stderr


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, os.path.join(cwd, "apps", "compress_classifier.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


@pytest.mark.slow
def test_bad_recipe_is_a_clear_error_without_traceback(tmp_path, root):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(QAT_RECIPE.replace("bits_weights: 8", "bits_weights: 64").replace("gamma: 0.7", "gama: 0.7"))
    proc = _cli(
        "--dataset", "digits", "-a", "simplenet_digits", "--compress", str(recipe), "-o", str(tmp_path), cwd=root
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{recipe}:5: quantizers.q.bits_weights: expected an integer bit width" in proc.stderr
    assert f"{recipe}:12: lr_schedulers.lr.gama: unknown argument of StepLR" in proc.stderr
    assert os.listdir(tmp_path) == ["bad.yaml"]  # validated before anything is written


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "cifar10", "/nonexistent"], "cifar10 not found: looked for /nonexistent/cifar-10-batches-py"),
        (["--dataset", "mnist", "-a", "simplenet_mnist"], "--dataset mnist needs DATASET_DIR"),
        (["-a", "nosuchnet_cifar", "--dataset", "digits"], "unknown architecture 'nosuchnet_cifar'"),
        (
            ["-a", "resnet18", "--pretrained", "--dataset", "digits"],
            "--pretrained: weights for resnet18 are not on this machine",
        ),
        (
            ["--dataset", "digits", "--resume-from", "/nonexistent.pth.tar"],
            "checkpoint not found: /nonexistent.pth.tar",
        ),
        (["--dataset", "digits", "--vs", "2"], "--vs expects a number in [0, 1]"),
        (["--dataset", "digits", "--lr", "-1"], "--lr expects a number >= 0"),
        (["--dataset", "digits", "-j", "-1"], "-j/--workers expects an integer in [0, 256]"),
        (
            ["--dataset", "cifar10", "-a", "simplenet_mnist", "/tmp"],
            "simplenet_mnist expects 1-channel images, cifar10 has 3",
        ),
        (
            ["--dataset", "digits", "--compress", "/nonexistent.yaml"],
            "/nonexistent.yaml: <top level>: cannot read recipe",
        ),
    ],
)
def test_bad_input_errors(tmp_path, root, args, message):
    proc = _cli(*args, "-o", str(tmp_path), "--epochs", "1", cwd=root)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_fine_tune_fp32_checkpoint_with_qat(tmp_path, app, fp32_digits_run):
    fp32 = fp32_digits_run  # 4 epochs, --deterministic
    recipe = tmp_path / "qat.yaml"
    recipe.write_text(QAT_RECIPE.replace("starting_epoch: 1", "starting_epoch: 0"))
    ckpt = os.path.join(fp32, "best.pth.tar")
    tuned = app(
        tmp_path, "tuned", "--epochs", "1", "--compress", str(recipe), "--exp-load-weights-from", ckpt, "--lr", "0.0"
    )
    # lr 0: the quantized model keeps the FP32 weights, so 8-bit accuracy stays close to FP32
    a = json.load(open(os.path.join(fp32, "summary.json")))["test"]["top1"]
    b = json.load(open(os.path.join(tuned, "summary.json")))["test"]["top1"]
    assert abs(a - b) < 3.0, (a, b)
    state = load_checkpoint(os.path.join(tuned, "checkpoint.pth.tar"))["state_dict"]
    fp32_state = load_checkpoint(ckpt)["state_dict"]
    assert torch.equal(state["conv1.parametrizations.weight.original"], fp32_state["conv1.weight"])


def test_summary_compute(tmp_path, capsys):
    assert main(["-a", "resnet20_cifar", "--dataset", "digits", "--summary", "compute", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "layer3.2.conv2" in out and "Total" in out


@pytest.mark.slow
def test_fp32_export_onnx_matches_the_model(tmp_path, app):
    path = app(tmp_path, "fp32", "--epochs", "1", "--etrs", "0.3", "--export-onnx", str(tmp_path / "m.onnx"))
    summary = json.load(open(os.path.join(path, "summary.json")))
    onnx = summary["export"]["onnx"]
    assert onnx["path"] == str(tmp_path / "m.onnx") and os.path.isfile(onnx["path"])
    assert onnx["agreement"] == 100.0 and onnx["max_logit_diff"] < 1e-3
    assert onnx["simulated_top1"] == pytest.approx(summary["test"]["top1"])


@pytest.mark.slow
def test_export_of_a_low_bit_training_quantizer_is_a_clear_error(tmp_path, root):
    recipe = tmp_path / "pact.yaml"
    recipe.write_text(
        "quantizers:\n  q: {class: PACTQuantizer, bits_activations: 4, bits_weights: 4}\n"
        "policies:\n  - quantizer: {instance_name: q}\n    starting_epoch: 0\n    ending_epoch: 1\n"
    )
    proc = _cli(
        "--dataset",
        "digits",
        "-a",
        "simplenet_digits",
        "--epochs",
        "1",
        "--etrs",
        "0.2",
        "--compress",
        str(recipe),
        "--export-onnx",
        "-o",
        str(tmp_path),
        cwd=root,
    )
    assert proc.returncode == 2 and "linear quantizers" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_post_training_only_keys_in_a_training_run_are_named_in_a_warning(tmp_path, root, app):
    import yaml

    with open(os.path.join(root, "schedules", "post_train_quant", "w4a8_adaround.yaml")) as f:
        recipe = yaml.safe_load(f)
    recipe["policies"] = [{"quantizer": {"instance_name": "post_train_quantizer"}, "starting_epoch": 0,
                           "ending_epoch": 1, "frequency": 1}]
    path_recipe = tmp_path / "ptq_policy.yaml"
    path_recipe.write_text(yaml.safe_dump(recipe))
    path = app(tmp_path, "ptq_keys", "--epochs", "1", "--etrs", "0.1", "--compress", str(path_recipe))
    log_text = open(os.path.join(path, "ptq_keys.log")).read()
    assert "the recipe's adaround and bias_correction act only in post_train_quant.py" in log_text


@pytest.mark.slow
def test_evaluate_without_weights_says_the_weights_are_random(tmp_path, app):
    path = app(tmp_path, "random_eval", "--evaluate")
    assert "--evaluate without --resume-from, --exp-load-weights-from or --pretrained" in \
        open(os.path.join(path, "random_eval.log")).read()


@pytest.mark.slow
def test_resuming_past_the_last_epoch_says_nothing_is_left_to_train(tmp_path, app):
    first = app(tmp_path, "first", "--epochs", "1", "--etrs", "0.1")
    again = app(tmp_path, "again", "--epochs", "1", "--etrs", "0.1", "--resume-from",
                os.path.join(first, "checkpoint.pth.tar"))
    assert "nothing is left to train" in open(os.path.join(again, "again.log")).read()


@pytest.mark.slow
def test_an_empty_recipe_says_it_declares_nothing(tmp_path, app):
    recipe = tmp_path / "empty.yaml"
    recipe.write_text("# nothing yet\n")
    path = app(tmp_path, "empty", "--epochs", "1", "--etrs", "0.1", "--compress", str(recipe))
    assert "declares nothing (no quantizers, policies or schedulers)" in open(os.path.join(path, "empty.log")).read()


@pytest.mark.slow
def test_channels_last_trains_qat_like_the_default_format(tmp_path, app):
    """--channels-last: the checkpoint's conv weights are channels-last, and 2 epochs of QAT end at the default
    format's test top-1 within two images (same batches; convolution algorithms differ in the last bits, which
    flip a few roundings: the weights drift apart by ~3 % after 2 epochs; tests/unit/quantization/test_fake_quant.py
    checks one forward pass exactly)."""
    recipe = tmp_path / "qat.yaml"
    recipe.write_text(QAT_RECIPE)
    common = ["--epochs", "2", "--compress", str(recipe), "--deterministic"]
    plain = app(tmp_path, "plain", *common)
    last = app(tmp_path, "last", *common, "--channels-last")
    a = load_checkpoint(os.path.join(plain, "checkpoint.pth.tar"))["state_dict"]
    b = load_checkpoint(os.path.join(last, "checkpoint.pth.tar"))["state_dict"]
    assert a.keys() == b.keys()
    convs = [k for k, v in b.items() if torch.is_tensor(v) and v.dim() == 4]
    assert convs and all(b[k].is_contiguous(memory_format=torch.channels_last) for k in convs)
    sa = json.load(open(os.path.join(plain, "summary.json")))
    sb = json.load(open(os.path.join(last, "summary.json")))
    assert abs(sa["test"]["top1"] - sb["test"]["top1"]) <= 0.6  # at most two of the 360 test images


@pytest.mark.slow
def test_compile_trains_qat_in_whole_graphs_with_the_plain_checkpoint(tmp_path, app):
    """--compile (inductor): the log counts 0 graph breaks, the checkpoint holds the plain model's names (so it
    resumes and loads without the flag), and 2 epochs of QAT end within two test images of the eager run (the
    generated kernels sum in another order: last-bit differences)."""
    recipe = tmp_path / "qat.yaml"
    recipe.write_text(QAT_RECIPE)
    common = ["--epochs", "2", "--compress", str(recipe), "--deterministic"]
    plain = app(tmp_path, "plain", *common)
    compiled = app(tmp_path, "compiled", *common, "--compile")
    lines = [line for line in open(os.path.join(compiled, "compiled.log")) if "torch.compile:" in line]
    assert len(lines) == 2 and all(" 0 graph break(s)" in line for line in lines)
    graphs = [int(line.split("torch.compile: ")[1].split(" graph(s)")[0]) for line in lines]
    assert 0 < graphs[0] <= graphs[1]  # it did compile (counted from this run's start, not the process's)
    a = load_checkpoint(os.path.join(plain, "checkpoint.pth.tar"))["state_dict"]
    b = load_checkpoint(os.path.join(compiled, "checkpoint.pth.tar"))["state_dict"]
    assert a.keys() == b.keys() and int(b["activation_quantizers.relu1.observer.num_updates"]) > 0
    sa = json.load(open(os.path.join(plain, "summary.json")))
    sb = json.load(open(os.path.join(compiled, "summary.json")))
    assert abs(sa["test"]["top1"] - sb["test"]["top1"]) <= 0.6
