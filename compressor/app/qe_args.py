"""Distiller's post-training quantization flags (--qe family) -> a PostTrainLinearQuantizer configuration."""

import argparse

import yaml

from compressor.app.common import count_or_fraction, number
from compressor.calibration.clipping import CLIP_NAMES, parse_clip
from compressor.core.errors import QeError
from compressor.quantization.linear.dynamic_clip import DYNAMIC_CLIPS
from compressor.recipe.build import read_recipe

MODES = {
    "sym": "SYMMETRIC",
    "sym_restr": "SYMMETRIC_RESTRICTED",
    "asym_s": "ASYMMETRIC_SIGNED",
    "asym_u": "ASYMMETRIC_UNSIGNED",
}


PYTORCH_BACKENDS = {"fbgemm": "x86", "qnnpack": "qnnpack"}  # Distiller's backend -> our --int8-engine
LAPQ_INIT_MODES = ("NONE", "AVG", "LAPLACE", "GAUSS", "L1", "L2", "L3")
# scipy.optimize.minimize's derivative-free methods (LAPQ's loss has no gradient); a typo was a scipy traceback
LAPQ_METHODS = ("Powell", "Nelder-Mead", "COBYLA", "COBYQA")


class _PytorchBackend(argparse.Action):
    """--qe-pytorch-backend fbgemm|qnnpack sets --int8-engine (fbgemm's successor in PyTorch is 'x86')."""

    def __call__(self, parser, namespace, value, option_string=None):
        namespace.int8_engine = PYTORCH_BACKENDS[value]
        namespace.qe_pytorch_backend = value


def add_qe_arguments(parser, with_switch=True):
    """Every flag of Distiller's post-training guide, with its short form (``--qem`` for ``--qe-mode``, ...)."""
    g = parser.add_argument_group("post-training quantization (Distiller's --qe flags)")
    # post_train_quant.py always quantizes: there the switch is accepted so Distiller's command lines run as typed
    # (without it argparse took --qe for an ambiguous prefix of the --qe-* flags and exited 2)
    g.add_argument(
        "--quantize-eval",
        "--qe",
        action="store_true",
        dest="qe",
        help="quantize the model after loading it, then evaluate it" if with_switch
        else "accepted for Distiller's command lines; this app always quantizes",
    )
    g.add_argument("--qe-mode", "--qem", choices=list(MODES), default="sym", help="quantization mode (default: sym)")
    g.add_argument(
        "--qe-mode-acts", "--qema", choices=list(MODES), default=None, help="mode of activations (default: --qe-mode)"
    )
    g.add_argument(
        "--qe-mode-wts", "--qemw", choices=list(MODES), default=None, help="mode of weights (default: --qe-mode)"
    )
    g.add_argument(
        "--qe-bits-acts",
        "--qeba",
        type=number("--qe-bits-acts", int, "0 (FP32) or 2..16", hi=16),
        default=8,
        metavar="N",
        help="activation bits, 0 = FP32 (default: 8)",
    )
    g.add_argument(
        "--qe-bits-wts",
        "--qebw",
        type=number("--qe-bits-wts", int, "0 (FP32) or 2..16", hi=16),
        default=8,
        metavar="N",
        help="weight bits, 0 = FP32 (default: 8)",
    )
    g.add_argument(
        "--qe-bits-accum",
        type=number("--qe-bits-accum", int, "an integer in [1, 64]", lo=1, hi=64),
        default=32,
        metavar="N",
        help="accumulator bits (default: 32)",
    )
    g.add_argument(
        "--qe-clip-acts",
        "--qeca",
        choices=[c.lower() for c in CLIP_NAMES],
        default="none",
        help="activation clipping (default: none); with --qe-dynamic applied to each batch",
    )
    g.add_argument(
        "--qe-clip-n-stds",
        type=number("--qe-clip-n-stds", expected="a number > 0", lo_open=True),
        default=None,
        help="with --qe-clip-acts n_std (> 0)",
    )
    g.add_argument(
        "--qe-clip-percentile",
        type=number("--qe-clip-percentile", expected="a percentile in (0, 100]", lo_open=True, hi=100),
        default=99.99,
        help="with --qe-clip-acts percentile",
    )
    g.add_argument("--qe-no-clip-layers", "--qencl", nargs="+", default=[], metavar="NAME", help="layers not clipped")
    g.add_argument("--qe-no-quant-layers", "--qenql", nargs="+", default=[], metavar="NAME", help="layers kept in FP32")
    g.add_argument("--qe-per-channel", "--qepc", action="store_true", help="per-channel weight scales")
    g.add_argument(
        "--qe-scale-approx-bits",
        "--qesab",
        type=number("--qe-scale-approx-bits", int, "an integer in [1, 32]", lo=1, hi=32),
        default=None,
        metavar="M",
        help="approximate scales with M-bit integer multipliers",
    )
    g.add_argument(
        "--qe-integer-arithmetic",
        action="store_true",
        default=None,
        help="evaluate the quantized model in the integer runtime's arithmetic (saturating accumulator), ~3.5x the "
        "FP32 cost, rather than in float fake quantization (~1.1x); the export's agreement check always uses it",
    )
    g.add_argument(
        "--qe-save-fp-weights",
        action="store_true",
        help="accepted for Distiller compatibility: quantized checkpoints always keep the FP32 weights",
    )
    g.add_argument(
        "--qe-convert-pytorch",
        "--qept",
        action="store_true",
        help="also convert to PyTorch quantized modules (torch.ao.nn.quantized) and save "
        "quantized_int8.pth.tar, checked against the simulation on the test split",
    )
    g.add_argument(
        "--qe-pytorch-backend",
        choices=list(PYTORCH_BACKENDS),
        action=_PytorchBackend,
        default=None,
        help="with --qe-convert-pytorch: fbgemm (our --int8-engine x86) or qnnpack",
    )
    g.add_argument(
        "--qe-lapq",
        action="store_true",
        help="optimize the activation clipping values jointly on the calibration loss (LAPQ)",
    )
    stats = g.add_mutually_exclusive_group()
    stats.add_argument("--qe-stats-file", default=None, metavar="PATH", help="activation stats YAML")
    stats.add_argument("--qe-dynamic", action="store_true", help="online ranges from each batch (no stats)")
    stats.add_argument(
        "--qe-calibration",
        type=count_or_fraction("--qe-calibration"),
        default=None,
        metavar="FRACTION",
        help="collect stats on this fraction of the training split",
    )
    stats.add_argument(
        "--qe-config-file",
        default=None,
        metavar="PATH",
        help="YAML with a PostTrainLinearQuantizer section (overrides the other --qe flags)",
    )
    add_lapq_arguments(parser)
    return g


