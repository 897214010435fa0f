"""Range-based linear quantization: QAT (EMA ranges), post-training (calibrated ranges), integer arithmetic."""
