"""post_train_quant.py --sensitivity / --target-size-ratio: per-layer sensitivity, then a mixed-precision recipe.

Sensitivity: each conv/linear layer is quantized alone (weights at each candidate width, and
optionally its output activations), and separately everything *but* it at the recipe's settings;
each configuration is scored on a held-out slice of the training split (the images right after the
calibration ones: never the test set, never the calibration images) by top-1 and by the SQNR of the
logits against FP32. Activation statistics are collected once and reused by every configuration, so
one configuration costs a model preparation and one pass over the slice (simplenet on digits: ~0.3 s).
The analysis rounds to nearest (AdaRound and bias correction are left out: minutes per configuration).

Mixed precision: the logit noise of "layer alone at b bits" (10^(-SQNR/10)) is the cost of giving that
layer b bits; an exact knapsack (``compressor.quantization.mixed_precision``) picks the widths with the
least total noise within the budget, and the result is written as a recipe with one override per layer,
for post_train_quant.py (PostTrainLinearQuantizer) and compress_classifier.py (QAT quantizer, calibrated
at epoch 0) alike.
"""

import copy
import csv
import io
import logging
import math
import os
import time

import torch
import yaml
from tabulate import tabulate
from torch.utils.data import DataLoader, Subset

from compressor.app.common import number, positive_int
from compressor.core.errors import RecipeError, UsageError
from compressor.core.io import atomic_write, atomic_write_text
from compressor.core.progress import progress
from compressor.core.safe_yaml import load_yaml, read_text
from compressor.data.loaders import load_calibration_data
from compressor.quantization.collect import collect_stats
from compressor.quantization.graph import sites as graph
from compressor.quantization.linear.ptq import PostTrainLinearQuantizer, PTQConfig
from compressor.quantization.linear.refine import REFINE_KEYS
from compressor.quantization.mixed_precision import allocate_bits, noise_from_sqnr, total_bits
from compressor.recipe.build import read_recipe

log = logging.getLogger("compressor")

FP_WEIGHT_BITS = 32
_ANALYSIS_DROPS = ("overrides", "model_activation_stats", *REFINE_KEYS)


def _bit_list(flag, allow_empty=False):
    def parse(text):
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            values = None
        if values is None or (not values and not allow_empty) or any(not 2 <= v <= 16 for v in values):
            raise UsageError(f"{flag} expects comma-separated bit widths in 2..16, got {text!r}")
        return sorted(set(values))

    return parse


def add_sensitivity_arguments(parser):
    g = parser.add_argument_group("per-layer sensitivity and automatic mixed precision")
    g.add_argument(
        "--sensitivity",
        action="store_true",
        help="quantize each layer alone (and everything but it), score each on a held-out training slice; "
        "writes sensitivity.yaml/.csv/.png in the run folder (no PTQ run)",
    )
    g.add_argument(
        "--sensitivity-bits",
        default="2,3,4,6,8",
        metavar="B,B,...",
        help="candidate weight widths (default: 2,3,4,6,8)",
    )
    g.add_argument(
        "--sensitivity-act-bits",
        default="",
        metavar="B,B,...",
        help="candidate activation widths to analyse too (default: none)",
    )
    g.add_argument(
        "--holdout-size",
        type=positive_int("--holdout-size"),
        default=512,
        help="training images after the calibration ones that score each configuration (default: 512)",
    )
    g.add_argument(
        "--sensitivity-from",
        metavar="YAML",
        default=None,
        help="reuse an earlier run's sensitivity.yaml instead of measuring again",
    )
    budget = g.add_mutually_exclusive_group()
    budget.add_argument(
        "--target-size-ratio",
        type=number("--target-size-ratio", expected="a ratio in (0, 1]", lo=0, lo_open=True, hi=1),
        default=None,
        help="mixed precision: weight bits at most this fraction of the FP32 weights' (0.125 = W4)",
    )
    budget.add_argument(
        "--target-avg-bits",
        type=number("--target-avg-bits", expected="bits in (0, 32]", lo=0, lo_open=True, hi=32),
        default=None,
        help="mixed precision: at most this many bits per weight on average",
    )
    g.add_argument(
        "--mp-recipe",
        metavar="PATH",
        default=None,
        help="where to write the mixed-precision recipe (default: mixed_precision.yaml in the run folder)",
    )


