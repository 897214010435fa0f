"""Running averages, top-k accuracy and confusion matrices."""

import torch


class AverageMeter:
    def __init__(self):
        self.sum, self.count = 0.0, 0

    def update(self, value, n=1):
        self.sum += float(value) * n
        self.count += n

    @property
    def avg(self):
        return self.sum / max(self.count, 1)


def topk_correct(output, target, ks=(1, 5)):
    """Number of samples whose target is in the top-k predictions, for each k."""
    maxk = min(max(ks), output.shape[1])
    pred = output.topk(maxk, dim=1).indices
    hit = pred.eq(target[:, None])
    return [hit[:, : min(k, maxk)].any(dim=1).sum().item() for k in ks]


def confusion_matrix(output, target, num_classes):
    idx = target * num_classes + output.argmax(dim=1)
    return torch.bincount(idx.cpu(), minlength=num_classes * num_classes).reshape(num_classes, num_classes)
