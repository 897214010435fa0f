"""The one-pass CPU fake-quantization kernel (``csrc/fake_quant_cpu.cpp``), built on first use with PyTorch's
C++ extension machinery (``torch.utils.cpp_extension.load``: g++ and ninja) and cached by torch.

Why a kernel: the vectorized tensor ops of ``fake_quant_op`` make 7 passes over an activation and 3 temporaries
forward, the backward's ``torch.where`` on a bool mask is not vectorized, and a Python autograd.Function costs about
0.1 ms per call each way. On a 64x16x32x32 activation (AVX2, one thread; benchmarks/fake_quant_speed.py) forward and
backward take 1.57 ms against the tensor ops' 4.10 ms (torch's own kernel: 7.45 ms), and an 8-bit QAT epoch of
resnet20_cifar costs 1.18x FP32 instead of 1.32x (docs/performance.md). The values are bit-identical
(tests/unit/quantization/test_cpu_kernel.py).

It is compiled for the CPU it runs on (``-march=native``), so the build is cached per CPU model (a home directory
shared between an AVX-512 and an AVX2 machine keeps one build each). The first build takes about a minute and says
so in the log. ``COMPRESSOR_CPU_KERNEL=0`` turns it off (the vectorized ops are used); so does a failed build, with
one warning naming the cause (e.g. no C++ compiler): quantized values are the same either way, only slower.
"""

import contextlib
import hashlib
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "fake_quant_cpu.cpp"
ENV_SWITCH = "COMPRESSOR_CPU_KERNEL"
_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math"]

_lock = threading.Lock()
_state = {"ops": None, "tried": False, "error": None}


def enabled():
    """Whether the kernel may be used at all (``COMPRESSOR_CPU_KERNEL`` is not 0)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


@contextlib.contextmanager
def switched_off():
    """Inside: the kernel is not used (the tensor ops run), as with ``COMPRESSOR_CPU_KERNEL=0``; for comparisons."""
    before = os.environ.get(ENV_SWITCH)
    os.environ[ENV_SWITCH] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ[ENV_SWITCH]
        else:
            os.environ[ENV_SWITCH] = before


def _cpu_tag():
    """A short hash of this CPU's model and instruction-set flags: one cached build per kind of CPU."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        wanted = [ln for ln in lines if ln.startswith(("model name", "flags"))][:2]
    except OSError:
        import platform

        wanted = [platform.processor(), platform.machine()]
    return hashlib.sha1("\n".join(wanted).encode()).hexdigest()[:10]


def build():
    """Build (or load the cached build of) the kernel and return its ``torch.ops`` namespace; raises on failure."""
    import torch

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # its "no CUDA runtime" is not ours
    from torch.utils import cpp_extension

    name = f"compressor_fake_quant_cpu_{_cpu_tag()}"
    log.info("Loading the one-pass CPU fake-quantization kernel (compiled the first time on a CPU model: "
             "about a minute)")
    cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=_FLAGS, is_python_module=False, verbose=False)
    return torch.ops.compressor_cpu


def ops():
    """The kernel's ops, or None where it is switched off or could not be built (warned once)."""
    if not enabled():
        return None
    if _state["tried"]:
        return _state["ops"]
    with _lock:
        if not _state["tried"]:
            try:
                _state["ops"] = build()
            except Exception as exc:  # noqa: BLE001 - any build failure falls back to the vectorized ops
                lines = str(exc).strip().splitlines()
                _state["error"] = f"{type(exc).__name__}: {lines[-1] if lines else ''}"
                log.warning("The one-pass CPU fake-quantization kernel could not be built (%s); using the slower "
                            "vectorized ops (same values). Set %s=0 to skip the attempt.", _state["error"], ENV_SWITCH)
            _state["tried"] = True
    return _state["ops"]


def build_error():
    """Why the kernel is not available (None if it is, or was never tried)."""
    return _state["error"]
