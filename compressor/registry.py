"""Name -> class registries: recipes may only name classes registered here.

A recipe never imports by path; a user extends what recipes can name with the
``register`` decorator of the matching registry.
"""

import torch


class Registry:
    def __init__(self, kind):
        self.kind = kind
        self._classes = {}

    def register(self, cls=None, *, name=None):
        """Register ``cls`` under ``name`` (default: its class name). Usable as a decorator."""

        def add(c):
            key = name or c.__name__
            if key in self._classes and self._classes[key] is not c:
                raise ValueError(f"{self.kind} '{key}' is already registered to {self._classes[key]!r}")
            self._classes[key] = c
            return c

        return add(cls) if cls is not None else add

    def get(self, name):
        return self._classes.get(name)

    def names(self):
        return sorted(self._classes)

    def __contains__(self, name):
        return name in self._classes


QUANTIZERS = Registry("quantizer")
LR_SCHEDULERS = Registry("lr_scheduler")
CALIBRATORS = Registry("calibrator")
DISTILLERS = Registry("distiller")


def _register_torch_lr_schedulers():
    base = torch.optim.lr_scheduler.LRScheduler
    for attr in dir(torch.optim.lr_scheduler):
        obj = getattr(torch.optim.lr_scheduler, attr)
        if isinstance(obj, type) and obj is not base and not attr.startswith("_"):
            if issubclass(obj, base) or obj is torch.optim.lr_scheduler.ReduceLROnPlateau:
                LR_SCHEDULERS.register(obj)


_register_torch_lr_schedulers()
