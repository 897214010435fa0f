import pytest
import torch
from torch import nn

from compressor.core.errors import RecipeError
from compressor.quantization.low_bit.inq import INQWeight, power_of_two_levels
from compressor.recipe.build import build_scheduler, read_recipe


def test_power_of_two_codebook():
    w = torch.tensor([0.0, 0.003, 0.01, 0.03, 0.3, 0.74, 0.76, 1.4, -0.3])
    q = power_of_two_levels(w, n1=0, bits=5)  # {0, ±2^-7 .. ±2^0}
    assert q.tolist() == [0.0, 0.0, 2**-7, 2**-5, 0.25, 0.5, 1.0, 1.0, -0.25]


def test_freezing_takes_largest_weights_first_and_keeps_them():
    w = torch.tensor([0.9, -0.05, 0.4, 0.2, -0.6, 0.1, 0.02, 0.3])
    q = INQWeight(w.shape, 5)
    q.set_state(True, True)
    q.freeze_to(w, 0.5)
    assert q.mask.tolist() == [True, False, True, False, True, False, False, True]
    first = q.frozen.clone()
    q.freeze_to(w * 0 + 5.0, 0.5)  # same portion again: nothing changes
    assert torch.equal(q.frozen, first)
    q.freeze_to(w, 0.75)
    assert int(q.mask.sum()) == 6 and q.mask[3] and q.mask[5]
    assert torch.equal(q.frozen[q.mask.clone().logical_and(first != 0)], first[first != 0])


def test_frozen_weights_get_no_gradient():
    w = torch.tensor([0.9, -0.05, 0.4, 0.2], requires_grad=True)
    q = INQWeight(w.shape, 5)
    q.set_state(True, True)
    q.freeze_to(w.detach(), 0.5)
    out = q(w)
    assert out[0].item() == 1.0 and out[1].item() == pytest.approx(-0.05)
    out.sum().backward()
    assert w.grad.tolist() == [0.0, 1.0, 0.0, 1.0]


def _recipe(epochs, portions):
    return {"quantizers": {"inq": {"class": "INQQuantizer", "bits_weights": 5, "accumulated_portions": portions,
                                   "overrides": {"fc": {"bits_weights": None}}}},
            "policies": [{"quantizer": {"instance_name": "inq"}, "epochs": epochs}]}


def test_inq_schedule_follows_policy_epochs():
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(1, 8, 3))
    model.add_module("flat", nn.Flatten())
    model.add_module("fc", nn.Linear(8 * 16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = build_scheduler(read_recipe(_recipe([0, 2, 4], [0.5, 0.75, 1.0])), model, opt)
    (quant,) = sched.quantizer.weight_quantizers.values()  # fc is FP32, conv is quantized
    shares = []
    for epoch in range(6):
        sched.on_epoch_begin(epoch, opt)
        shares.append(quant.mask.float().mean().item())
    assert shares == [0.5, 0.5, 0.75, 0.75, 1.0, 1.0]
    w = sched.model.get_submodule("conv").weight
    assert torch.all((w == 0) | (torch.log2(w.abs()) == torch.round(torch.log2(w.abs()))))


def test_portions_must_pair_with_epochs():
    with pytest.raises(RecipeError, match="3 accumulated_portions but its policy lists 2 epochs"):
        read_recipe(_recipe([0, 2], [0.5, 0.75, 1.0]))
    with pytest.raises(RecipeError, match="increasing list of fractions"):
        read_recipe(_recipe([0, 2], [0.75, 0.5]))