def wants_analysis(args):
    return bool(
        getattr(args, "sensitivity", False)
        or getattr(args, "target_size_ratio", None) is not None
        or getattr(args, "target_avg_bits", None) is not None
    )


# -- data -----------------------------------------------------------------------------------------
def analysis_data(args, dataset, shape):
    """(calibration loader, held-out images, held-out labels): consecutive, disjoint training-split slices."""
    n_cal = args.calibration_size
    full = load_calibration_data(dataset, args.data, shape, args.batch_size, 10**9, args.workers, args.validation_split)
    total = len(full.dataset)
    n_cal = int(round(total * n_cal)) if n_cal <= 1 else int(n_cal)
    if n_cal + args.holdout_size > total:
        raise UsageError(
            f"--calibration-size {n_cal} + --holdout-size {args.holdout_size} exceed the {total} training images"
        )
    indices = full.dataset.indices
    calib = Subset(full.dataset.dataset, indices[:n_cal])
    held = Subset(full.dataset.dataset, indices[n_cal : n_cal + args.holdout_size])
    xs, ys = zip(*(held[i] for i in range(len(held))))
    return (DataLoader(calib, batch_size=args.batch_size, shuffle=False), torch.stack(xs), torch.as_tensor(ys))


# -- measuring --------------------------------------------------------------------------------------
class _Scorer:
    """Scores quantizer configurations on the held-out slice, with statistics collected once."""

    def __init__(self, model, base, calib_loader, images, labels, device):
        self.model, self.images, self.labels, self.device = model, images.to(device), labels.to(device), device
        probe = PostTrainLinearQuantizer(model, **base)
        probe.prepare_model()
        self.layers = [
            (n, m.weight.numel()) for n, m in graph.weight_modules(probe.model) if isinstance(m, graph.LAYER_TYPES)
        ]
        # the prepared graph shares its layers (and their weight quantizers) with probe.model: switched off,
        # probe.model is the folded FP32 model: statistics and reference logits come from it
        probe.set_state(False, False)
        self.records, self.hists = collect_stats(
            probe.model,
            calib_loader,
            device,
            histograms=probe.needs_histograms(),
            quantize_inputs=probe.config["quantize_inputs"],
        )
        self.reference = self._logits(probe.model.eval())
        self.fp32_top1 = self._top1(self.reference)

    @torch.no_grad()
    def _logits(self, model):
        return torch.cat([model(self.images[i : i + 256]) for i in range(0, self.images.shape[0], 256)]).float()

    def _top1(self, logits):
        return 100.0 * (logits.argmax(1) == self.labels).float().mean().item()

    def score(self, config):
        quantizer = PostTrainLinearQuantizer(self.model, **config)
        gm = quantizer.prepare_model().to(self.device)
        quantizer.apply_stats(self.records, self.hists)
        logits = self._logits(gm.eval())
        noise = (logits.double() - self.reference.double()).pow(2).sum().item()
        signal = self.reference.double().pow(2).sum().item()
        sqnr = math.inf if noise == 0 else 10 * math.log10(max(signal, 1e-30) / noise)
        return {"top1": round(self._top1(logits), 3), "sqnr_db": round(sqnr, 3)}


def analysis_base(config):
    """The recipe's quantizer settings without overrides, stats source and refinement (rounding to nearest)."""
    return {k: v for k, v in config.items() if k not in _ANALYSIS_DROPS}


def measure_sensitivity(model, config, calib_loader, images, labels, w_bits, a_bits, device):
    base = analysis_base(config)
    overrides = dict(config.get("overrides") or {})
    fp = {**base, "bits_activations": None, "bits_parameters": None, "bits_weights": None}
    scorer = _Scorer(model, base, calib_loader, images, labels, device)
    started = time.perf_counter()
    table = {
        "fp32_top1": round(scorer.fp32_top1, 3),
        "all_quantized": scorer.score({**base, "overrides": overrides}),
        "layers": {},
    }
    for name, params in progress(scorer.layers, "sensitivity"):  # a bar with the time left, on a terminal
        entry = {"params": params, "weights": {}, "activations": {}}
        for b in w_bits:
            entry["weights"][b] = scorer.score({**fp, "overrides": {name: {"bits_weights": b}}})
        for a in a_bits:
            entry["activations"][a] = scorer.score({**fp, "overrides": {name: {"bits_activations": a}}})
        others = {k: v for k, v in overrides.items() if k != name}
        entry["all_but"] = scorer.score(
            {**base, "overrides": {name: {"bits_weights": None, "bits_activations": None}, **others}}
        )
        table["layers"][name] = entry
        log.info("sensitivity: %s done (%.0f s so far)", name, time.perf_counter() - started)
    table["seconds"] = round(time.perf_counter() - started, 1)
    return table


