"""compressor: a YAML-driven model-compression scheduler for PyTorch, focused on quantization."""

__version__ = "0.1.0"
