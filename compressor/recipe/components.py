"""What a recipe may name: one registry per section, declared with its built-in classes.

Extend a section with ``QUANTIZERS.register(MyQuantizer)`` (or as a decorator) before reading the
recipe; a registered quantizer derives from ``Quantizer`` (its settings in ``CONFIG``, a
``compressor.core.spec.Config``), a calibrator has ``CONFIG`` and ``calibrate``, a distiller
``CONFIG`` and ``build_teacher``, a pruner derives from ``Pruner`` (``CONFIG`` and ``prune``), an extension
(network thinning) has ``CONFIG``.
"""

import torch

from compressor.core.registry import Registry
from compressor.pruning.pruners import PRUNER_CLASSES, Pruner
from compressor.quantization.linear.ptq import PostTrainLinearQuantizer
from compressor.quantization.linear.qat import QuantAwareTrainRangeLinearQuantizer
from compressor.quantization.low_bit.inq import INQQuantizer
from compressor.quantization.low_bit.quantizers import DorefaQuantizer, PACTQuantizer, WRPNQuantizer
from compressor.quantization.quantizer import Quantizer
from compressor.scheduling.calibrator import ActivationCalibrator
from compressor.scheduling.distillation import KnowledgeDistillation
from compressor.scheduling.lr_schedulers import MultiStepMultiGammaLR
from compressor.scheduling.pruning import ChannelRemover, FilterRemover, StructureRemover


def _torch_lr_schedulers():
    base = torch.optim.lr_scheduler.LRScheduler
    found = []
    for attr in dir(torch.optim.lr_scheduler):
        obj = getattr(torch.optim.lr_scheduler, attr)
        if isinstance(obj, type) and obj is not base and not attr.startswith("_"):
            if issubclass(obj, base) or obj is torch.optim.lr_scheduler.ReduceLROnPlateau:
                found.append(obj)
    return found


QUANTIZERS = Registry("quantizer", [QuantAwareTrainRangeLinearQuantizer, PostTrainLinearQuantizer, DorefaQuantizer,
                                    WRPNQuantizer, PACTQuantizer, INQQuantizer], base=Quantizer)
LR_SCHEDULERS = Registry("lr_scheduler", _torch_lr_schedulers() + [MultiStepMultiGammaLR], members=("step",))
CALIBRATORS = Registry("calibrator", [ActivationCalibrator], members=("CONFIG", "calibrate"))
DISTILLERS = Registry("distiller", [KnowledgeDistillation], members=("CONFIG", "build_teacher"))
PRUNERS = Registry("pruner", PRUNER_CLASSES, base=Pruner)
EXTENSIONS = Registry("extension", [FilterRemover, ChannelRemover, StructureRemover], members=("CONFIG",))
SECTIONS = {"quantizers": QUANTIZERS, "lr_schedulers": LR_SCHEDULERS, "calibrators": CALIBRATORS,
            "distillers": DISTILLERS, "pruners": PRUNERS, "extensions": EXTENSIONS}
