import csv
import glob
import itertools
import json
import os
import random

import pytest
import yaml

from compressor.app.classifier import main as classifier
from compressor.app.post_train import main as post_train
from compressor.app.sensitivity import choose_bits
from compressor.quantization.mixed_precision import allocate_bits, noise_from_sqnr, total_bits
from compressor.recipe.build import read_recipe


def _brute_force(sizes, noise, budget):
    best = None
    names = list(sizes)
    for combo in itertools.product(*(sorted(noise[n]) for n in names)):
        bits = dict(zip(names, combo))
        if total_bits(sizes, bits) <= budget:
            cost = sum(noise[n][bits[n]] for n in names)
            if best is None or cost < best[0] - 1e-12:
                best = (cost, bits)
    return best


def test_knapsack_is_exact_and_within_budget():
    rng = random.Random(0)
    for trial in range(30):
        sizes = {f"l{i}": rng.choice([27, 144, 432, 2304, 4608, 640]) for i in range(5)}
        noise = {n: {b: rng.uniform(0, 1) * 4.0**-b for b in (2, 3, 4, 8)} for n in sizes}
        budget = rng.uniform(2.2, 7) * sum(sizes.values())
        bits = allocate_bits(sizes, noise, budget)
        assert total_bits(sizes, bits) <= budget
        cost, _ = _brute_force(sizes, noise, budget)
        assert sum(noise[n][bits[n]] for n in sizes) == pytest.approx(cost, rel=1e-9, abs=1e-15), trial
    with pytest.raises(ValueError):
        allocate_bits({"a": 10}, {"a": {4: 0.1}}, 39)


def test_knapsack_prefers_sensitive_layers_at_the_uniform_size():
    sizes = {"small_sensitive": 100, "big_robust": 10000}
    noise = {"small_sensitive": {2: 1.0, 4: 0.5, 8: 0.001}, "big_robust": {2: 0.6, 3: 0.05, 4: 0.01, 8: 0.0001}}
    bits = allocate_bits(sizes, noise, 4 * 10100)
    assert bits == {"small_sensitive": 8, "big_robust": 3}  # the uniform W4 size, spent where it matters
    assert noise_from_sqnr(20.0) == pytest.approx(0.01) and noise_from_sqnr(float("inf")) == 0.0


def test_choose_bits_reads_a_sensitivity_table():
    table = {
        "layers": {
            "a": {"params": 100, "weights": {2: {"sqnr_db": 5.0}, 8: {"sqnr_db": 40.0}}},
            "b": {"params": 300, "weights": {2: {"sqnr_db": 30.0}, 8: {"sqnr_db": 50.0}}},
        }
    }
    bits, budget = choose_bits(table, size_ratio=0.125)
    assert budget == 0.125 * 32 * 400 and bits == {"a": 8, "b": 2}
    assert choose_bits(table, avg_bits=8)[0] == {"a": 8, "b": 8}


@pytest.fixture(scope="module")
def fp32_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("fp32")
    assert (
        classifier(
            [
                "-a",
                "simplenet_digits",
                "--dataset",
                "digits",
                "--epochs",
                "3",
                "-b",
                "64",
                "--lr",
                "0.05",
                "-p",
                "0",
                "--deterministic",
                "-o",
                str(out),
                "-n",
                "fp32",
            ]
        )
        == 0
    )
    return glob.glob(os.path.join(out, "fp32___*", "checkpoint.pth.tar"))[0]


