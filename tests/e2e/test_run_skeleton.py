"""The run skeleton both apps share: one parent parser, the run context, the versioned train state."""

import glob
import json
import os

import pytest
import torch
import yaml

from compressor.app.args import classifier_parser
from compressor.app.classifier import main as classifier
from compressor.app.post_train import main as post_train
from compressor.app.post_train import post_train_parser
from compressor.core.errors import CheckpointError
from compressor.core.io import load_checkpoint, save_checkpoint
from compressor.models import create_model
from compressor.recipe.build import build_scheduler, read_recipe
from compressor.training.state import FORMAT_VERSION, TrainState, load_train_state

DIGITS = ["-a", "simplenet_digits", "--dataset", "digits"]


def _only(out, name):
    (path,) = glob.glob(os.path.join(str(out), f"{name}___*"))
    return path


def test_both_apps_share_the_common_flags_with_their_own_defaults():
    c, p = classifier_parser(), post_train_parser()
    common = {
        "data",
        "arch",
        "dataset",
        "workers",
        "batch_size",
        "validation_split",
        "deterministic",
        "seed",
        "cpu",
        "gpus",
        "name",
        "out_dir",
        "resume_from",
        "exp_load_weights_from",
        "compress",
        "export_onnx",
    }
    assert common <= set(vars(c.parse_args([]))) and common <= set(vars(p.parse_args([])))
    # each parser is built fresh, so one app's default does not leak into the other's
    assert c.parse_args([]).batch_size == 256 and p.parse_args([]).batch_size == 128
    assert classifier_parser().parse_args([]).batch_size == 256


@pytest.mark.slow
def test_checkpoint_is_versioned_and_args_yaml_holds_the_resolved_arguments(fp32_digits_run):
    ckpt = load_checkpoint(os.path.join(fp32_digits_run, "checkpoint.pth.tar"))
    assert ckpt["format_version"] == FORMAT_VERSION
    saved = yaml.safe_load(open(os.path.join(fp32_digits_run, "args.yaml")))
    assert saved["dataset"] == "digits" and saved["arch"] == "simplenet_digits" and saved["epochs"] == 4
    assert saved["seed"] == 0 and saved["deterministic"] is True  # --deterministic resolved to seed 0
    assert saved["batch_size"] == 64 and saved["lr"] == 0.05
    assert not [
        f for f in os.listdir(fp32_digits_run) if f.startswith(".tmp-")
    ]  # written atomically, nothing left over


@pytest.mark.slow
def test_old_layout_checkpoint_still_loads_and_evaluates_the_same(fp32_digits_run, tmp_path):
    new = load_checkpoint(os.path.join(fp32_digits_run, "checkpoint.pth.tar"))
    old = {k: v for k, v in new.items() if k != "format_version"}  # the layout written before TrainState
    path = tmp_path / "old.pth.tar"
    save_checkpoint(str(path), old)
    state = load_train_state(str(path))
    assert state.epoch == 3 and state.arch == "simplenet_digits" and state.data_seed == new["data_seed"]
    assert TrainState.from_dict(old).to_dict().keys() == new.keys()
    assert classifier([*DIGITS, "--evaluate", "--resume-from", str(path), "-o", str(tmp_path), "-n", "old"]) == 0
    test = json.load(open(os.path.join(_only(tmp_path, "old"), "summary.json")))["test"]
    assert test == pytest.approx(json.load(open(os.path.join(fp32_digits_run, "summary.json")))["test"])


@pytest.mark.slow
def test_unknown_format_version_is_refused_naming_it(fp32_digits_run, tmp_path, cli):
    ckpt = load_checkpoint(os.path.join(fp32_digits_run, "checkpoint.pth.tar"))
    path = str(tmp_path / "future.pth.tar")
    save_checkpoint(path, {**ckpt, "format_version": 99})
    with pytest.raises(
        CheckpointError,
        match=f"checkpoint format version 99 is not one this version of compressor reads \\(1 to {FORMAT_VERSION}\\)",
    ):
        load_train_state(path)
    for script, flag in [
        ("compress_classifier.py", "--resume-from"),
        ("compress_classifier.py", "--exp-load-weights-from"),
        ("post_train_quant.py", "--resume-from"),
    ]:
        proc = cli(script, *DIGITS, flag, path, "-o", str(tmp_path / "runs"))
        assert proc.returncode == 2, proc.stderr
        assert f"{flag} {path}: checkpoint format version 99" in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "runs")  # refused before any run folder is made


@pytest.mark.slow
def test_ptq_checkpoint_scheduler_state_is_the_recipe_builders(fp32_digits_run, tmp_path):
    assert (
        post_train(
            [
                *DIGITS,
                "--resume-from",
                os.path.join(fp32_digits_run, "checkpoint.pth.tar"),
                "--calibration-size",
                "64",
                "-o",
                str(tmp_path),
                "-n",
                "ptq",
            ]
        )
        == 0
    )
    path = _only(tmp_path, "ptq")
    ckpt = load_checkpoint(os.path.join(path, "quantized_checkpoint.pth.tar"))
    assert ckpt["format_version"] == FORMAT_VERSION and ckpt["epoch"] == 0 and ckpt["optimizer_state_dict"] is None
    # what the recipe builder makes of the checkpoint's own recipe, past the calibration epoch
    scheduler = build_scheduler(read_recipe(ckpt["recipe"]), create_model("simplenet_digits", "digits"), None)
    scheduler.on_epoch_begin(1)
    assert ckpt["compression_sched"] == scheduler.state_dict()
    assert ckpt["compression_sched"]["policies"] == [{"phase": "quantize-frozen"}]
    assert ckpt["compression_sched"]["quantizer"] == ckpt["quantizer"]
    saved = yaml.safe_load(open(os.path.join(path, "args.yaml")))
    assert saved["calibration_size"] == 64 and saved["dataset"] == "digits" and saved["seed"] is None


def test_ptq_needs_exactly_one_weight_source(tmp_path):
    from compressor.app.post_train import main_from_classifier_args

    assert post_train([*DIGITS, "-o", str(tmp_path)]) == 2
    args = classifier_parser().parse_args([*DIGITS, "--qe", "--resume-from", "a", "--exp-load-weights-from", "b"])
    assert main_from_classifier_args(args) == 2
    assert not os.listdir(tmp_path)


def test_run_context_leaves_args_as_given():
    from compressor.app.context import RunContext

    args = classifier_parser().parse_args([*DIGITS, "--deterministic"])
    before = dict(vars(args))
    ctx = RunContext.from_args(args)
    assert vars(args) == before and args.seed is None
    assert ctx.seed == 0 and ctx.dataset == "digits" and ctx.device == torch.device("cpu")
    torch.use_deterministic_algorithms(False)


def test_distillers_qe_switch_is_accepted_by_both_apps():
    # post_train_quant.py used to exit 2: argparse took --qe for an ambiguous prefix of --qe-mode, --qe-bits-acts...
    for parser in (classifier_parser(), post_train_parser()):
        args = parser.parse_args(["--qe", "--qe-mode", "asym_u", "--qe-per-channel"])
        assert args.qe and args.qe_mode == "asym_u" and args.qe_per_channel


def test_help_shows_every_default():
    import argparse

    for parser in (classifier_parser(), post_train_parser()):
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                assert f"default: {action.default}" in text or "default" in (action.help or ""), action.option_strings
        assert "(default: 0.1)" in text  # --lr / --vs said nothing of their defaults before
