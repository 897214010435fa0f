import pytest
import torch

from compressor.core.errors import UsageError
from compressor.training.optimizers import load_optimizer_state, make_optimizer, optimizer_name


def test_each_optimizer_by_name_and_resume_keeps_its_own():
    params = [torch.nn.Parameter(torch.ones(2))]
    sgd = make_optimizer("sgd", params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    adamw = make_optimizer("adamw", params, lr=1e-3, momentum=0.9, weight_decay=0.05)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 0.05
    params[0].grad = torch.ones(2)
    sgd.step()
    assert optimizer_name(sgd.state_dict()) == "sgd" and optimizer_name(adamw.state_dict()) == "adamw"
    with pytest.raises(UsageError, match="trained with --optimizer sgd; resume with --optimizer sgd, or add "
                                         "--reset-optimizer"):
        load_optimizer_state(adamw, "adamw", sgd.state_dict())
    fresh = make_optimizer("sgd", params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    load_optimizer_state(fresh, "sgd", sgd.state_dict())
    buffers = [o.state_dict()["state"][0]["momentum_buffer"] for o in (fresh, sgd)]
    assert torch.equal(*buffers)
    with pytest.raises(UsageError, match="expected one of sgd, adamw"):
        make_optimizer("adam", params, 0.1, 0.9, 0.0)
