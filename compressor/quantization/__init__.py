"""Quantization: modes and scale math, fake-quantization modules, graph preparation, quantizers.

- ``graph/``: torch.fx tracing, activation sites, instrumentation, BN folding, WRPN widening;
- ``linear/``: range-based linear quantization (QAT, post-training, integer arithmetic);
- ``low_bit/``: DoReFa, WRPN, PACT, binary/ternary weights, INQ (straight-through estimators);
- top level: the ``Quantizer`` base, modes, scale math, fake-quant modules, overrides, calibration pass.
"""
