"""Ctrl-C stops a run even when Python drops the KeyboardInterrupt (raised inside a __del__): the loop
checks the remembered interrupt at its next step."""

import os
import signal

import pytest
import torch
from torch import nn

from compressor.core.errors import Interrupted
from compressor.training.faults import check_interrupted, remember_interrupts, resumable
from compressor.training.loop import train_one_epoch

# Python reports the dropped KeyboardInterrupt as an unraisable exception: that is the situation under test
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


class InterruptedWhileCollected:
    """Sends SIGINT to this process from __del__: the KeyboardInterrupt the handler raises there is dropped
    by Python ("Exception ignored in ..."), as when Ctrl-C lands while an iterator or writer is collected."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # let the handler run here, inside __del__
            pass


def drop_an_interrupt():
    obj = InterruptedWhileCollected()
    try:
        del obj
    except KeyboardInterrupt:  # the handler ran after __del__ returned: not dropped this time
        pass


def test_a_dropped_interrupt_is_raised_at_the_next_check():
    with remember_interrupts():
        check_interrupted()  # nothing pending
        drop_an_interrupt()
        with pytest.raises(KeyboardInterrupt):
            check_interrupted()
    check_interrupted()  # forgotten once the run is over
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_training_loop_stops_at_the_next_step_with_the_resume_hint():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(5)]
    steps = []

    class Loader(list):
        def __iter__(self):
            for i, batch in enumerate(list.__iter__(self)):
                steps.append(i)
                if i == 1:
                    drop_an_interrupt()
                yield batch

    class RunDir:
        last_checkpoint = "runs/x/checkpoint.pth.tar"

    def train():
        train_one_epoch(model, Loader(batches), nn.CrossEntropyLoss(), opt, None, 0, torch.device("cpu"))

    with pytest.raises(Interrupted, match="last good checkpoint: runs/x/checkpoint.pth.tar"):
        resumable(RunDir(), train)
    assert steps == [0, 1]  # stopped before the third step, not after the fifth
