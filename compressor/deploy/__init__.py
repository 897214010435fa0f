"""Deployment: turn a simulated (fake-quantized) model into models that run on integer kernels.

``target`` detects the CPU's integer capability (or takes ``--int8-target``) and picks the exact and
fast format for it. ``reference.reference_graph`` converts the simulated model once into a
quantize/dequantize reference graph through small per-pattern handlers; ``onnx_export`` lowers it
to ONNX QDQ with the ``onnx`` helper API (no torch.onnx, no torch.ao). ``convert.to_torch_int8``
builds a PyTorch quantized model for ``--qe-convert-pytorch``: the one module resting on
``torch.ao.nn.quantized`` kernels, which PyTorch has deprecated (it warns at every conversion).
``verify.agreement`` checks that what was exported predicts what the simulation predicted, and
``export.export_quantized`` turns a failed check into an error.
"""