# -- writing -----------------------------------------------------------------------------------------
def sensitivity_rows(table):
    rows = []
    for name, entry in table["layers"].items():
        for kind in ("weights", "activations"):
            for b, s in entry[kind].items():
                rows.append([name, entry["params"], kind, b, s["top1"], s["sqnr_db"]])
        rows.append([name, entry["params"], "all_but", "", entry["all_but"]["top1"], entry["all_but"]["sqnr_db"]])
    return rows


def log_table(table, w_bits):
    headers = ["layer", "params"] + [f"W{b} top1 / SQNR" for b in w_bits] + ["all but it: top1 / SQNR"]
    lines = []
    for name, entry in table["layers"].items():
        cells = [f"{entry['weights'][b]['top1']:.1f} / {entry['weights'][b]['sqnr_db']:.1f}" for b in w_bits]
        lines.append(
            [name, entry["params"], *cells, f"{entry['all_but']['top1']:.1f} / {entry['all_but']['sqnr_db']:.1f}"]
        )
    log.info(
        "Per-layer sensitivity on %d held-out training images (FP32 top-1 %.2f; everything quantized: top-1 %.2f, "
        "logit SQNR %.1f dB):\n%s",
        table["holdout_images"],
        table["fp32_top1"],
        table["all_quantized"]["top1"],
        table["all_quantized"]["sqnr_db"],
        tabulate(lines, headers=headers),
    )


def write_sensitivity(run_dir, table, w_bits):
    text = yaml.safe_dump(table, sort_keys=False)
    atomic_write_text(run_dir.file("sensitivity.yaml"), text)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["layer", "params", "kind", "bits", "top1", "sqnr_db"])
    writer.writerows(sensitivity_rows(table))
    atomic_write_text(run_dir.file("sensitivity.csv"), buf.getvalue())
    figure = plot_sensitivity(table, w_bits)
    atomic_write(run_dir.file("sensitivity.png"), lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    if run_dir.writer is not None:
        run_dir.writer.add_figure("PTQ/Sensitivity", figure, 0)
        run_dir.writer.flush()


def plot_sensitivity(table, w_bits):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table["layers"])
    x = range(len(names))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 0.45 * len(names) + 2), 7), sharex=True)
    for b in w_bits:
        top.plot(x, [table["layers"][n]["weights"][b]["sqnr_db"] for n in names], marker="o", label=f"W{b} alone")
    top.set_ylabel("logit SQNR (dB)")
    top.set_title("Layer quantized alone (higher = less sensitive)")
    top.legend(fontsize=8, ncol=len(w_bits), loc="upper center", bbox_to_anchor=(0.5, -0.04))
    top.grid(alpha=0.3)
    base = table["all_quantized"]
    sqnr_gain = [table["layers"][n]["all_but"]["sqnr_db"] - base["sqnr_db"] for n in names]
    top1_gain = [table["layers"][n]["all_but"]["top1"] - base["top1"] for n in names]
    bottom.bar(x, sqnr_gain, color="tab:orange", label="logit SQNR gain (dB)")
    bottom.set_ylabel("logit SQNR gain (dB)")
    twin = bottom.twinx()
    twin.plot(x, top1_gain, color="tab:blue", marker="s", linestyle="none", label="top-1 gain (points)")
    twin.set_ylabel("top-1 gain (points)")
    bottom.set_title(
        f"Everything quantized but this layer, vs everything quantized "
        f"(top-1 {base['top1']:.2f}, {base['sqnr_db']:.1f} dB)"
    )
    bottom.set_xticks(list(x))
    bottom.set_xticklabels(names, rotation=70, ha="right", fontsize=8)
    bottom.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def load_sensitivity(path):
    """The table of ``--sensitivity-from``: a bounded regular file (a FIFO once hung the run), read with the
    project's safe YAML reader, whose layers each carry their parameter count and a number per bit width."""
    try:
        table, _ = load_yaml(read_text(path, "sensitivity table"), path)
    except RecipeError as exc:
        raise UsageError(f"--sensitivity-from {exc}") from None
    if not isinstance(table, dict) or not isinstance(table.get("layers"), dict) or not table["layers"]:
        raise UsageError(f"--sensitivity-from {path}: not a sensitivity.yaml (no 'layers' mapping with layers)")
    for name, entry in table["layers"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("params"), int) or entry["params"] < 0:
            raise UsageError(f"--sensitivity-from {path}: layers.{name}: expected a mapping with 'params' (a count)")
    return table


