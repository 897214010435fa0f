import pytest
import torch

from compressor.models import create_model
from compressor.quantization.graph import widen


@pytest.mark.parametrize("arch", ["resnet20_cifar", "preact_resnet20_cifar", "simplenet_digits"])
def test_widening_preserves_the_function(arch, monkeypatch):
    monkeypatch.setattr(widen, "SYMMETRY_NOISE", 0.0)
    torch.manual_seed(0)
    model = create_model(arch, "digits").eval()
    x = torch.randn(2, 3, 32, 32) if "cifar" in arch else torch.randn(2, 1, 8, 8)
    before = model(x)
    narrow = {n: p.shape for n, p in model.named_parameters()}
    plan = widen.widen_model(model, 2)
    model.eval()
    assert torch.allclose(model(x), before, atol=1e-5)
    first, last = next(iter(narrow)), list(narrow)[-2]  # first conv weight, last linear weight
    wide = dict(model.named_parameters())
    assert wide[first].shape[1] == narrow[first][1]  # the image's channels are kept
    assert wide[last].shape[0] == narrow[last][0]  # the classes are kept
    assert sum(p.numel() for p in wide.values()) > 3.5 * sum(torch.Size(s).numel() for s in narrow.values())
    assert plan  # every conv/linear/bn is in the plan


def test_widened_narrow_state_loads_into_wrpn_model(tmp_path):
    from compressor.core.state_keys import load_weights
    from compressor.recipe.build import build_scheduler, read_recipe

    torch.manual_seed(0)
    fp32 = create_model("resnet20_cifar", "digits").eval()
    x = torch.randn(2, 3, 32, 32)
    model = create_model("resnet20_cifar", "digits")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    recipe = read_recipe({"quantizers": {"q": {"class": "WRPNQuantizer", "bits_weights": 4, "bits_activations": 4,
                                               "width_multiplier": 2}},
                          "policies": [{"quantizer": {"instance_name": "q"}, "starting_epoch": 1, "ending_epoch": 2}]})
    sched = build_scheduler(recipe, model, opt)
    # the optimizer trains the wide parameters, not the replaced narrow ones
    wide_params = {id(p) for p in sched.model.parameters()}
    assert all(id(p) in wide_params for g in opt.param_groups for p in g["params"])
    load_weights(sched.model, sched.quantizer.adapt_weights(fp32.state_dict()))
    sched.model.eval()
    out = sched.model(x)  # FP32 phase: the widened FP32 model, with symmetry noise
    assert (out.argmax(1) == fp32(x).argmax(1)).all()
    assert (out - fp32(x)).abs().max() < 0.1 * fp32(x).abs().max()
