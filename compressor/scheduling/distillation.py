"""Knowledge distillation (Hinton et al. 2015) as a recipe component, as Distiller's --kd-* flags did.

```yaml
distillers:
  kd:
    class: KnowledgeDistillation
    teacher_checkpoint: runs/fp32/best.pth.tar   # the teacher's weights (e.g. the FP32 model)
    teacher_arch: null       # null: the checkpoint's arch, else the student's
    temperature: 5.0
    distill_wt: 0.7          # weight of the student-vs-teacher soft loss
    student_wt: 0.3          # weight of the student-vs-labels loss
policies:
  - distiller: {instance_name: kd}
    starting_epoch: 0
    ending_epoch: 10
```

The loss is Distiller's: ``student_wt * CE(student, labels) + distill_wt * KL(soft student || soft
teacher)``, the softened distributions at ``temperature``, KL averaged over the batch (no T²
factor, so Distiller's weights mean the same here). The distillation term is logged as its own
loss component, ``Distill Loss``.
"""

import dataclasses
import logging

import torch
import torch.nn.functional as F

from compressor.core.errors import CheckpointError
from compressor.core.io import load_checkpoint
from compressor.core.spec import Config, Float, Spec, setting
from compressor.core.state_keys import load_weights, model_state
from compressor.models import create_model
from compressor.scheduling.policies import Policy
from compressor.scheduling.scheduler import PolicyLoss

log = logging.getLogger(__name__)
DISTILL_LOSS = "Distill Loss"


class _Path(Spec):
    def check(self, value):
        return None if isinstance(value, str) and value else f"expected a checkpoint path, got {value!r}"


class _OptionalArch(Spec):
    def check(self, value):
        return None if value is None or isinstance(value, str) else f"expected a model name or null, got {value!r}"


class _Zero(Spec):
    def check(self, value):
        if value not in (0, 0.0) or isinstance(value, bool):
            return f"only 0 is supported (the teacher is frozen, it is not trained on the labels), got {value!r}"
        return None


def distillation_loss(student_logits, teacher_logits, temperature):
    """KL divergence between the softened teacher and student distributions, averaged over the batch."""
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    q = F.softmax(teacher_logits.detach() / temperature, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistillationConfig(Config):
    teacher_checkpoint: str = setting(_Path(), "the teacher's checkpoint (e.g. the FP32 model's best.pth.tar)")
    teacher_arch: str | None = setting(_OptionalArch(None), "the teacher's arch (null: the checkpoint's, else the "
                                       "student's)")
    temperature: float = setting(Float(1.0, lo=0.0, lo_open=True), "softmax temperature of both distributions")
    distill_wt: float = setting(Float(0.5, lo=0.0), "weight of the student-vs-teacher soft loss")
    student_wt: float = setting(Float(0.5, lo=0.0), "weight of the student-vs-labels loss")
    teacher_wt: float = setting(_Zero(0.0), "only 0: the teacher is frozen")


class KnowledgeDistillation:
    CONFIG = DistillationConfig

    def __init__(self, **kwargs):
        self.config = self.CONFIG.from_args(**kwargs)
        self.teacher = None

    def build_teacher(self, arch, dataset, device):
        """Create the teacher from its checkpoint, frozen in evaluation mode."""

        path = self.config.teacher_checkpoint
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as exc:
            raise CheckpointError(f"knowledge distillation teacher: {exc} (--kd-resume / teacher_checkpoint)") from None
        teacher_arch = self.config.teacher_arch or (ckpt.get("arch") if isinstance(ckpt, dict) else None) or arch
        teacher = create_model(teacher_arch, dataset)
        try:
            load_weights(teacher, model_state(ckpt))
        except (RuntimeError, ValueError) as exc:
            raise CheckpointError(f"knowledge distillation teacher {teacher_arch} from {path}: {exc}") from None
        teacher.to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher = teacher
        log.info("Knowledge distillation: teacher %s from %s, temperature %g, weights distill %g / student %g",
                 teacher_arch, path, self.config.temperature, self.config.distill_wt, self.config.student_wt)
        return teacher


class DistillationPolicy(Policy):
    """In its epochs, replaces the training loss by the distillation mix; the teacher sees the student's batch.

    The student's inputs and logits are taken by a forward hook on the training model, so the
    training loop needs no change.
    """

    def __init__(self, distiller, epochs):
        super().__init__(epochs)
        self.distiller = distiller
        self._armed = False
        self._batch = None
        self._hook = None

    def attach(self, net, arch, dataset, device):
        """Build the teacher and watch ``net`` (the module the training loop calls)."""
        if self.distiller.teacher is None:
            self.distiller.build_teacher(arch, dataset, device)
        if self._hook is not None:
            self._hook.remove()
        self._hook = net.register_forward_hook(self._capture)

    def _capture(self, module, inputs, output):
        if self._armed and module.training:
            self._batch = (inputs[0], output)

    def on_minibatch_begin(self, model, epoch, minibatch_id, minibatches_per_epoch, optimizer=None):
        if self.distiller.teacher is None:
            raise RuntimeError("the distillation policy has no teacher: the app must call scheduler.attach()")
        self._armed, self._batch = True, None

    def before_backward_pass(self, model, epoch, minibatch_id, minibatches_per_epoch, loss, optimizer=None):
        self._armed = False
        if self._batch is None:
            raise RuntimeError("the distillation policy saw no forward pass of the student in this minibatch")
        inputs, student_logits = self._batch
        self._batch = None
        with torch.no_grad():
            teacher_logits = self.distiller.teacher(inputs)
        cfg = self.distiller.config
        distill = distillation_loss(student_logits, teacher_logits, cfg.temperature)
        overall = cfg.student_wt * loss + cfg.distill_wt * distill
        return PolicyLoss(overall, [(DISTILL_LOSS, distill)])
