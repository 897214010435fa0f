"""One training epoch and one evaluation pass, calling the compression scheduler at Distiller's points.

Divergence is checked where it costs nothing: the loss of every step is already read as a Python
float (for the meters), a forward pass that fails is examined for non-finite weights (a NaN weight
makes QAT's zero point fail inside torch), and the state (weights and quantizer ranges) is scanned
once per epoch.
"""

import contextlib
import logging
import time

import torch

from compressor.core import distributed
from compressor.core.progress import progress
from compressor.training.faults import check_loss, check_model, first_non_finite
from compressor.training.metrics import AverageMeter, confusion_matrix, topk_correct

log = logging.getLogger("compressor")
OBJECTIVE = "Objective Loss"
OVERALL = "Overall Loss"


THROUGHPUT = "Images per second"
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device, amp):
    """Mixed precision for --amp (None: off). The quantizers compute in float32 inside it (fake_quant.py)."""
    kind = torch.device(device).type
    return torch.autocast(kind, dtype=AMP_DTYPES[amp], enabled=True) if amp else contextlib.nullcontext()


def train_one_epoch(model, loader, criterion, optimizer, scheduler, epoch, device, print_freq=10, amp=None,
                    grad_scaler=None):
    """Returns {'Overall Loss', 'Objective Loss', <loss components>, 'Top1', 'Top5', 'LR', 'Images per second'}
    (training images of every process per second of this epoch's wall time: the speed runs are compared on)."""
    started = time.perf_counter()
    model.train()
    meters = {OVERALL: AverageMeter(), OBJECTIVE: AverageMeter()}
    correct1 = correct5 = seen = 0
    steps = len(loader)
    bar = progress(loader, f"train {epoch}")
    for i, (inputs, target) in enumerate(bar):
        inputs, target = inputs.to(device, non_blocking=True), target.to(device, non_blocking=True)
        if scheduler:
            scheduler.on_minibatch_begin(epoch, i, steps, optimizer)
        with autocast(device, amp):
            output = _forward(model, inputs, epoch, i)
            loss = criterion(output.float(), target)
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
        if grad_scaler is not None:  # fp16: the loss scaled against underflow, the gradients unscaled for the hooks
            grad_scaler.scale(loss).backward()
            grad_scaler.unscale_(optimizer)
        else:
            loss.backward()
        if scheduler:
            scheduler.before_parameter_optimization(epoch, i, steps, optimizer)
        if grad_scaler is not None:
            grad_scaler.step(optimizer)
            grad_scaler.update()
        else:
            optimizer.step()
        if scheduler:
            scheduler.on_minibatch_end(epoch, i, steps, optimizer)
        if (print_freq and (i + 1) % print_freq == 0) or i + 1 == steps:
            extra = "".join(f"    {name} {m.avg:.6f}" for name, m in meters.items() if name not in (OVERALL, OBJECTIVE))
            log.info(
                "Epoch: [%d][%4d/%4d]    Overall Loss %.6f    Objective Loss %.6f%s"
                "    Top1 %.3f    Top5 %.3f    LR %.6g",
                epoch,
                i + 1,
                steps,
                meters[OVERALL].avg,
                meters[OBJECTIVE].avg,
                extra,
                100.0 * correct1 / seen,
                100.0 * correct5 / seen,
                optimizer.param_groups[0]["lr"],
            )
    check_model(model, epoch)
    # under DDP: the epoch's averages over every process's samples (the lines above are this process's)
    names = sorted(meters)
    totals = distributed.all_reduce_sum(
        [x for n in names for x in (meters[n].sum, meters[n].count)] + [correct1, correct5, seen]
    )
    stats = {n: totals[2 * i] / max(totals[2 * i + 1], 1) for i, n in enumerate(names)}
    correct1, correct5, seen = totals[-3:]
    seconds = time.perf_counter() - started
    stats.update(
        Top1=100.0 * correct1 / max(seen, 1), Top5=100.0 * correct5 / max(seen, 1), LR=optimizer.param_groups[0]["lr"]
    )
    stats[THROUGHPUT] = seen / max(seconds, 1e-9)
    log.info("Epoch %d: %d training images in %.1f s, %.1f images/s", epoch, seen, seconds, stats[THROUGHPUT])
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
def evaluate(model, loader, criterion, device, num_classes=None, desc="eval", amp=None):
    """Returns {'top1', 'top5', 'loss', 'images'} (and 'confusion' when ``num_classes`` is given)."""
    model.eval()
    loss_meter = AverageMeter()
    correct1 = correct5 = seen = 0
    confusion = None
    for inputs, target in progress(loader, desc):
        inputs, target = inputs.to(device, non_blocking=True), target.to(device, non_blocking=True)
        with autocast(device, amp):
            output = model(inputs).float()
        loss_meter.update(criterion(output, target).item(), inputs.size(0))
        c1, c5 = topk_correct(output, target)
        correct1, correct5, seen = correct1 + c1, correct5 + c5, seen + inputs.size(0)
        if num_classes:
            cm = confusion_matrix(output, target, num_classes)
            confusion = cm if confusion is None else confusion + cm
    # under DDP each process saw its own samples (none twice): sum counts and losses over processes
    loss_sum, loss_count, correct1, correct5, seen = distributed.all_reduce_sum(
        [loss_meter.sum, loss_meter.count, correct1, correct5, seen]
    )
    if confusion is not None or num_classes:
        confusion = _all_reduce_confusion(confusion, num_classes)
    result = {
        "top1": 100.0 * correct1 / max(seen, 1),
        "top5": 100.0 * correct5 / max(seen, 1),
        "loss": loss_sum / max(loss_count, 1),
        "images": int(seen),
    }
    log.info("==> Top1: %.3f    Top5: %.3f    Loss: %.3f", result["top1"], result["top5"], result["loss"])
    if confusion is not None:
        result["confusion"] = confusion.tolist()
    return result


def _all_reduce_confusion(confusion, num_classes):
    if not distributed.is_distributed():
        return confusion
    local = confusion if confusion is not None else torch.zeros(num_classes, num_classes, dtype=torch.int64)
    flat = distributed.all_reduce_sum(local.reshape(-1).tolist())
    return torch.tensor([int(v) for v in flat], dtype=torch.int64).reshape(num_classes, num_classes)