@pytest.mark.slow
def test_sensitivity_writes_files_and_a_recipe_both_apps_run(tmp_path, fp32_checkpoint, root):
    recipe_path = tmp_path / "mp.yaml"
    argv = [
        "-a",
        "simplenet_digits",
        "--dataset",
        "digits",
        "--resume-from",
        fp32_checkpoint,
        "--compress",
        os.path.join(root, "schedules/post_train_quant/w4a8_aciq_first_last_8bit.yaml"),
        "--calibration-size",
        "128",
        "--holdout-size",
        "128",
        "--sensitivity",
        "--sensitivity-bits",
        "2,3,4,8",
        "--sensitivity-act-bits",
        "4",
        "--target-size-ratio",
        "0.125",
        "--mp-recipe",
        str(recipe_path),
        "-o",
        str(tmp_path),
        "-n",
        "sens",
    ]
    assert post_train(argv) == 0
    (run,) = glob.glob(os.path.join(tmp_path, "sens___*"))
    assert {"sensitivity.yaml", "sensitivity.csv", "sensitivity.png", "sens.log", "summary.json"} <= set(
        os.listdir(run)
    )
    assert glob.glob(os.path.join(run, "events.out.tfevents.*"))
    assert open(os.path.join(run, "sensitivity.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    table = yaml.safe_load(open(os.path.join(run, "sensitivity.yaml")))
    assert list(table["layers"]) == ["conv1", "conv2", "fc1", "fc2"] and table["holdout_images"] == 128
    for entry in table["layers"].values():
        assert set(entry["weights"]) == {2, 3, 4, 8} and set(entry["activations"]) == {4}
        # more bits, less noise: W8 alone is far cleaner than W2 alone
        assert entry["weights"][8]["sqnr_db"] > entry["weights"][2]["sqnr_db"] + 20
    rows = list(csv.DictReader(open(os.path.join(run, "sensitivity.csv"))))
    assert len(rows) == 4 * (4 + 1 + 1) and {r["kind"] for r in rows} == {"weights", "activations", "all_but"}
    assert "Per-layer sensitivity" in open(os.path.join(run, "sens.log")).read()

    # the recipe: validates, respects the budget, and runs unchanged through both apps
    recipe = read_recipe(str(recipe_path))
    ptq = recipe.data["quantizers"]["post_train_quantizer"]
    sizes = {name: entry["params"] for name, entry in table["layers"].items()}
    chosen = {name: ptq["overrides"][name]["bits_weights"] for name in sizes}
    assert total_bits(sizes, chosen) <= 0.125 * 32 * sum(sizes.values())
    assert recipe.data["quantizers"]["linear_quantizer"]["overrides"] == {
        n: {"bits_weights": b} for n, b in chosen.items()
    }
    summary = json.load(open(os.path.join(run, "summary.json")))
    assert summary["bits"] == chosen and summary["avg_bits"] <= 4.0

    assert (
        post_train(
            [
                "-a",
                "simplenet_digits",
                "--dataset",
                "digits",
                "--resume-from",
                fp32_checkpoint,
                "--compress",
                str(recipe_path),
                "--calibration-size",
                "128",
                "-o",
                str(tmp_path),
                "-n",
                "mp_ptq",
            ]
        )
        == 0
    )
    (ptq_run,) = glob.glob(os.path.join(tmp_path, "mp_ptq___*"))
    params = yaml.safe_load(open(os.path.join(ptq_run, "layer_quant_params.yaml")))
    assert {name: params[name]["bits_weights"] for name in sizes} == chosen
    assert json.load(open(os.path.join(ptq_run, "summary.json")))["quantized"]["top1"] > 80

    assert (
        classifier(
            [
                "-a",
                "simplenet_digits",
                "--dataset",
                "digits",
                "--exp-load-weights-from",
                fp32_checkpoint,
                "--compress",
                str(recipe_path),
                "--epochs",
                "1",
                "-b",
                "64",
                "--lr",
                "0.005",
                "-p",
                "0",
                "--etrs",
                "0.25",
                "--deterministic",
                "-o",
                str(tmp_path),
                "-n",
                "mp_qat",
            ]
        )
        == 0
    )
    (qat_run,) = glob.glob(os.path.join(tmp_path, "mp_qat___*"))
    assert json.load(open(os.path.join(qat_run, "summary.json")))["test"]["top1"] > 80


@pytest.mark.slow
def test_adaround_recipe_through_the_app_and_back_from_its_checkpoint(tmp_path, fp32_checkpoint):
    recipe = tmp_path / "ada.yaml"
    recipe.write_text("""\
quantizers:
  ptq:
    class: PostTrainLinearQuantizer
    bits_activations: 8
    bits_parameters: 3
    mode: {activations: ASYMMETRIC_UNSIGNED, weights: SYMMETRIC}
    per_channel_wts: true
    clip_acts: AVG
    adaround: true
    adaround_iterations: 30
    bias_correction: true
""")
    argv = [
        "-a",
        "simplenet_digits",
        "--dataset",
        "digits",
        "--resume-from",
        fp32_checkpoint,
        "--compress",
        str(recipe),
        "--calibration-size",
        "128",
        "-o",
        str(tmp_path),
        "-n",
        "ada",
    ]
    assert post_train(argv) == 0
    (run,) = glob.glob(os.path.join(tmp_path, "ada___*"))
    summary = json.load(open(os.path.join(run, "summary.json")))
    assert summary["refinement"]["method"] == "AdaRound + bias correction"
    log = open(os.path.join(run, "ada.log")).read()
    assert "error RTN" in log and "flipped %" in log
    # the learned integers live in the checkpoint: the classifier app evaluates it to the same top-1
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
                "ev",
                "--resume-from",
                os.path.join(run, "quantized_checkpoint.pth.tar"),
            ]
        )
        == 0
    )
    (ev,) = glob.glob(os.path.join(tmp_path, "ev___*"))
    assert json.load(open(os.path.join(ev, "summary.json")))["test"]["top1"] == pytest.approx(
        summary["quantized"]["top1"]
    )
