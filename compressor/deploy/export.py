"""One call for apps and users: pick the integer format for the target CPU, export, check, report.

```python
from compressor.deploy.export import export_quantized
report = export_quantized(scheduler.model, test_loader, onnx_path="model.onnx", pytorch_path="int8.pth.tar")
```

The target (``target.resolve_target``: this CPU's flags, or the one the user names) decides the
format (``target.choose_format``); both go to the log, the report (summary.json's ``export``) and the
ONNX model's metadata. Every export is then run on ``loader`` (the test split) against the
simulation; one that agrees on fewer than ``REQUIRED_AGREEMENT`` % of the predictions raises
``ExportError`` with the numbers, unless ``accept_disagreement``.
"""

import logging
import os
import tempfile

import torch

from compressor.core.errors import ExportError
from compressor.deploy.artifact import save_artifact
from compressor.deploy.convert import to_torch_int8
from compressor.deploy.onnx_export import export_onnx
from compressor.deploy.target import choose_format, cpu_flags, detect_capability, resolve_target
from compressor.deploy.verify import REQUIRED_AGREEMENT, agreement, median_ms, onnx_runner
from compressor.quantization.fake_quant import ActivationFakeQuant
from compressor.quantization.quant_module import QuantModule

log = logging.getLogger(__name__)


def fp32_bytes(model):
    """Bytes of the FP32 parameters and buffers a plain checkpoint of ``model`` holds (master weights once)."""
    total = 0
    for name, t in model.state_dict().items():
        if torch.is_tensor(t) and t.is_floating_point() and not name.startswith("activation_quantizers."):
            total += t.numel() * 4
    return total


def activation_bits(model):
    """The widest enabled activation quantizer of ``model`` (8 when there is none)."""
    bits = [q.bits for q in model.modules() if isinstance(q, ActivationFakeQuant) and q.enabled]
    return max(bits) if bits else 8


def plan_export(model, target="auto", engine="auto", flags=None):
    """(target, how it was chosen, Int8Format, PyTorch engine) for ``model``."""
    target, how = resolve_target(target, flags)
    fmt = choose_format(target, activation_bits(model))
    return target, how, fmt, fmt.engine if engine in (None, "auto") else engine


def export_quantized(model, loader, onnx_path=None, pytorch_path=None, engine="auto", example=None,
                     metadata=None, target="auto", accept_disagreement=False, flags=None, measure_speed=True):
    """Export ``model`` (a prepared, quantized GraphModule) and check each export on ``loader``.

    Returns a report (written by the apps to summary.json under ``export``): the target and format
    with the reason, per export the path, file size, agreement with the simulation, both top-1s,
    the largest logit difference, and (``measure_speed``) the INT8 ONNX model's time against FP32 onnxruntime on one
    test batch. ``flags``: CPU flags for ``--int8-target auto`` (tests).
    """
    target, how, fmt, engine = plan_export(model, target, engine, flags)
    log.info("INT8 target: %s (%s); format %s: %s", target, how, fmt.name, fmt.reason)
    device = next(model.parameters()).device
    if example is None:
        example = next(iter(loader))[0][:1]
    report = {"int8_target": target, "int8_target_source": how, "format": fmt.name, "weights": fmt.weights,
              "format_reason": fmt.reason, "engine": engine, "fp32_parameter_bytes": fp32_bytes(model)}
    int8 = None
    if pytorch_path:
        try:
            int8, converted = to_torch_int8(model.cpu(), engine)
        finally:
            model.to(device)
        report["integer_layers"] = len(converted)
        save_artifact(pytorch_path, int8, model, {"engine": engine, "int8_target": target, **(metadata or {})})
        check = agreement(model, lambda x: int8(x), loader, device)
        report["pytorch"] = {"path": pytorch_path, "bytes": os.path.getsize(pytorch_path), **check}
        _log(f"PyTorch int8 ({engine} engine)", report["pytorch"])
    if onnx_path:
        props = {"int8_target": target, "int8_format": fmt.name, "int8_format_reason": fmt.reason,
                 **{k: v for k, v in (metadata or {}).items() if isinstance(v, (str, int, float))}}
        try:
            export_onnx(model.cpu(), example.cpu(), onnx_path, weights=fmt.weights, metadata=props)
        finally:
            model.to(device)
        check = agreement(model, onnx_runner(onnx_path), loader, device)
        report["onnx"] = {"path": onnx_path, "bytes": os.path.getsize(onnx_path), **check}
        _log(f"ONNX QDQ {fmt.name} (onnxruntime)", report["onnx"])
        if measure_speed:
            report["onnx"]["speed"] = _speed(model, next(iter(loader))[0].cpu(), onnx_path, device)
    report["int8_model"] = int8
    _enforce_agreement(report, accept_disagreement)
    return report


