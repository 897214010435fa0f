"""Export flags shared by both apps: --export-onnx [FILE], --qe-convert-pytorch (in the --qe group), --int8-engine."""

import logging
import os

import torch
from compressor.deploy.export import export_quantized
from compressor.core.errors import UsageError
from compressor.deploy.verify import agreement, onnx_runner
from compressor.core.io import atomic_write

log = logging.getLogger("compressor")
ENGINES = ("qnnpack", "x86", "fbgemm", "onednn")


def add_deploy_arguments(parser):
    g = parser.add_argument_group("deployment")
    g.add_argument("--export-onnx", nargs="?", const="", default=None, metavar="FILE",
                   help="export the model to ONNX (quantized models: QDQ with integer weights, checked against the "
                        "simulation on the test split); default FILE: <run folder>/<name>.onnx")
    g.add_argument("--int8-engine", choices=ENGINES, default="qnnpack",
                   help="PyTorch quantized engine for --qe-convert-pytorch (default qnnpack: exact with 8-bit "
                        "activations; x86/fbgemm saturate 16-bit pair sums on CPUs without VNNI)")


def wants_export(args):
    return getattr(args, "export_onnx", None) is not None or getattr(args, "qe_convert_pytorch", False)


def run_exports(args, run_dir, name, model, quantized, loader, metadata):
    """Export as the flags ask; returns the report for summary.json (None when nothing was asked)."""
    if not wants_export(args):
        return None
    onnx_path = None
    if args.export_onnx is not None:
        onnx_path = args.export_onnx or run_dir.file(f"{name}.onnx")
    if not quantized:
        if args.qe_convert_pytorch:

            raise UsageError("--qe-convert-pytorch needs a quantized model (a quantizer in the recipe, or --qe)")
        return {"onnx": _export_fp32(model, loader, onnx_path)}

    pytorch_path = run_dir.file("quantized_int8.pth.tar") if args.qe_convert_pytorch else None
    report = export_quantized(model, loader, onnx_path=onnx_path, pytorch_path=pytorch_path,
                              engine=args.int8_engine, metadata=metadata)
    report.pop("int8_model")
    return report


def _export_fp32(model, loader, path):
    """Distiller's --export-onnx of an unquantized model: plain FP32 ONNX."""
    import warnings


    device = next(model.parameters()).device
    example = next(iter(loader))[0][:1].to(device)
    model.eval()

    def write(tmp):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), tmp, dynamo=False, opset_version=13, input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})

    atomic_write(path, write)
    check = agreement(model, onnx_runner(path), loader, device)
    log.info("FP32 ONNX written to %s (%.1f KiB); agrees with the model on %.2f %% of test images",
             path, os.path.getsize(path) / 1024, check["agreement"])
    return {"path": path, "bytes": os.path.getsize(path), **check}
