"""One training epoch and one evaluation pass, calling the compression scheduler at Distiller's points.

Divergence is checked where it costs nothing: the loss of every step is already read as a Python
float (for the meters), a forward pass that fails is examined for non-finite weights (a NaN weight
makes QAT's zero point fail inside torch), and the state (weights and quantizer ranges) is scanned
once per epoch.
"""

import logging

import torch

from compressor.training.faults import check_loss, check_model, first_non_finite
from compressor.training.metrics import AverageMeter, confusion_matrix, topk_correct
from compressor.core.progress import progress

log = logging.getLogger("compressor")
OBJECTIVE = "Objective Loss"
OVERALL = "Overall Loss"


def train_one_epoch(model, loader, criterion, optimizer, scheduler, epoch, device, print_freq=10):
    """Returns {'Overall Loss', 'Objective Loss', <loss components>, 'Top1', 'Top5', 'LR'}."""
    model.train()
    meters = {OVERALL: AverageMeter(), OBJECTIVE: AverageMeter()}
    correct1 = correct5 = seen = 0
    steps = len(loader)
    bar = progress(loader, f"train {epoch}")
    for i, (inputs, target) in enumerate(bar):
        inputs, target = inputs.to(device, non_blocking=True), target.to(device, non_blocking=True)
        if scheduler:
            scheduler.on_minibatch_begin(epoch, i, steps, optimizer)
        output = _forward(model, inputs, epoch, i)
        loss = criterion(output, target)
        meters[OBJECTIVE].update(loss.item(), inputs.size(0))
        check_loss(meters[OBJECTIVE].avg, epoch, i, steps)
        if scheduler:
            agg = scheduler.before_backward_pass(epoch, i, steps, loss, optimizer, return_loss_components=True)
            loss = agg.overall_loss
            for comp in agg.loss_components:
                meters.setdefault(comp.name, AverageMeter()).update(comp.value.item(), inputs.size(0))
        meters[OVERALL].update(loss.item(), inputs.size(0))
        check_loss(meters[OVERALL].avg, epoch, i, steps, "overall loss")
        c1, c5 = topk_correct(output.detach(), target)
        correct1, correct5, seen = correct1 + c1, correct5 + c5, seen + inputs.size(0)

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if scheduler:
            scheduler.before_parameter_optimization(epoch, i, steps, optimizer)
        optimizer.step()
        if scheduler:
            scheduler.on_minibatch_end(epoch, i, steps, optimizer)
        if (print_freq and (i + 1) % print_freq == 0) or i + 1 == steps:
            extra = "".join(f"    {name} {m.avg:.6f}" for name, m in meters.items() if name not in (OVERALL, OBJECTIVE))
            log.info(
                "Epoch: [%d][%4d/%4d]    Overall Loss %.6f    Objective Loss %.6f%s    Top1 %.3f    Top5 %.3f    LR %.6g",
                epoch, i + 1, steps, meters[OVERALL].avg, meters[OBJECTIVE].avg, extra,
                100.0 * correct1 / seen, 100.0 * correct5 / seen, optimizer.param_groups[0]["lr"],
            )
    check_model(model, epoch)
    stats = {name: m.avg for name, m in meters.items()}
    stats.update(Top1=100.0 * correct1 / max(seen, 1), Top5=100.0 * correct5 / max(seen, 1),
                 LR=optimizer.param_groups[0]["lr"])
    return stats


def _forward(model, inputs, epoch, step):
    """The forward pass; a failure caused by non-finite weights or ranges is reported as divergence."""
    try:
        return model(inputs)
    except RuntimeError:
        if first_non_finite(model) is not None:
            check_model(model, epoch, step)
        raise


@torch.no_grad()
def evaluate(model, loader, criterion, device, num_classes=None, desc="eval"):
    """Returns {'top1', 'top5', 'loss', 'images'} (and 'confusion' when ``num_classes`` is given)."""
    model.eval()
    loss_meter = AverageMeter()
    correct1 = correct5 = seen = 0
    confusion = None
    for inputs, target in progress(loader, desc):
        inputs, target = inputs.to(device, non_blocking=True), target.to(device, non_blocking=True)
        output = model(inputs)
        loss_meter.update(criterion(output, target).item(), inputs.size(0))
        c1, c5 = topk_correct(output, target)
        correct1, correct5, seen = correct1 + c1, correct5 + c5, seen + inputs.size(0)
        if num_classes:
            cm = confusion_matrix(output, target, num_classes)
            confusion = cm if confusion is None else confusion + cm
    result = {"top1": 100.0 * correct1 / max(seen, 1), "top5": 100.0 * correct5 / max(seen, 1), "loss": loss_meter.avg,
              "images": seen}
    log.info("==> Top1: %.3f    Top5: %.3f    Loss: %.3f", result["top1"], result["top5"], result["loss"])
    if confusion is not None:
        result["confusion"] = confusion.tolist()
    return result