def _speed(model, batch, onnx_path, device):
    """What the export bought on this CPU: the INT8 ONNX model against the same model exported in FP32 (every
    quantizer off), both on onnxruntime with its default threads, median of 10 runs of one test batch."""
    quantizers = [m for m in model.modules() if isinstance(m, QuantModule)]
    states = [m.enabled for m in quantizers]
    with tempfile.TemporaryDirectory() as folder:
        fp32_path = os.path.join(folder, "fp32.onnx")
        try:
            for m in quantizers:
                m.enabled = False
            export_onnx(model.cpu(), batch[:1], fp32_path, metadata={"note": "FP32 reference for the speed check"})
        finally:
            for m, on in zip(quantizers, states):
                m.enabled = on
            model.to(device)
        fp32_ms = median_ms(onnx_runner(fp32_path), batch)
    int8_ms = median_ms(onnx_runner(onnx_path), batch)
    result = {"fp32_onnxruntime_ms": round(fp32_ms, 3), "int8_onnxruntime_ms": round(int8_ms, 3),
              "speedup": round(fp32_ms / int8_ms, 3), "batch": int(batch.shape[0]),
              "cpu_capability": detect_capability(*cpu_flags())}
    log.info("Speed on this CPU (%s), batch %d: INT8 ONNX %.2f ms, FP32 ONNX %.2f ms: %.2fx %s (onnxruntime, median of "
             "10 runs; benchmarks/inference_speed.py measures more carefully)", result["cpu_capability"],
             result["batch"], int8_ms, fp32_ms, max(result["speedup"], 1 / result["speedup"]),
             "faster" if result["speedup"] >= 1 else "SLOWER")
    return result


def _enforce_agreement(report, accept):
    failed = [(k, report[k]) for k in ("pytorch", "onnx") if k in report
              and report[k]["agreement"] < REQUIRED_AGREEMENT]
    report["agreement_accepted"] = bool(failed) and accept
    if not failed:
        return
    lines = "; ".join(f"{k} ({r['path']}): {r['agreement']:.2f} % of {r['images']} test images, largest logit "
                      f"difference {r['max_logit_diff']:.4f}, simulated top-1 {r['simulated_top1']:.3f} vs "
                      f"exported {r['exported_top1']:.3f}" for k, r in failed)
    message = f"the export does not compute what the simulation computes (needs >= {REQUIRED_AGREEMENT} % " \
              f"agreement): {lines} [target {report['int8_target']}, format {report['format']}, engine " \
              f"{report['engine']}]"
    if any(r.get("arithmetic") == "float" for _, r in failed):
        message += (" (judged against the model's float fake quantization: none of its layers has an integer-exact "
                    "simulation, so its requantizations round one step apart from the integer kernels' where values "
                    "fall between grid points, and a network that amplifies such noise, as EfficientNet does, "
                    "changes a few % of its predictions; docs/results.md)")
    if accept:
        log.warning("WARNING (accepted by --export-accept-disagreement): %s", message)
        return
    raise ExportError(message + "; the files were written for inspection; pass --export-accept-disagreement "
                                "to accept them")


def _log(what, r):
    log.info("%s: %s, %.1f KiB; agrees with the simulation on %.2f %% of %d test images (simulated top-1 %.3f, "
             "exported top-1 %.3f, largest logit difference %.4f)", what, r["path"], r["bytes"] / 1024,
             r["agreement"], r["images"], r["simulated_top1"], r["exported_top1"], r["max_logit_diff"])
