"""Deployment: turn a simulated (fake-quantized) model into models that run on integer kernels.

``convert.to_torch_int8`` builds a PyTorch quantized model (torch.ao.nn.quantized modules and
quantized ops, x86/fbgemm or qnnpack engine); ``onnx_export.export_onnx`` writes it as ONNX
QuantizeLinear/DequantizeLinear (QDQ) for onnxruntime; ``verify.agreement`` checks that what
was exported predicts what the simulation predicted.
"""
