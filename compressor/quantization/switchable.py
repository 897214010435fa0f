"""Base of the training-based quantization modules: a transform the quantization policy switches on.

The switch travels in ``state_dict`` as extra state, so a checkpoint evaluates and
resumes in the phase it was saved in.
"""

from torch import nn


class Switchable(nn.Module):
    METHOD = ""  # how this module quantizes, for the per-layer table
    PARAM_GROUP = None  # options of the optimizer group its own parameters join (None: it has none)

    def __init__(self, bits):
        super().__init__()
        self.bits = bits
        self.enabled = False
        self.observing = True

    def set_state(self, enabled, observing):
        self.enabled = enabled
        self.observing = observing

    def get_extra_state(self):
        return {"enabled": self.enabled, "observing": self.observing}

    def set_extra_state(self, state):
        self.enabled = bool(state["enabled"])
        self.observing = bool(state.get("observing", True))

    def extra_repr(self):
        return f"bits={self.bits}, method={self.METHOD}, enabled={self.enabled}"
