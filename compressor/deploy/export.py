"""One call for apps and users: convert a simulated model, export it, check it, report sizes.

```python
from compressor.deploy.export import export_quantized
report = export_quantized(scheduler.model, test_loader, onnx_path="model.onnx", pytorch_path="int8.pth.tar")
```
"""

import logging
import os

import torch

from compressor.deploy.artifact import save_artifact
from compressor.deploy.convert import to_torch_int8
from compressor.deploy.onnx_export import export_onnx
from compressor.deploy.verify import REQUIRED_AGREEMENT, agreement, onnx_runner
from compressor.quantization.fake_quant import ActivationFakeQuant

log = logging.getLogger(__name__)


def fp32_bytes(model):
    """Bytes of the FP32 parameters and buffers a plain checkpoint of ``model`` holds (master weights once)."""
    total = 0
    for name, t in model.state_dict().items():
        if torch.is_tensor(t) and t.is_floating_point() and not name.startswith("activation_quantizers."):
            total += t.numel() * 4
    return total


def export_quantized(model, loader, onnx_path=None, pytorch_path=None, engine="qnnpack", example=None,
                     metadata=None):
    """Export ``model`` (a prepared, quantized GraphModule) and check each export on ``loader``.

    Returns a report (written by the apps to summary.json under ``export``): per target the
    path, file size, agreement with the simulation, both top-1s, the largest logit difference.
    """
    device = next(model.parameters()).device
    try:
        int8, converted = to_torch_int8(model.cpu(), engine)
    finally:
        model.to(device)
    if example is None:
        example = next(iter(loader))[0][:1]
    report = {"engine": engine, "integer_layers": len(converted), "fp32_parameter_bytes": fp32_bytes(model)}
    if pytorch_path:
        save_artifact(pytorch_path, int8, model, {"engine": engine, **(metadata or {})})
        check = agreement(model, lambda x: int8(x), loader, device)
        report["pytorch"] = {"path": pytorch_path, "bytes": os.path.getsize(pytorch_path), **check}
        _log("PyTorch int8", report["pytorch"])
    if onnx_path:
        exportable = int8
        if any(q.bits < 8 for q in _activation_quantizers(model)):  # saturation in ONNX-exportable ops
            try:
                exportable, _ = to_torch_int8(model.cpu(), engine, for_onnx=True)
            finally:
                model.to(device)
        export_onnx(exportable, example.cpu(), onnx_path)
        check = agreement(model, onnx_runner(onnx_path), loader, device)
        report["onnx"] = {"path": onnx_path, "bytes": os.path.getsize(onnx_path), **check}
        _log("ONNX (onnxruntime)", report["onnx"])
    report["int8_model"] = int8
    return report


def _activation_quantizers(model):

    return [m for m in model.modules() if isinstance(m, ActivationFakeQuant) and m.enabled]


def _log(what, r):
    log.info("%s: %s, %.1f KiB; agrees with the simulation on %.2f %% of %d test images (simulated top-1 %.3f, "
             "exported top-1 %.3f, largest logit difference %.4f)", what, r["path"], r["bytes"] / 1024,
             r["agreement"], r["images"], r["simulated_top1"], r["exported_top1"], r["max_logit_diff"])
    if r["agreement"] < REQUIRED_AGREEMENT:
        log.warning("WARNING: %s agrees on only %.2f %% (< %.1f %%) of predictions", what, r["agreement"],
                    REQUIRED_AGREEMENT)
