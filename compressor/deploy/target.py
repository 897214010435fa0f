"""Which integer format is exact and fast on the CPU that will run the model.

x86 CPUs multiply u8 x s8 in one of two ways. With AVX2 only, ``vpmaddubsw`` adds pairs of products
in 16 bits and saturates when activations use all 8 bits (measured on digits: 98.1 % agreement,
logits off by up to 8); u8 x u8 kernels do not saturate but are slower (resnet18 batch 8 on an AVX2
EPYC: 425 ms u8u8 vs 393 ms u8s8). With VNNI (``vpdpbusd``, AVX-512 VNNI or AVX-VNNI) or AMX the
products accumulate in 32 bits: u8 x s8 is exact at 8 bits and the fast path (resnet18 batch 8 on an
AVX-512 VNNI EPYC: 40 ms u8s8 vs 100 ms u8u8). ARM's dot-product instructions (``asimddp``)
accumulate in 32 bits too.

Everything here is a pure function of the CPU flags (tested by feeding flag sets); ``cpu_flags``
is the only part that reads the machine.
"""

import platform
from dataclasses import dataclass

from compressor.core.errors import UsageError

TARGETS = ("avx2", "vnni", "amx", "arm")  # what --int8-target names, besides auto
WIDE_ACCUMULATION = ("vnni", "amx", "arm")  # u8 x s8 accumulates in 32 bits: int8 weights are exact at 8 bits


def cpu_flags(path="/proc/cpuinfo"):
    """The CPU's feature flags (x86 'flags', ARM 'Features'), and the machine name."""
    flags = set()
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    flags.update(value.split())
    except OSError:
        pass
    return flags, platform.machine()


def detect_capability(flags, machine=""):
    """The integer capability of a CPU with ``flags``: 'amx', 'vnni', 'arm', 'avx2' or 'generic'."""
    flags = set(flags)
    if "amx_int8" in flags:
        return "amx"
    if flags & {"avx512_vnni", "avx_vnni"}:
        return "vnni"
    if "asimddp" in flags:
        return "arm"
    if "avx2" in flags:
        return "avx2"
    return "generic"  # no 8-bit dot product known to accumulate in 32 bits: the exact u8u8 format


def resolve_target(requested="auto", flags=None, machine=None):
    """``--int8-target`` -> (target, how it was chosen)."""
    if requested not in ("auto",) + TARGETS:
        raise UsageError(f"--int8-target {requested!r}: expected auto or one of {', '.join(TARGETS)}")
    if requested != "auto":
        return requested, "named by --int8-target"
    if flags is None:
        flags, machine = cpu_flags()
    return detect_capability(flags, machine or ""), "detected from this CPU's flags (--int8-target auto)"


@dataclass(frozen=True)
class Int8Format:
    target: str
    weights: str  # 'int8' (u8s8, the fast kernels) or 'uint8' (u8u8)
    engine: str  # PyTorch quantized engine for --qe-convert-pytorch
    exact: bool  # no saturation on the target for these activation bits
    reason: str

    @property
    def name(self):
        return "u8s8" if self.weights == "int8" else "u8u8"


def choose_format(target, activation_bits):
    """The format for ``target`` given the widest activation quantizer (bits) of the model."""
    if target in WIDE_ACCUMULATION:
        engine = "qnnpack" if target == "arm" else "x86"
        return Int8Format(target, "int8", engine, True,
                          f"{target}: u8 x s8 accumulates in 32 bits, so int8 weights with {activation_bits}-bit "
                          f"activations are exact and take the fast integer kernels")
    if activation_bits <= 7:
        return Int8Format(target, "int8", "x86", True,
                          f"{target}: activations at {activation_bits} bits keep u8 x s8 pair sums within 16 bits "
                          f"(2 x 127 x 128 < 32768), so the fast int8-weight kernels are exact")
    return Int8Format(target, "uint8", "qnnpack", True,
                      f"{target}: with 8-bit activations the fast u8 x s8 kernels saturate their 16-bit pair sums "
                      f"(98.1 % agreement measured), so the exact format was chosen: uint8 weights (u8u8, "
                      f"about 1.1x slower); simulate with 7-bit activations (--qe-bits-acts 7) for the fast one")


def format_here(activation_bits=8):
    """The exact format for THIS CPU (what ``--int8-target auto`` picks): onnxruntime and PyTorch compute with
    this CPU's kernels, so an agreement measured here is exact only in this format."""
    return choose_format(resolve_target("auto")[0], activation_bits)
