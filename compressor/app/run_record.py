"""One record per run, with the same keys for every kind of run (FP32, QAT, low-bit, KD, post-training).

Why one schema: TensorBoard's HParams dashboard reads ONE experiment description per logdir
(``_find_experiment_tag`` in tensorboard/plugins/hparams/backend_context.py picks the first run's and
ignores the others). When each kind of run described its own keys, a logdir with FP32, QAT and PTQ
runs showed only the keys and metrics of whichever run TensorBoard met first (issue 16: the training
runs' lr, epochs and ``Performance/Test/Top1`` were missing). Every run now writes the same
complete description: whichever TensorBoard picks, it lists every run's own values.

A key that does not apply to a run holds a value of the key's own type ("n/a", 0 or 32 bits): a
string in one run and a number in another would make the column's type depend on which run
TensorBoard happened to pick. Metrics that do not apply are not written (an empty cell, not a
made-up number). The same record goes into summary.json (``hparams``, ``metrics``), which is what
``compressor compare`` reads.
"""

import os
import time

from compressor.app.common import resolved_seed
from compressor.app.summary import compute_summary

# hyper-parameter -> its value when it does not apply to a run (which also fixes its type)
HPARAMS = {
    "kind": "n/a",  # fp32 | qat | low-bit | kd | ptq (kd with a quantizer: "qat+kd", "low-bit+kd")
    "arch": "n/a",
    "dataset": "n/a",
    "recipe": "none",
    "quantizer": "none",
    "method": "fp32",  # linear mode, or the low-bit weight method (DOREFA, WRPN, PACT, ...)
    "bits_weights": 32,
    "bits_activations": 32,
    "clip_acts": "n/a",
    "per_channel_wts": "n/a",
    "lr": 0.0,
    "epochs": 0,
    "batch_size": 0,
    "seed": "none",
    "teacher": "none",
    "calibration_images": 0,
}

# metric tags (scalars in each run's own event file); the HParams table shows each run's last value
METRICS = (
    "Performance/Test/Top1",  # post-training: the quantized model's
    "Performance/Test/Top5",
    "Performance/Test/Loss",
    "Performance/Validation/BestTop1",
    "Performance/FP32/Top1",  # post-training: the FP32 model it started from
    "Model/Size_MiB",
    "Model/SizeVsFP32",  # quantized size / FP32 size
    "Export/Agreement",  # % of test images where the exported model agrees with the simulation
)

LINEAR = ("QuantAwareTrainRangeLinearQuantizer", "PostTrainLinearQuantizer")


def complete(values):
    """``values`` on the full schema: every key present, in schema order, with its schema type."""
    unknown = set(values) - set(HPARAMS)
    if unknown:
        raise KeyError(f"not in the HParams schema: {sorted(unknown)}")
    out = {}
    for key, default in HPARAMS.items():
        value = values.get(key)
        if value is None:
            value = default
        out[key] = type(default)(value) if not isinstance(default, str) else str(value)
    return out


def _quantizer_spec(recipe_data):
    specs = list(((recipe_data or {}).get("quantizers") or {}).values())
    return specs[0] if specs else None


def _kind(quantizer_class, has_kd, trained=False):
    """What the run did: a recipe's post-training quantizer applied by a policy during training is QAT."""
    kind = "fp32" if quantizer_class is None else (
        "ptq" if quantizer_class == "PostTrainLinearQuantizer" and not trained else
        "qat" if quantizer_class in LINEAR else "low-bit")
    if has_kd:
        kind = "kd" if kind == "fp32" else f"{kind}+kd"
    return kind


def _method(spec):
    if spec is None:
        return None
    if spec["class"] in LINEAR:
        mode = spec.get("mode") or "SYMMETRIC"
        if isinstance(mode, dict):  # {activations: ..., weights: ...}: one text, not a Python dict
            return "/".join(f"{k[0].upper()}:{str(v).upper()}" for k, v in sorted(mode.items()))
        return str(mode).upper()
    return str(spec.get("weights_method") or spec["class"].replace("Quantizer", "")).upper()


def _per_channel(spec):
    if spec is None or "per_channel_wts" not in spec and spec["class"] not in LINEAR:
        return None
    return "true" if spec.get("per_channel_wts") else "false"


def _size_metrics(size_bits):
    if not size_bits:
        return {}
    return {"Model/Size_MiB": size_bits["quantized"] / 8 / 2 ** 20,
            "Model/SizeVsFP32": size_bits["quantized"] / size_bits["fp32"]}


def _export_metric(export):
    found = [t["agreement"] for t in (export or {}).values() if isinstance(t, dict) and "agreement" in t]
    return {"Export/Agreement": min(found)} if found else {}


def _add_compute(summary, model, sample):
    if model is not None and sample is not None:
        summary["compute"] = compute_summary(model, sample, only_enabled=True)