# -- mixed precision ------------------------------------------------------------------------------
def choose_bits(table, size_ratio=None, avg_bits=None):
    """({layer: bits}, budget in bits) from the sensitivity table under the weight-size budget."""
    sizes = {name: entry["params"] for name, entry in table["layers"].items()}
    noise = {
        name: {int(b): noise_from_sqnr(s["sqnr_db"]) for b, s in entry["weights"].items()}
        for name, entry in table["layers"].items()
    }
    n = sum(sizes.values())
    budget = size_ratio * FP_WEIGHT_BITS * n if size_ratio is not None else avg_bits * n
    try:
        return allocate_bits(sizes, noise, budget), budget
    except ValueError as exc:
        flag = "--target-size-ratio" if size_ratio is not None else "--target-avg-bits"
        raise UsageError(f"{flag}: {exc}; add smaller widths to --sensitivity-bits or raise the budget") from None


def mixed_precision_recipe(config, bits, header):
    """Recipe text: a PostTrainLinearQuantizer and a QAT quantizer (calibrated at epoch 0) with the chosen widths."""
    ptq = {k: v for k, v in config.items() if k not in ("overrides", "model_activation_stats")}
    base_overrides = dict(config.get("overrides") or {})
    overrides = {name: {**(base_overrides.get(name) or {}), "bits_weights": b} for name, b in bits.items()}
    overrides.update({k: v for k, v in base_overrides.items() if k not in overrides})
    defaults = {k: spec.default for k, spec in PTQConfig.specs().items()}
    setting = lambda key: config.get(key, defaults[key])  # noqa: E731
    qat_overrides = {name: {"bits_weights": b} for name, b in bits.items()}
    recipe = {
        "version": 1,
        "quantizers": {
            "post_train_quantizer": {"class": "PostTrainLinearQuantizer", **ptq, "overrides": overrides},
            "linear_quantizer": {
                "class": "QuantAwareTrainRangeLinearQuantizer",
                "bits_activations": setting("bits_activations"),
                "bits_weights": 8,
                "mode": setting("mode"),
                "per_channel_wts": setting("per_channel_wts"),
                "overrides": qat_overrides,
            },
        },
        "calibrators": {
            "act_calibration": {
                "class": "ActivationCalibrator",
                "num_batches": 8,
                "clip_acts": str(setting("clip_acts")).upper(),
                "clip_half_range": setting("clip_half_range"),
            }
        },
        "policies": [
            {
                "quantizer": {"instance_name": "linear_quantizer"},
                "starting_epoch": 0,
                "ending_epoch": 200,
                "frequency": 1,
            },
            {"calibrator": {"instance_name": "act_calibration"}, "epochs": [0]},
        ],
    }
    recipe = copy.deepcopy(recipe)
    read_recipe(recipe, file="<generated mixed-precision recipe>")  # what we write must validate
    return header + yaml.dump(recipe, Dumper=_PlainDumper, sort_keys=False)


class _PlainDumper(yaml.SafeDumper):
    """Safe YAML without anchors/aliases: a recipe a person reads and edits."""

    def ignore_aliases(self, data):
        return True


def _header(args, table, bits, budget, sizes):
    n = sum(sizes.values())
    used = total_bits(sizes, bits)
    lines = [
        "Mixed precision chosen by post_train_quant.py from per-layer sensitivity (exact knapsack on logit noise).",
        f"budget: {budget / n:.3f} bits/weight ({budget / (FP_WEIGHT_BITS * n):.4f} of FP32); "
        f"chosen: {used / n:.3f} bits/weight ({used / (FP_WEIGHT_BITS * n):.4f} of FP32), {n} weights",
        f"sensitivity: {args.sensitivity_from or 'measured in this run'} on {table.get('holdout_images')} held-out "
        "training images",
        "",
        "  PTQ:  python apps/post_train_quant.py -a ARCH --dataset DATASET --resume-from FP32_CKPT "
        "--compress THIS_FILE",
        "  QAT:  python apps/compress_classifier.py -a ARCH --dataset DATASET --exp-load-weights-from FP32_CKPT \\",
        "            --epochs N --lr LR --compress THIS_FILE   (the QAT quantizer, ranges calibrated at epoch 0)",
        "",
        "layer: bits (weights)",
    ] + [f"  {name}: {b} ({sizes[name]} weights)" for name, b in bits.items()]
    return "".join(f"# {line}\n".replace("# \n", "#\n") for line in lines)


