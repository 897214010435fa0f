"""Export flags shared by both apps: --export-onnx [FILE], --qe-convert-pytorch (in the --qe group), --int8-target,
--int8-engine, --export-accept-disagreement."""

import logging
import os

from compressor.core.errors import UsageError
from compressor.deploy.export import export_quantized
from compressor.deploy.onnx_export import export_onnx
from compressor.deploy.target import TARGETS
from compressor.deploy.verify import agreement, onnx_runner

log = logging.getLogger("compressor")
ENGINES = ("auto", "qnnpack", "x86", "fbgemm", "onednn")


def add_deploy_arguments(parser):
    g = parser.add_argument_group("deployment")
    g.add_argument("--export-onnx", nargs="?", const="", default=None, metavar="FILE",
                   help="export the model to ONNX (quantized models: QDQ with integer weights, checked against the "
                        "simulation on the test split); default FILE: <run folder>/<name>.onnx")
    g.add_argument("--int8-target", choices=("auto",) + TARGETS, default="auto",
                   help="CPU the integer model is for; picks the exact and fast format (default auto: this CPU's "
                        "flags). vnni/amx/arm: int8 weights (u8s8, 32-bit accumulation); avx2: uint8 weights with "
                        "8-bit activations (exact), int8 weights with 7-bit activations")
    g.add_argument("--int8-engine", choices=ENGINES, default="auto",
                   help="PyTorch quantized engine for --qe-convert-pytorch (default auto: x86 for vnni/amx and for "
                        "7-bit activations on avx2, qnnpack otherwise)")
    g.add_argument("--export-accept-disagreement", action="store_true",
                   help="keep an export whose predictions agree with the simulation on fewer than 99.5 %% of the "
                        "test images (otherwise an error, exit code 2)")


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
                              engine=getattr(args, "int8_engine", "auto"), metadata=metadata,
                              target=getattr(args, "int8_target", "auto"),
                              accept_disagreement=getattr(args, "export_accept_disagreement", False))
    report.pop("int8_model")
    return report


def _export_fp32(model, loader, path):
    """Distiller's --export-onnx of an unquantized model: plain FP32 ONNX (our writer, no torch.onnx)."""
    device = next(model.parameters()).device
    example = next(iter(loader))[0][:1]
    model.eval()
    try:
        export_onnx(model.cpu(), example.cpu(), path, metadata={"precision": "fp32"})
    finally:
        model.to(device)
    check = agreement(model, onnx_runner(path), loader, device)
    log.info("FP32 ONNX written to %s (%.1f KiB); agrees with the model on %.2f %% of test images",
             path, os.path.getsize(path) / 1024, check["agreement"])
    return {"path": path, "bytes": os.path.getsize(path), **check}
