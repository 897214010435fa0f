"""Quantization: modes and scale math, fake-quantization modules, graph preparation, quantizers.

Importing this package registers the quantizer classes recipes may name.
"""

from . import ptq, qat  # noqa: F401  (registers the quantizer classes)