# -- the app entry ---------------------------------------------------------------------------------
def refuse_overwriting_inputs(args):
    """--mp-recipe must not name one of the run's inputs: it would be replaced by the generated recipe (a recipe
    given as --compress, a checkpoint, a sensitivity table)."""
    if not getattr(args, "mp_recipe", None):
        return
    target = os.path.realpath(args.mp_recipe)
    for flag in ("compress", "resume_from", "exp_load_weights_from", "sensitivity_from"):
        source = getattr(args, flag, None)
        if source and os.path.realpath(source) == target:
            raise UsageError(f"--mp-recipe {args.mp_recipe} is the --{flag.replace('_', '-')} input: writing the mixed-"
                             "precision recipe there would replace it; name another file")


def analyze(args, model, config, dataset, shape, run_dir, device):
    """Sensitivity (measured or loaded), then the mixed-precision recipe when a budget is given."""
    w_bits = _bit_list("--sensitivity-bits")(args.sensitivity_bits)
    a_bits = _bit_list("--sensitivity-act-bits", allow_empty=True)(args.sensitivity_act_bits)
    summary = {"kind": "sensitivity", "arch": args.arch, "dataset": dataset, "run_dir": run_dir.path}
    if args.sensitivity_from:
        table = load_sensitivity(args.sensitivity_from)
        layers = {name for name, m in model.named_modules() if isinstance(m, graph.LAYER_TYPES)}
        strangers = sorted(set(table["layers"]) - layers)
        if strangers:  # another arch's table silently gave a recipe for layers this model does not have
            raise UsageError(f"--sensitivity-from {args.sensitivity_from}: layers {', '.join(strangers[:5])} are not "
                             f"layers of {args.arch}: the table was measured on another model")
        w_bits = sorted(int(b) for b in next(iter(table["layers"].values()))["weights"])
    else:
        calib_loader, images, labels = analysis_data(args, dataset, shape)
        log.info(
            "Sensitivity: %d layers x weights %s%s, calibration %d images, held-out %d training images",
            len([m for _, m in graph.weight_modules(model) if isinstance(m, graph.LAYER_TYPES)]),
            w_bits,
            f" + activations {a_bits}" if a_bits else "",
            len(calib_loader.dataset),
            images.shape[0],
        )
        table = measure_sensitivity(model.eval(), config, calib_loader, images, labels, w_bits, a_bits, device)
        table = {
            "arch": args.arch,
            "dataset": dataset,
            "holdout_images": int(images.shape[0]),
            "calibration_images": len(calib_loader.dataset),
            "quantizer": analysis_base(config),
            **table,
        }
        write_sensitivity(run_dir, table, w_bits)
        log.info(
            "Wrote %s, sensitivity.csv and sensitivity.png (%.1f s)", run_dir.file("sensitivity.yaml"), table["seconds"]
        )
    log_table(table, w_bits)
    summary["sensitivity"] = args.sensitivity_from or run_dir.file("sensitivity.yaml")
    if args.target_size_ratio is not None or args.target_avg_bits is not None:
        bits, budget = choose_bits(table, args.target_size_ratio, args.target_avg_bits)
        sizes = {name: entry["params"] for name, entry in table["layers"].items()}
        text = mixed_precision_recipe(config, bits, _header(args, table, bits, budget, sizes))
        path = args.mp_recipe or run_dir.file("mixed_precision.yaml")
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_text(path, text)
        n = sum(sizes.values())
        log.info(
            "Mixed precision (%.3f bits/weight, budget %.3f): %s\nRecipe written to %s",
            total_bits(sizes, bits) / n,
            budget / n,
            ", ".join(f"{k}={v}" for k, v in bits.items()),
            path,
        )
        summary.update(
            {
                "mixed_precision_recipe": path,
                "bits": bits,
                "avg_bits": total_bits(sizes, bits) / n,
                "budget_avg_bits": budget / n,
            }
        )
    run_dir.write_json("summary.json", summary)
    return summary
