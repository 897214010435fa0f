import textwrap
import time

import pytest
import torch

from compressor.core.errors import RecipeError
from compressor.quantization.linear.qat import QuantAwareTrainRangeLinearQuantizer
from compressor.recipe.build import read_recipe
from compressor.recipe.components import QUANTIZERS

GOOD = """\
quantizers:
  q:
    class: QuantAwareTrainRangeLinearQuantizer
    bits_activations: 8
    bits_weights: 8
lr_schedulers:
  lr:
    class: MultiStepLR
    milestones: [2]
    gamma: 0.1
policies:
  - quantizer: {instance_name: q}
    starting_epoch: 0
    ending_epoch: 5
    frequency: 1
  - lr_scheduler: {instance_name: lr}
    epochs: [0, 1, 2]
"""


def errors(text):
    with pytest.raises(RecipeError) as info:
        read_recipe(textwrap.dedent(text), file="r.yaml")
    return [str(i) for i in info.value.issues]


def test_good_recipe_validates():
    recipe = read_recipe(GOOD, file="r.yaml")
    assert recipe.data["quantizers"]["q"]["bits_weights"] == 8


def test_each_error_names_file_line_and_key_path():
    errs = errors(GOOD.replace("bits_weights: 8", "bits_weights: 40"))
    assert errs == [
        "r.yaml:5: quantizers.q.bits_weights: expected an integer bit width 2..16 or 32 or null "
        "(floating point), got 40"
    ]


@pytest.mark.parametrize(
    "change, expected",
    [
        (("version:", "foo:"), "r.yaml:1: foo: unknown top-level key"),
        (("version:", "regularizers:"), "r.yaml:1: regularizers: section 'regularizers' is not supported yet"),
        (("version:", "pruners:"), "r.yaml:1: pruners: expected a mapping of instance name"),
        (("bits_activations: 8", "bits_actvations: 8"), "r.yaml:4: quantizers.q.bits_actvations: unknown argument"),
        (("bits_activations: 8", "bits_activations: eight"), "quantizers.q.bits_activations: expected an integer"),
        (("bits_activations: 8", "bits_activations: 1"), "quantizers.q.bits_activations: expected an integer"),
        (("bits_activations: 8", "mode: ROUND"), "quantizers.q.mode: expected one of"),
        (("bits_activations: 8", "ema_decay: 1.5"), "quantizers.q.ema_decay: expected a number in [0.0, 1.0)"),
        (
            ("class: QuantAwareTrainRangeLinearQuantizer", "class: os.system"),
            "quantizers.q.class: unknown quantizer class 'os.system'",
        ),
        (("class: MultiStepLR", "class: StepLR"), "missing required argument 'step_size'"),
        (("gamma: 0.1", "gama: 0.1"), "lr_schedulers.lr.gama: unknown argument of MultiStepLR"),
        (("milestones: [2]", "milestones: 2"), "lr_schedulers.lr.milestones: expected a list of epoch numbers"),
        (("{instance_name: q}", "{instance_name: qq}"), "policies[0].quantizer.instance_name: undefined instance 'qq'"),
        (("ending_epoch: 5", "ending_epoch: 0"), "policies[0].ending_epoch: ending_epoch (0) must be greater"),
        (("frequency: 1", "frequency: 9"), "policies[0].frequency: frequency (9) exceeds"),
        (("epochs: [0, 1, 2]", "epochs: [0, 1, 2]\n    starting_epoch: 0"), "mutually exclusive"),
        (("epochs: [0, 1, 2]", "epochs: []"), "expected a non-empty list"),
        (("    ending_epoch: 5\n", ""), "missing 'ending_epoch'"),
        (("- quantizer:", "- regularizer:"), "'regularizer' policies are not supported yet"),
        (("- quantizer:", "- pruner:"), "policies[0].pruner.instance_name: undefined instance 'q': not in 'pruners'"),
        (("    class: QuantAwareTrainRangeLinearQuantizer\n", ""), "quantizers.q: missing 'class'"),
        (("{instance_name: q}", "{name: q}"), "policies[0].quantizer: expected {instance_name: NAME}"),
        (
            ("{instance_name: q}", "{instance_name: [q]}"),
            "policies[0].quantizer.instance_name: expected an instance name",
        ),
        (("{instance_name: q}", "{instance_name: q, args: {a: 1}}"), "quantizer policies take no args"),
        (
            ("bits_activations: 8", "per_channel_wts: yes please"),
            "quantizers.q.per_channel_wts: expected true or false",
        ),
        (("bits_activations: 8", "ema_decay: .nan"), "quantizers.q.ema_decay: expected a finite number"),
        (("gamma: 0.1", "gamma: '0.1'"), "lr_schedulers.lr.gamma: expected a number, got '0.1'"),
        (
            ("milestones: [2]", "milestones: [2]\n    last_epoch: 1.5"),
            "lr_schedulers.lr.last_epoch: expected an integer",
        ),
        (("quantizers:\n", "quantizers: 3\nx:\n"), "quantizers: expected a mapping of instance name"),
        (("policies:\n", "policies: {a: 1}\nx:\n"), "policies: expected a list of policies"),
    ],
)
def test_recipe_mistakes(change, expected):
    text = ("version: 1\n" + GOOD) if change[0] == "version:" else GOOD
    errs = errors(text.replace(*change))
    assert any(expected in e for e in errs), errs
    assert all(e.startswith("r.yaml:") for e in errs)


