import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compressor.scheduling.distillation import (
    DISTILL_LOSS,
    DistillationPolicy,
    KnowledgeDistillation,
    distillation_loss,
)
from compressor.scheduling.scheduler import CompressionScheduler


def test_distillation_loss_is_batch_mean_kl_of_softened_distributions():
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    T = 3.0
    p_t = F.softmax(t / T, 1)
    expected = (p_t * (p_t.log() - F.log_softmax(s / T, 1))).sum(1).mean()
    assert distillation_loss(s, t, T).item() == pytest.approx(expected.item(), rel=1e-5)
    assert distillation_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-6)


def test_policy_mixes_the_losses_and_reports_the_component():
    torch.manual_seed(0)
    student, teacher = nn.Linear(6, 3), nn.Linear(6, 3)
    kd = KnowledgeDistillation(teacher_checkpoint="unused", temperature=2.0, distill_wt=0.7, student_wt=0.3)
    kd.teacher = teacher.eval()
    policy = DistillationPolicy(kd, epochs=[1, 2])
    sched = CompressionScheduler(student)
    sched.add_policy(policy)
    policy.attach(student, "x", "digits", "cpu")

    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    for epoch, active in ((0, False), (1, True)):
        sched.on_minibatch_begin(epoch, 0, 1)
        out = student(x)
        loss = F.cross_entropy(out, y)
        agg = sched.before_backward_pass(epoch, 0, 1, loss, return_loss_components=True)
        if not active:
            assert agg.overall_loss is loss and agg.loss_components == []
            continue
        distill = distillation_loss(out, teacher(x), 2.0)
        assert [c.name for c in agg.loss_components] == [DISTILL_LOSS]
        assert agg.loss_components[0].value.item() == pytest.approx(distill.item(), rel=1e-6)
        assert agg.overall_loss.item() == pytest.approx(0.3 * loss.item() + 0.7 * distill.item(), rel=1e-6)
        agg.overall_loss.backward()
        assert student.weight.grad is not None and teacher.weight.grad is None


def test_kd_flags_need_the_teacher_checkpoint(tmp_path):
    from compressor.app.classifier import main

    argv = ["-a", "simplenet_digits", "--dataset", "digits", "--epochs", "1", "-o", str(tmp_path)]
    assert main(argv + ["--kd-teacher", "simplenet_digits"]) == 2
    assert main(argv + ["--kd-teacher", "simplenet_digits", "--kd-resume", str(tmp_path / "nope.pth.tar")]) == 2
    assert main(argv + ["--kd-teacher", "simplenet_digits", "--kd-resume", "x", "--kd-tw", "0.5"]) == 2
