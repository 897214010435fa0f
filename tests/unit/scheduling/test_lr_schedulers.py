import pytest
import torch

from compressor.core.errors import RecipeError
from compressor.recipe.build import read_recipe
from compressor.recipe.components import LR_SCHEDULERS


def test_multistep_multigamma_multiplies_each_milestone_gamma():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = LR_SCHEDULERS.get("MultiStepMultiGammaLR")(opt, milestones=[2, 4], gammas=[0.1, 0.5])
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.05, 0.05])
    state = sched.state_dict()
    again = LR_SCHEDULERS.get("MultiStepMultiGammaLR")(opt, milestones=[2, 4], gammas=[0.1, 0.5])
    again.load_state_dict(state)
    assert again.last_epoch == sched.last_epoch


def test_mismatched_gammas_are_a_recipe_error():
    with pytest.raises(RecipeError, match="one gamma per milestone"):
        read_recipe(
            {"lr_schedulers": {"lr": {"class": "MultiStepMultiGammaLR", "milestones": [1, 2], "gammas": [0.1]}}}
        )
