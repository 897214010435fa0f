"""Every kind of run writes the same HParams description, so TensorBoard (which keeps one per logdir)
lists every run's own hyper-parameters and metrics; read back from the event files."""

import argparse
import glob
import json
import os

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata

from compressor.app.classifier import main as classifier
from compressor.app.post_train import main as post_train
from compressor.app.run_record import HPARAMS, METRICS, complete, ptq_record, publish, training_record
from compressor.training.run_dir import RunDirectory


def read_hparams(run_dir):
    """(experiment hparam names, metric tags, session hparams as python values, last scalar per tag)."""
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    values = {k: (v.string_value if v.HasField("string_value") else v.number_value) for k, v in start.hparams.items()}
    scalars = {tag: acc.Scalars(tag)[-1].value for tag in acc.Tags()["scalars"]}
    return ([h.name for h in experiment.hparam_infos], [m.name.tag for m in experiment.metric_infos], values, scalars)


def args(**kw):
    base = dict(arch="simplenet_digits", compress=None, lr=0.05, epochs=3, batch_size=64, seed=0, deterministic=False)
    return argparse.Namespace(**{**base, **kw})


def train_summary(top1, size=None):
    s = {"test": {"top1": top1, "top5": 100.0, "loss": 0.1, "images": 360}, "best": {"epoch": 2, "top1": top1 - 1}}
    if size:
        s["model_size_bits"] = {"quantized": size, "fp32": 1000}
    return s


QAT = {"quantizers": {"q": {"class": "QuantAwareTrainRangeLinearQuantizer", "bits_weights": 8, "bits_activations": 8,
                            "mode": "ASYMMETRIC_UNSIGNED", "per_channel_wts": True}}}
DOREFA = {"quantizers": {"q": {"class": "DorefaQuantizer", "bits_weights": 4, "bits_activations": 4}}}
KD = {"distillers": {"kd": {"class": "KnowledgeDistillation", "teacher_checkpoint": "logs/fp32___1/best.pth.tar"}}}


def records():
    ptq_config = {"bits_activations": 8, "bits_parameters": 6, "mode": "SYMMETRIC", "clip_acts": "MSE",
                  "per_channel_wts": False}
    ptq_sum = {"quantized": {"top1": 96.0, "top5": 99.0, "loss": 0.2, "images": 360},
               "fp32": {"top1": 97.0, "top5": 100.0, "loss": 0.1}, "calibration_images": 256,
               "export": {"onnx": {"agreement": 99.5}}}
    return {
        "fp32": (training_record(args(), "digits", None, (32, 32), train_summary(97.0)), train_summary(97.0)),
        "qat": (training_record(args(compress="r/qat.yaml"), "digits", QAT, (8, 8), train_summary(96.5, 250)), None),
        "low-bit": (training_record(args(compress="r/dorefa.yaml"), "digits", DOREFA, (4, 4), train_summary(94.0, 130)),
                    None),
        "kd": (training_record(args(), "digits", KD, (32, 32), train_summary(97.2)), None),
        "ptq": (ptq_record(args(compress="p/w6a8.yaml", seed=None), "digits", ptq_config, ptq_sum), None),
    }


def test_every_kind_writes_the_same_schema(tmp_path):
    written = {}
    for kind, (record, _) in records().items():
        run = RunDirectory(str(tmp_path), kind)
        publish(run, {}, record)
        run.close()
        written[kind] = read_hparams(run.path)
    names = {kind: w[0] for kind, w in written.items()}
    assert all(n == list(HPARAMS) for n in names.values())  # same keys, same order, in every run
    assert all(w[1] == list(METRICS) for w in written.values())
    assert all(sorted(w[2]) == sorted(HPARAMS) for w in written.values())
    values = {kind: w[2] for kind, w in written.items()}
    assert [values[k]["kind"] for k in values] == ["fp32", "qat", "low-bit", "kd", "ptq"]
    assert values["qat"]["quantizer"] == "QuantAwareTrainRangeLinearQuantizer"
    assert values["qat"]["per_channel_wts"] == "true"
    assert values["low-bit"]["method"] == "DOREFA" and values["low-bit"]["bits_weights"] == 4
    assert values["kd"]["teacher"] == "simplenet_digits:fp32"
    ptq = values["ptq"]
    assert (ptq["bits_weights"], ptq["clip_acts"], ptq["lr"], ptq["epochs"], ptq["calibration_images"]) == \
        (6, "MSE", 0.0, 0, 256)
    assert values["fp32"]["clip_acts"] == "n/a" and values["fp32"]["bits_weights"] == 32
    # each run's metrics are its own scalars; a metric that does not apply is absent, not a made-up value
    scalars = {kind: w[3] for kind, w in written.items()}
    assert scalars["ptq"]["Performance/Test/Top1"] == pytest.approx(96.0)
    assert scalars["ptq"]["Performance/FP32/Top1"] == pytest.approx(97.0)
    assert scalars["ptq"]["Export/Agreement"] == pytest.approx(99.5)
    assert "Performance/Validation/BestTop1" not in scalars["ptq"]
    assert scalars["qat"]["Model/SizeVsFP32"] == pytest.approx(0.25)
    assert "Performance/FP32/Top1" not in scalars["qat"]


def test_schema_rejects_unknown_keys_and_keeps_types():
    with pytest.raises(KeyError, match="not in the HParams schema"):
        complete({"learning_rate": 0.1})
    full = complete({"epochs": 3.0, "seed": 7, "bits_weights": None})
    assert full["epochs"] == 3 and isinstance(full["epochs"], int) and full["seed"] == "7"
    assert full["bits_weights"] == 32 and list(full) == list(HPARAMS)


