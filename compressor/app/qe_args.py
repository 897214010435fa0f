"""Distiller's post-training quantization flags (--qe family) -> a PostTrainLinearQuantizer configuration."""

import argparse

import yaml

from compressor.calibration.clipping import CLIP_NAMES
from compressor.core.errors import QeError
from compressor.recipe.build import read_recipe

MODES = {"sym": "SYMMETRIC", "sym_restr": "SYMMETRIC_RESTRICTED", "asym_s": "ASYMMETRIC_SIGNED",
         "asym_u": "ASYMMETRIC_UNSIGNED"}


def add_qe_arguments(parser, with_switch=True):
    g = parser.add_argument_group("post-training quantization (Distiller's --qe flags)")
    if with_switch:
        g.add_argument("--qe", "--quantize-eval", action="store_true", dest="qe",
                       help="quantize the model after loading it, then evaluate it")
    g.add_argument("--qe-mode", choices=list(MODES), default="sym", help="quantization mode (default: sym)")
    g.add_argument("--qe-mode-acts", choices=list(MODES), default=None, help="mode of activations (default: --qe-mode)")
    g.add_argument("--qe-mode-wts", choices=list(MODES), default=None, help="mode of weights (default: --qe-mode)")
    g.add_argument("--qe-bits-acts", type=int, default=8, metavar="N", help="activation bits, 0 = FP32 (default: 8)")
    g.add_argument("--qe-bits-wts", type=int, default=8, metavar="N", help="weight bits, 0 = FP32 (default: 8)")
    g.add_argument("--qe-bits-accum", type=int, default=32, metavar="N", help="accumulator bits (default: 32)")
    g.add_argument("--qe-clip-acts", choices=[c.lower() for c in CLIP_NAMES], default="none",
                   help="activation clipping (default: none)")
    g.add_argument("--qe-clip-n-stds", type=float, default=None, help="with --qe-clip-acts n_std")
    g.add_argument("--qe-clip-percentile", type=float, default=99.99, help="with --qe-clip-acts percentile")
    g.add_argument("--qe-no-clip-layers", nargs="+", default=[], metavar="NAME", help="layers not clipped")
    g.add_argument("--qe-no-quant-layers", nargs="+", default=[], metavar="NAME", help="layers kept in FP32")
    g.add_argument("--qe-per-channel", action="store_true", help="per-channel weight scales")
    g.add_argument("--qe-scale-approx-bits", type=int, default=None, metavar="M",
                   help="approximate scales with M-bit integer multipliers (accepted; not simulated yet)")
    g.add_argument("--qe-save-fp-weights", action="store_true",
                   help="accepted for Distiller compatibility: quantized checkpoints always keep the FP32 weights")
    g.add_argument("--qe-convert-pytorch", action="store_true",
                   help="also convert to PyTorch quantized modules (torch.ao.nn.quantized) and save "
                        "quantized_int8.pth.tar, checked against the simulation on the test split")
    stats = g.add_mutually_exclusive_group()
    stats.add_argument("--qe-stats-file", default=None, metavar="PATH", help="activation stats YAML")
    stats.add_argument("--qe-dynamic", action="store_true", help="online ranges from each batch (no stats)")
    stats.add_argument("--qe-calibration", type=float, default=None, metavar="FRACTION",
                       help="collect stats on this fraction of the training split")
    stats.add_argument("--qe-config-file", default=None, metavar="PATH",
                       help="YAML with a PostTrainLinearQuantizer section (overrides the other --qe flags)")
    return g



def _bits(value, flag):
    if value == 0:
        return None
    if not 2 <= value <= 16:
        raise QeError(f"{flag} expects 0 (FP32) or 2..16, got {value}")
    return value


def ptq_config_in(path, flag, error=QeError):
    """The arguments of the one PostTrainLinearQuantizer in the recipe at ``path`` (validated whole)."""
    recipe = read_recipe(path)
    ptq = [spec for spec in (recipe.data.get("quantizers") or {}).values()
           if spec.get("class") == "PostTrainLinearQuantizer"]
    if len(ptq) != 1:
        raise error(f"{flag} {path}: expected one PostTrainLinearQuantizer in 'quantizers'")
    return {k: v for k, v in ptq[0].items() if k != "class"}


def qe_config(args):
    """The PostTrainLinearQuantizer arguments the --qe flags describe."""
    if args.qe_config_file:
        return ptq_config_in(args.qe_config_file, "--qe-config-file")
    overrides = {}
    for name in args.qe_no_clip_layers:
        overrides.setdefault(name, {})["clip_acts"] = "NONE"
    for name in args.qe_no_quant_layers:
        overrides.setdefault(name, {}).update(bits_activations=None, bits_weights=None)
    acts, wts = MODES[args.qe_mode_acts or args.qe_mode], MODES[args.qe_mode_wts or args.qe_mode]
    clip = args.qe_clip_acts.upper()
    if clip == "N_STD" and args.qe_clip_n_stds is None:
        raise QeError("--qe-clip-acts n_std needs --qe-clip-n-stds")
    config = {
        "bits_activations": _bits(args.qe_bits_acts, "--qe-bits-acts"),
        "bits_parameters": _bits(args.qe_bits_wts, "--qe-bits-wts"),
        "bits_accum": args.qe_bits_accum,
        "mode": acts if acts == wts else {"activations": acts, "weights": wts},
        "clip_acts": clip,
        "clip_n_stds": args.qe_clip_n_stds,
        "clip_percentile": args.qe_clip_percentile,
        "per_channel_wts": args.qe_per_channel,
        "scale_approx_mult_bits": args.qe_scale_approx_bits,
        "overrides": overrides or None,
    }
    if args.qe_stats_file:
        config["model_activation_stats"] = args.qe_stats_file
    return config


def config_as_recipe(config):
    """A recipe (plain data) holding ``config`` as its quantizer, for checkpoints and --compress files."""
    return {"quantizers": {"post_train_quantizer": {"class": "PostTrainLinearQuantizer", **config}},
            "policies": [{"quantizer": {"instance_name": "post_train_quantizer"}, "starting_epoch": 0,
                          "ending_epoch": 1}]}


def dump_config(config):
    return yaml.safe_dump(config_as_recipe(config), sort_keys=False)


__all__ = ["add_qe_arguments", "qe_config", "QeError", "config_as_recipe", "dump_config", "argparse"]
