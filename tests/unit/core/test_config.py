"""Typed recipe configuration: frozen, per-layer objects with overrides applied, aliases resolved in the
config, docs generated from the field descriptions, registries that check their members' interface."""

import dataclasses
import subprocess
import sys

import pytest
import torch

from compressor.core.errors import RecipeError
from compressor.core.registry import Registry
from compressor.quantization.linear.ptq import PostTrainLinearQuantizer, PTQConfig
from compressor.quantization.linear.qat import QATConfig, QuantAwareTrainRangeLinearQuantizer
from compressor.quantization.modes import LinearQuantMode as M
from compressor.recipe.build import read_recipe
from compressor.recipe.components import CALIBRATORS, QUANTIZERS, SECTIONS
from compressor.recipe.docs import keys_table


def test_config_is_frozen_and_typed():
    cfg = QATConfig.from_args(bits_activations=8, mode="ASYMMETRIC_UNSIGNED")
    assert cfg.bits_activations == 8 and cfg.acts_mode is M.ASYMMETRIC_UNSIGNED and cfg.ema_decay == 0.999
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.bits_activations = 4
    with pytest.raises(TypeError, match="unknown arguments"):
        QATConfig.from_args(bits_activatons=8)


def test_alias_is_resolved_in_the_config_not_by_mutation():
    cfg = PTQConfig.from_args(bits_parameters=6)
    assert (cfg.bits_parameters, cfg.bits_weights) == (6, 6)
    assert PTQConfig.from_args(bits_parameters=6, bits_weights=4).bits_weights == 4
    # an override's null keeps that layer FP32: it is not replaced by the alias
    assert cfg.for_layer({"bits_weights": None}).bits_weights is None


def test_layer_settings_are_one_object_with_the_override_applied():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3))
    q = QuantAwareTrainRangeLinearQuantizer(
        model, bits_activations=8, bits_weights=8, overrides={"2": {"bits_weights": 4, "per_channel_wts": True}}
    )
    assert q.layer_settings("0") is q.config
    layer = q.layer_settings("2")
    assert isinstance(layer, QATConfig) and (layer.bits_weights, layer.per_channel_wts, layer.bits_activations) == (
        4,
        True,
        8,
    )
    q.prepare_model()
    assert q.weight_quantizers["2.weight"].bits == 4 and q.weight_quantizers["2.weight"].per_channel
    assert q.weight_quantizers["0.weight"].bits == 8 and not q.weight_quantizers["0.weight"].per_channel


def test_checkpoint_config_is_plain_data_and_compares_on_resume():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    state = PostTrainLinearQuantizer(model, bits_activations=8, model_activation_stats={"0": {}}).state_dict()
    assert state["config"]["bits_weights"] == 8 and "model_activation_stats" not in state["config"]
    PostTrainLinearQuantizer(model, bits_activations=8).load_state_dict(state)
    with pytest.raises(ValueError, match="bits_activations: 8 in the checkpoint, 4 in the recipe"):
        PostTrainLinearQuantizer(model, bits_activations=4).load_state_dict(state)


def test_cross_check_runs_in_validation_for_the_config_and_each_override(tmp_path):
    text = (
        "quantizers:\n  q:\n    class: PostTrainLinearQuantizer\n    clip_acts: N_STD\n"
        "    overrides:\n      fc:\n        clip_acts: N_STD\n"
    )
    with pytest.raises(RecipeError) as err:
        read_recipe(text, file="r.yaml")
    messages = [str(i) for i in err.value.issues]
    assert messages == [
        "r.yaml:4: quantizers.q.clip_acts: N_STD needs clip_n_stds (the number of standard deviations kept)",
        "r.yaml:7: quantizers.q.overrides.fc.clip_acts: N_STD needs clip_n_stds (the number of "
        "standard deviations kept)",
    ]
    read_recipe(
        text.replace("    clip_acts: N_STD\n    overrides", "    clip_acts: N_STD\n    clip_n_stds: 3\n    overrides"),
        file="r.yaml",
    )


def test_recipe_docs_are_generated_from_the_configs(root):
    table = keys_table("PostTrainLinearQuantizer")
    assert "| `bits_parameters` | 8 | 2..16; 32 or null = floating point |" in table
    assert "| `clip_acts` | NONE |" in table and "(per layer)" in table
    assert "(per layer)" not in keys_table("ActivationCalibrator")  # it has no overrides
    out = subprocess.run([sys.executable, "tools/recipe_docs.py", "--check"], capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stdout


def test_every_registered_component_declares_a_documented_config():
    for section, registry in SECTIONS.items():
        if section == "lr_schedulers":
            continue
        for name in registry.names():
            for key, f in registry.get(name).CONFIG.settings().items():
                assert f.metadata["description"], f"{name}.{key} has no description"


def test_registry_checks_the_declared_interface():
    with pytest.raises(TypeError, match="must derive from Quantizer"):
        QUANTIZERS.register(type("NotAQuantizer", (), {}))
    with pytest.raises(TypeError, match="must define calibrate"):
        CALIBRATORS.register(type("NoCalibrate", (), {"CONFIG": PTQConfig}))
    reg = Registry("thing", members=("run",))
    reg.register(type("Runs", (), {"run": lambda self: None}))
    assert reg.names() == ["Runs"]
