"""LR schedulers Distiller recipes name that torch does not have (listed beside torch's own in recipe.components)."""

import bisect

from torch.optim.lr_scheduler import LRScheduler


class MultiStepMultiGammaLR(LRScheduler):
    """Distiller's: at each milestone the LR is multiplied by that milestone's own gamma."""

    def __init__(self, optimizer, milestones, gammas, last_epoch=-1):
        if list(milestones) != sorted(milestones):
            raise ValueError(f"milestones must be increasing, got {milestones}")
        if len(milestones) != len(gammas):
            raise ValueError(f"one gamma per milestone: {len(milestones)} milestones, {len(gammas)} gammas")
        self.milestones = list(milestones)
        self.multipliers = [1.0]
        for g in gammas:
            self.multipliers.append(self.multipliers[-1] * g)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        k = bisect.bisect_right(self.milestones, self.last_epoch)
        return [base * self.multipliers[k] for base in self.base_lrs]
