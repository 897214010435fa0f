"""Quantization: modes and scale math, fake-quantization modules, graph preparation, quantizers.

Importing this package registers the quantizer classes recipes may name.
"""

from . import inq, low_bit_qat, ptq, qat  # noqa: F401  (registers the quantizer classes)