def add_lapq_arguments(parser):
    """Distiller's LAPQ flags (ptq_coordinate_search.add_coordinate_search_args)."""
    g = parser.add_argument_group("LAPQ (with --qe-lapq)")
    g.add_argument("--lapq-maxiter", type=int, default=None, help="iterations of the search (default: 2)")
    g.add_argument("--lapq-maxfev", type=int, default=None, help="loss evaluations at most")
    g.add_argument("--lapq-method", default="Powell", choices=LAPQ_METHODS,
                   help="scipy.optimize.minimize method (default: Powell)")
    g.add_argument("--lapq-basinhopping", "--lapq-bh", action="store_true", help="accepted; not supported (refused)")
    g.add_argument("--lapq-basinhopping-niter", "--lapq-bh-niter", type=int, default=100)
    g.add_argument(
        "--lapq-init-mode",
        type=str.upper,
        choices=LAPQ_INIT_MODES,
        default="NONE",
        help="initial clipping: a clip method or the best Lp-norm clipping per layer (default: NONE)",
    )
    g.add_argument("--lapq-init-method", default="Powell", help="minimizer of the L1/L2/L3 initialisation")
    g.add_argument(
        "--lapq-eval-size",
        type=number("--lapq-eval-size", float, "a fraction in (0, 1]", lo=0.0, hi=1.0, lo_open=True),
        default=1.0,
        help="fraction of the calibration images the loss is measured on (default: 1)",
    )
    g.add_argument(
        "--lapq-eval-memoize-dataloader",
        action="store_true",
        help="accepted: the loss images are always held in memory",
    )
    g.add_argument(
        "--lapq-search-clipping", action="store_true", help="accepted: the search is always over clipping values"
    )


def _bits(value, flag):
    if value == 0:
        return None
    if not 2 <= value <= 16:
        raise QeError(f"{flag} expects 0 (FP32) or 2..16, got {value}")
    return value


def ptq_config_in(path, flag, error=QeError):
    """The arguments of the one PostTrainLinearQuantizer in the recipe at ``path`` (validated whole)."""
    recipe = read_recipe(path)
    ptq = [
        spec
        for spec in (recipe.data.get("quantizers") or {}).values()
        if spec.get("class") == "PostTrainLinearQuantizer"
    ]
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
    if args.qe_clip_n_stds is not None and not args.qe_clip_n_stds > 0:
        raise QeError(f"--qe-clip-n-stds expects a number of standard deviations > 0, got {args.qe_clip_n_stds}")
    if args.qe_dynamic and parse_clip(clip) not in DYNAMIC_CLIPS:
        raise QeError(
            f"--qe-clip-acts {args.qe_clip_acts} needs a histogram over calibration data; with "
            f"--qe-dynamic use one of {', '.join(m.value.lower() for m in DYNAMIC_CLIPS)}"
        )
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
    if args.qe_integer_arithmetic:
        config["integer_arithmetic"] = True
    if args.qe_stats_file:
        config["model_activation_stats"] = args.qe_stats_file
    return config


def config_as_recipe(config):
    """A recipe (plain data) holding ``config`` as its quantizer, for checkpoints and --compress files."""
    return {
        "quantizers": {"post_train_quantizer": {"class": "PostTrainLinearQuantizer", **config}},
        "policies": [{"quantizer": {"instance_name": "post_train_quantizer"}, "starting_epoch": 0, "ending_epoch": 1}],
    }


def dump_config(config):
    return yaml.safe_dump(config_as_recipe(config), sort_keys=False)


__all__ = ["add_qe_arguments", "qe_config", "QeError", "config_as_recipe", "dump_config", "argparse"]
