"""Every quantizer of the low-bit family, and knowledge distillation, resume exactly and evaluate from a checkpoint."""

import json
import os

import pytest

pytestmark = pytest.mark.slow  # every test trains and resumes

LOW_BIT = {
    "pact_ttq": """\
quantizers:
  q:
    class: PACTQuantizer
    bits_activations: 4
    bits_weights: 4
    act_clip_init_val: 3.0
    act_clip_decay: 0.001
    overrides:
      conv1: {bits_weights: 2, weights_method: TTQ}
      fc2: {bits_weights: 8}
""",
    "wrpn_xnor_binary_acts": """\
quantizers:
  q:
    class: WRPNQuantizer
    bits_activations: 4
    bits_weights: 4
    width_multiplier: 2
    overrides:
      conv2: {bits_weights: 1, weights_method: XNOR, binary_activations: true}
""",
    "inq": """\
quantizers:
  q:
    class: INQQuantizer
    bits_weights: 5
    accumulated_portions: [0.5, 1.0]
""",
}
LR = """\
lr_schedulers:
  lr:
    class: StepLR
    step_size: 1
    gamma: 0.7
policies:
  - lr_scheduler: {instance_name: lr}
    starting_epoch: 0
    ending_epoch: 4
"""
WINDOW = {"inq": "    epochs: [1, 2]\n"}


def _recipe(tmp_path, key):
    text = (
        LOW_BIT[key]
        + LR
        + "  - quantizer: {instance_name: q}\n"
        + WINDOW.get(key, "    starting_epoch: 1\n    ending_epoch: 4\n")
    )
    path = tmp_path / f"{key}.yaml"
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, app):
    out = tmp_path_factory.mktemp("teacher")
    path = app(out, "teacher", "--epochs", "1", "--etrs", "0.3", "--deterministic", arch="simplenet_digits")
    return os.path.join(path, "checkpoint.pth.tar")


@pytest.mark.parametrize("key", list(LOW_BIT) + ["kd"])
def test_resume_equals_uninterrupted_run_and_evaluates(tmp_path, key, teacher, app, whole_and_resumed):
    if key == "kd":
        recipe = _recipe(tmp_path, "pact_ttq")
        extra = ["--kd-teacher", "simplenet_digits", "--kd-resume", teacher, "--kd-temp", "2", "--kd-start-epoch", "1"]
    else:
        recipe, extra = _recipe(tmp_path, key), []
    common = ["--compress", recipe, "--deterministic", "--etrs", "0.3", *extra]
    whole, rest, a, b = whole_and_resumed(tmp_path, common, "simplenet_digits")
    assert a["optimizer_state_dict"]["param_groups"] == b["optimizer_state_dict"]["param_groups"]
    sa = json.load(open(os.path.join(whole, "summary.json")))
    sb = json.load(open(os.path.join(rest, "summary.json")))
    assert sa["test"]["top1"] == sb["test"]["top1"]

    ev = app(
        tmp_path,
        "eval",
        "--evaluate",
        "--resume-from",
        os.path.join(rest, "checkpoint.pth.tar"),
        arch="simplenet_digits",
    )
    assert json.load(open(os.path.join(ev, "summary.json")))["test"] == pytest.approx(sb["test"])

    log = open(os.path.join(whole, "whole.log")).read()
    assert "Model size:" in log
    if key == "kd":
        assert "Distill Loss" in log and "Knowledge distillation: teacher simplenet_digits" in log
    if key == "pact_ttq":  # the learned clip values moved, and they are in the optimizer
        clips = [v for k, v in a["state_dict"].items() if k.endswith("clip_val")]
        assert clips and any(abs(c.item() - 3.0) > 1e-4 for c in clips)
        assert len(a["optimizer_state_dict"]["param_groups"]) == 3  # model, PACT clips, TTQ scales
    if key == "inq":
        masks = [v for k, v in a["state_dict"].items() if k.endswith(".mask")]
        assert masks and all(m.all() for m in masks)  # 100 % frozen after the second step
