"""Distiller's post-training examples for torchvision's ResNet-18 (schedules/distiller/post_train_quant/, copied
unchanged) run with their own statistics file; only the file path in the recipe is changed (Distiller's paths
are relative to its examples folder). Data: digits at 224x224, a few test images; any resnet18 checkpoint."""

import glob
import json
import os

import pytest
import torch
import torchvision
import yaml

from compressor.app.classifier import main as classifier
from compressor.app.post_train import main as post_train
from compressor.calibration.stats_file import load_stats
from compressor.quantization.linear.ptq import PostTrainLinearQuantizer
from compressor.recipe.build import read_recipe

DISTILLER_STATS = "../quantization/post_train_quant/stats/resnet18_quant_stats.yaml"


def stats_path(root):
    """Distiller's resnet18 statistics, unchanged (kept out of schedules/: it is no recipe)."""
    return os.path.join(root, "stats", "distiller", "resnet18_quant_stats.yaml")


def example(root, name):
    return os.path.join(root, "schedules", "distiller", "post_train_quant", name)


def with_local_paths(root, tmp_path, name):
    """The example recipe with Distiller's relative stats path pointing at our copy; nothing else changed."""
    text = open(example(root, name)).read()
    assert DISTILLER_STATS in text
    path = tmp_path / name
    path.write_text(text.replace(DISTILLER_STATS, stats_path(root)))
    return str(path)


@pytest.fixture(scope="module")
def resnet18_checkpoint(tmp_path_factory):
    """A randomly initialised torchvision resnet18 (10 classes for digits), saved as our apps save weights."""
    path = tmp_path_factory.mktemp("r18") / "resnet18.pth.tar"
    torch.manual_seed(0)
    torch.save({"arch": "resnet18", "state_dict": torchvision.models.resnet18(num_classes=10).state_dict()}, path)
    return str(path)


def test_distillers_resnet18_stats_fit_torchvisions_resnet18(root):
    """Every site of torchvision's resnet18 finds its record in Distiller's file (relu1/relu2/add names)."""
    path = stats_path(root)
    q = PostTrainLinearQuantizer(torchvision.models.resnet18().eval(), bits_activations=6,
                                 mode="ASYMMETRIC_UNSIGNED", model_activation_stats=path)
    q.prepare_model()
    assert len(q.ranges) == 30
    raw = load_stats(path)
    assert q.ranges["layer1.0.relu"] == pytest.approx((0.0, raw["layer1.0.relu1"]["max"]))
    assert q.ranges["layer1.0.relu@1"] == pytest.approx((0.0, raw["layer1.0.relu2"]["max"]))
    assert q.ranges["layer1.0.conv2"] == pytest.approx((raw["layer1.0.bn2"]["min"], raw["layer1.0.bn2"]["max"]))
    assert q.ranges["input"] == pytest.approx((raw["conv1#input"]["min"], raw["conv1#input"]["max"]))


def test_resnet50_stats_do_not_fit_resnet18(root, tmp_path):
    from compressor.core.errors import StatsError

    stats = yaml.safe_load(open(stats_path(root)))
    stats["layer1.0.conv3"] = stats["layer1.0.conv2"]  # a Bottleneck layer
    with pytest.raises(StatsError, match="statistics for layer1.0.conv3, which the model does not have"):
        PostTrainLinearQuantizer(torchvision.models.resnet18().eval(), model_activation_stats=stats).prepare_model()


@pytest.mark.parametrize("name", ["resnet18_imagenet_post_train.yaml", "resnet18_imagenet_post_train_lapq.yaml",
                                  "resnet18_imagenet_post_train_input_overrides.yaml"])
def test_examples_validate(root, tmp_path, name):
    read_recipe(with_local_paths(root, tmp_path, name))


@pytest.mark.slow
def test_post_train_quant_runs_distillers_resnet18_example(root, tmp_path, resnet18_checkpoint):
    recipe = with_local_paths(root, tmp_path, "resnet18_imagenet_post_train.yaml")
    assert post_train(["-a", "resnet18", "--dataset", "digits", "--resume-from", resnet18_checkpoint,
                       "--compress", recipe, "--etes", "0.02", "-b", "8", "--calibration-size", "8",
                       "-o", str(tmp_path), "-n", "r18"]) == 0
    (run,) = glob.glob(os.path.join(tmp_path, "r18___*"))
    summary = json.load(open(os.path.join(run, "summary.json")))
    assert summary["calibration_images"] == 0  # ranges from Distiller's file, no calibration
    params = open(os.path.join(run, "layer_quant_params.yaml")).read()
    assert "layer4.1.relu@1" in params and "dynamic" not in params


@pytest.mark.slow
def test_compress_classifier_evaluates_with_distillers_config_file(root, tmp_path, resnet18_checkpoint):
    recipe = with_local_paths(root, tmp_path, "resnet18_imagenet_post_train.yaml")
    assert classifier(["-a", "resnet18", "--dataset", "digits", "--resume-from", resnet18_checkpoint, "--evaluate",
                       "--quantize-eval", "--qe-config-file", recipe, "--etes", "0.02", "-b", "8",
                       "-o", str(tmp_path), "-n", "cc"]) == 0
    (run,) = glob.glob(os.path.join(tmp_path, "cc___*"))
    assert json.load(open(os.path.join(run, "summary.json")))["calibration_images"] == 0


@pytest.mark.slow
def test_post_train_quant_runs_distillers_input_overrides_example(root, tmp_path, resnet18_checkpoint):
    """conv1's input from its output settings, fc's input quantized with AVG after the average pooling."""
    recipe = with_local_paths(root, tmp_path, "resnet18_imagenet_post_train_input_overrides.yaml")
    assert post_train(["-a", "resnet18", "--dataset", "digits", "--resume-from", resnet18_checkpoint,
                       "--compress", recipe, "--etes", "0.02", "-b", "8", "-o", str(tmp_path), "-n", "io"]) == 0
    (run,) = glob.glob(os.path.join(tmp_path, "io___*"))
    params = yaml.safe_load(open(os.path.join(run, "layer_quant_params.yaml")))
    assert params["fc#input"]["clip_acts"] == "AVG" and params["fc"]["clip_acts"] == "NONE"
    assert params["input"]["clip_acts"] == "AVG"  # conv1's output settings (from_output)


def test_lapq_example_overrides_follow_distillers_names(root, tmp_path):
    """The LAPQ example's settings (without the search): 4-bit ReLUs inside blocks, except layer4.1.relu2,
    which names our layer4.1.relu@1; convs keep FP32 outputs, 4-bit weights; first conv and fc untouched."""
    spec = dict(read_recipe(with_local_paths(root, tmp_path, "resnet18_imagenet_post_train_lapq.yaml"))
                .data["quantizers"]["post_train_quantizer"])
    spec.pop("class")
    q = PostTrainLinearQuantizer(torchvision.models.resnet18().eval(), **spec)
    q.prepare_model()
    assert q.activation_quantizers["layer1.0.relu"].bits == 4 and q.activation_quantizers["layer4.1.relu"].bits == 4
    assert "layer4.1.relu@1" not in q.activation_quantizers and "layer1.0.conv2" not in q.activation_quantizers
    assert q.weight_quantizers["layer1.0.conv1.weight"].bits == 4 and "layer4.1.conv2.weight" not in q.weight_quantizers
    assert "conv1.weight" not in q.weight_quantizers and "fc" not in q.activation_quantizers