@pytest.mark.slow
def test_real_fp32_qat_and_ptq_runs_share_the_schema(tmp_path, root):
    common = ["-a", "simplenet_digits", "--dataset", "digits", "--epochs", "1", "-b", "64", "-p", "0",
              "--deterministic", "--etrs", "0.3", "-o", str(tmp_path)]
    assert classifier(common + ["-n", "fp32"]) == 0
    qat = os.path.join(root, "schedules", "quant_aware_train_8bit.yaml")
    assert classifier(common + ["-n", "qat", "--compress", qat]) == 0
    fp32 = glob.glob(os.path.join(tmp_path, "fp32___*"))[0]
    assert post_train(["-a", "simplenet_digits", "--dataset", "digits", "--resume-from",
                       os.path.join(fp32, "best.pth.tar"), "--calibration-size", "128", "-o", str(tmp_path),
                       "-n", "ptq"]) == 0
    runs = {os.path.basename(p).split("___")[0]: p for p in glob.glob(os.path.join(tmp_path, "*___*"))}
    read = {k: read_hparams(p) for k, p in runs.items()}
    assert {k: r[0] for k, r in read.items()} == {k: list(HPARAMS) for k in runs}
    assert {k: r[1] for k, r in read.items()} == {k: list(METRICS) for k in runs}
    assert {k: r[2]["kind"] for k, r in read.items()} == {"fp32": "fp32", "qat": "qat", "ptq": "ptq"}
    assert read["fp32"][2]["seed"] == "0"  # --deterministic without --seed runs with seed 0
    for kind, path in runs.items():
        summary = json.load(open(os.path.join(path, "summary.json")))
        test = summary["quantized"] if kind == "ptq" else summary["test"]
        assert read[kind][3]["Performance/Test/Top1"] == pytest.approx(test["top1"], abs=1e-4)
        assert summary["hparams"] == read[kind][2] | {k: int(v) for k, v in read[kind][2].items()
                                                      if isinstance(HPARAMS[k], int)}
        assert summary["wall_time_s"] > 0 and test["images"] == 360
        compute = summary["compute"]["totals"]
        bits = 32 if kind == "fp32" else 8
        assert compute["macs"] > 0 and compute["vs_fp32"]["weight_bytes"] <= 1.0
        assert {r["w_bits"] for r in summary["compute"]["layers"]} == {bits}
    assert read["qat"][2]["recipe"] == "quant_aware_train_8bit.yaml" and read["qat"][2]["lr"] == pytest.approx(0.1)


def test_records_say_what_the_run_did(tmp_path, root):
    """A QAT recipe whose quantizer never starts is an FP32 run; --evaluate ran 0 epochs; a mode given per tensor
    kind reads as text; a post-training quantizer that a policy applies while training is QAT."""
    common = ["-a", "simplenet_digits", "--dataset", "digits", "-b", "64", "-p", "0", "--etrs", "0.2",
              "-o", str(tmp_path)]
    warmup = os.path.join(root, "schedules", "quant_aware_train_fp32_warmup.yaml")  # quantizer from epoch 4
    assert classifier(common + ["--epochs", "2", "-n", "idle", "--compress", warmup]) == 0
    idle = json.load(open(glob.glob(os.path.join(tmp_path, "idle___*", "summary.json"))[0]))
    assert idle["hparams"]["kind"] == "fp32" and idle["quantized"] is False
    assert (idle["bits_weights"], idle["bits_activations"]) == (32, 32)
    assert idle["hparams"]["quantizer"] == "none" and idle["metrics"]["Model/SizeVsFP32"] == 1.0
    assert idle["hparams"]["epochs"] == 2

    recipe = {"quantizers": {"q": {"class": "PostTrainLinearQuantizer", "bits_activations": 8, "bits_parameters": 8,
                                   "mode": {"activations": "ASYMMETRIC_UNSIGNED", "weights": "SYMMETRIC"},
                                   "overrides": {"fc2": {"bits_weights": 4}}}},
              "policies": [{"quantizer": {"instance_name": "q"}, "starting_epoch": 0, "ending_epoch": 2,
                            "frequency": 1}]}
    path = tmp_path / "ptq_in_training.yaml"
    import yaml

    path.write_text(yaml.safe_dump(recipe))
    assert classifier(common + ["--epochs", "1", "-n", "mixed", "--compress", str(path)]) == 0
    mixed_dir = glob.glob(os.path.join(tmp_path, "mixed___*"))[0]
    mixed = json.load(open(os.path.join(mixed_dir, "summary.json")))
    assert mixed["hparams"]["kind"] == "qat" and mixed["hparams"]["method"] == "A:ASYMMETRIC_UNSIGNED/W:SYMMETRIC"
    assert mixed["bits_range"]["weights"]["min"] == 4 and mixed["bits_range"]["weights"]["max"] == 8
    assert classifier(common + ["-n", "evaluated", "--evaluate", "--resume-from",
                                os.path.join(mixed_dir, "checkpoint.pth.tar"), "--compress", str(path)]) == 0
    evaluated = json.load(open(glob.glob(os.path.join(tmp_path, "evaluated___*", "summary.json"))[0]))
    assert evaluated["hparams"]["epochs"] == 0 and evaluated["epochs_run"] == 0