def test_null_bits_are_allowed_and_override_keys_checked():
    ok = GOOD.replace("bits_weights: 8", "bits_weights: null\n    overrides:\n      fc: {bits_weights: 8}")
    read_recipe(ok, file="r.yaml")
    errs = errors(GOOD.replace("bits_weights: 8", "bits_weights: 8\n    overrides:\n      fc: {clip_acts: AVG}"))
    assert errs[0].startswith("r.yaml:7: quantizers.q.overrides.fc.clip_acts: unknown per-layer key")


def test_all_errors_reported_at_once():
    text = (
        GOOD.replace("bits_weights: 8", "bits_weights: 99")
        .replace("gamma: 0.1", "gama: 0.1")
        .replace("{instance_name: q}", "{instance_name: nope}")
    )
    assert len(errors(text)) == 3


def test_duplicate_keys_and_yaml_syntax():
    assert "duplicate key (first at line 4)" in errors(GOOD.replace("bits_weights: 8", "bits_activations: 4"))[0]
    assert errors("a: [1, 2\n")[0].startswith("r.yaml:")


def test_safe_loader_refuses_python_tags():
    errs = errors("quantizers: !!python/object/apply:os.system ['echo hi']\n")
    assert "invalid YAML" in errs[0]


def test_registry_decorator_extends_recipes():
    name = f"MyQATQuantizer{id(object())}"  # unique: the registry outlives this test

    @QUANTIZERS.register(name=name)
    class MyQAT(QuantAwareTrainRangeLinearQuantizer):
        pass

    read_recipe(GOOD.replace("QuantAwareTrainRangeLinearQuantizer", name), file="r.yaml")
    assert QUANTIZERS.get(name) is MyQAT


def test_one_quantizer_per_recipe():
    text = GOOD.replace("lr_schedulers:", "  q2:\n    class: QuantAwareTrainRangeLinearQuantizer\nlr_schedulers:")
    text += "  - quantizer: {instance_name: q2}\n    epochs: [3]\n"
    assert any("one quantizer per recipe" in e for e in errors(text))


def test_one_quantizer_policy_per_recipe():
    text = GOOD + "  - quantizer: {instance_name: q}\n    epochs: [7]\n"
    assert any("one quantizer policy per recipe" in e for e in errors(text))


def test_unreadable_recipe(tmp_path):
    path = tmp_path / "weights.pth.tar"
    path.write_bytes(b"\x80\x02\xff\xfe")
    with pytest.raises(RecipeError, match="not a YAML text file"):
        read_recipe(str(path))


def test_every_shipped_schedule_validates(root):
    import glob
    import os

    paths = glob.glob(os.path.join(root, "schedules", "**", "*.yaml"), recursive=True)
    assert len(paths) >= 10
    for path in paths:
        read_recipe(path)


def with_override(pattern):
    return GOOD.replace("bits_weights: 8", f"bits_weights: 8\n    overrides:\n      '{pattern}': {{bits_weights: 4}}")


@pytest.mark.parametrize("pattern", ["(.*.*.*.*.*.*.*.*)*X", "(.+)+X", "(conv|fc)*X", "((ab)*c)*"])
def test_override_patterns_that_backtrack_exponentially_are_refused_with_file_and_line(pattern):
    """(.*.*.*.*.*.*.*.*)*X ran for minutes against one 15-character layer name (re backtracks)."""
    errs = errors(with_override(pattern))
    assert len(errs) == 1
    assert errs[0].startswith(f"r.yaml:7: quantizers.q.overrides.{pattern}: ")
    assert "exponential time" in errs[0]
    start = time.monotonic()
    with pytest.raises(RecipeError, match="exponential time"):  # the library refuses it too, before matching
        QuantAwareTrainRangeLinearQuantizer(torch.nn.Linear(2, 2), overrides={pattern: {}})
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("pattern", ["conv1", r"layer1\..*", ".*downsample.*", r"layer(1|2)\.0\..*",
                                     r"(layer\d\.)+conv", "(?!fc).*", r"features\.[0-9]+\.conv"])
def test_ordinary_override_patterns_pass(pattern):
    read_recipe(with_override(pattern), file="r.yaml")