def training_record(args, dataset, recipe_data, bits, summary, model=None, sample=None):
    """(hparams, metrics) of a compress_classifier run, from its arguments, recipe data and summary dict.

    With ``model``, an unquantized run's size (all parameters at 32 bits) goes into the summary, and
    with ``sample`` (one input) its per-layer compute (MACs, bits, BOPs, memory: ``compute``)."""
    if model is not None and "model_size_bits" not in summary:
        fp32 = 32 * sum(p.numel() for p in model.parameters())
        summary["model_size_bits"] = {"quantized": fp32, "fp32": fp32}
    _add_compute(summary, model, sample)
    spec = _quantizer_spec(recipe_data)
    if spec is not None and summary.get("quantized") is False:
        spec = None  # the recipe's quantizer never acted (its policy starts after the last epoch): an FP32 run
    distillers = list(((recipe_data or {}).get("distillers") or {}).values())
    teacher = None
    if distillers:  # "arch:run" of the teacher checkpoint's run folder
        spec_kd = distillers[0]
        folder = os.path.basename(os.path.dirname(os.path.abspath(str(spec_kd.get("teacher_checkpoint")))))
        teacher = f"{spec_kd.get('teacher_arch') or args.arch}:{folder.split('___')[0]}"
    hparams = {
        "kind": _kind(spec["class"] if spec else None, bool(distillers), trained=summary.get("epochs_run", 0) > 0),
        "arch": args.arch, "dataset": dataset,
        "recipe": os.path.basename(args.compress) if args.compress else None,
        "quantizer": spec["class"] if spec else None, "method": _method(spec),
        "bits_weights": bits[0], "bits_activations": bits[1],
        "clip_acts": spec.get("clip_acts") if spec else None, "per_channel_wts": _per_channel(spec),
        "lr": args.lr, "epochs": summary.get("epochs_run", args.epochs), "batch_size": args.batch_size,
        "seed": resolved_seed(args), "teacher": teacher,
    }
    test = summary["test"]
    metrics = {"Performance/Test/Top1": test["top1"], "Performance/Test/Top5": test["top5"],
               "Performance/Test/Loss": test["loss"]}
    if summary.get("best"):
        metrics["Performance/Validation/BestTop1"] = summary["best"]["top1"]
    metrics.update(_size_metrics(summary.get("model_size_bits")))
    metrics.update(_export_metric(summary.get("export")))
    return complete(hparams), metrics


def ptq_record(args, dataset, config, summary, quantizer=None, sample=None):
    """(hparams, metrics) of a post-training run, from its arguments, quantizer config and summary dict
    (``quantizer``, prepared: its model size, and with ``sample`` its per-layer compute, go into the summary)."""
    if quantizer is not None and quantizer.prepared is not None:
        summary["model_size_bits"] = {"quantized": quantizer.model_size_bits(), "fp32": quantizer.fp32_bits}
        _add_compute(summary, quantizer.prepared, sample)
    spec = {"class": "PostTrainLinearQuantizer", **config}
    hparams = {
        "kind": "ptq", "arch": args.arch, "dataset": dataset,
        "recipe": os.path.basename(args.compress) if args.compress else "--qe flags",
        "quantizer": "PostTrainLinearQuantizer", "method": _method(spec),
        "bits_weights": config.get("bits_weights") or config.get("bits_parameters") or 32,
        "bits_activations": config.get("bits_activations") or 32,
        "clip_acts": str(config.get("clip_acts") or "NONE").upper(), "per_channel_wts": _per_channel(spec),
        "epochs": 0, "batch_size": args.batch_size, "seed": resolved_seed(args),
        "calibration_images": summary.get("calibration_images", 0),
    }
    quant = summary["quantized"]
    metrics = {"Performance/Test/Top1": quant["top1"], "Performance/Test/Top5": quant["top5"],
               "Performance/Test/Loss": quant["loss"], "Performance/FP32/Top1": summary["fp32"]["top1"]}
    metrics.update(_size_metrics(summary.get("model_size_bits")))
    metrics.update(_export_metric(summary.get("export")))
    return complete(hparams), metrics


def publish(run_dir, summary, record, step=0):
    """Write summary.json (with the record and the wall time) and the HParams record of the run.

    ``record`` is (hparams, metrics) from ``training_record``/``ptq_record``."""
    hparams, metrics = record
    summary["wall_time_s"] = round(time.time() - run_dir.started, 3)
    summary["hparams"], summary["metrics"] = hparams, metrics
    run_dir.write_json("summary.json", summary)
    run_dir.scalars({k: v for k, v in metrics.items() if k not in run_dir.written_tags}, step)
    run_dir.hparams(hparams, {tag: metrics.get(tag, 0.0) for tag in METRICS})
    return summary
