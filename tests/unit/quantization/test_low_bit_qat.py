import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compressor.core.errors import RecipeError
from compressor.quantization.low_bit.activations import BinaryActivation, ClippedLinearQuant, LearnedClipQuant
from compressor.quantization.low_bit.weights import DorefaWeight, TrainedTernaryWeight, WRPNWeight, XnorWeight
from compressor.recipe.build import build_scheduler, read_recipe


class Functional(nn.Module):
    """ReLU as a function and as a module, plus an add with no ReLU after it."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        y = self.relu(self.conv2(x)) + x
        return self.fc(y.mean((2, 3)))


def prepare(cls, model=None, **args):
    model = model or Functional()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-4)
    recipe = read_recipe(
        {
            "quantizers": {"q": {"class": cls, **args}},
            "policies": [{"quantizer": {"instance_name": "q"}, "starting_epoch": 0, "ending_epoch": 3}],
        }
    )
    sched = build_scheduler(recipe, model, opt)
    sched.on_epoch_begin(0, opt)
    return sched, opt


def test_dorefa_clips_every_relu_functional_or_module_and_nothing_else():
    sched, _ = prepare("DorefaQuantizer", bits_activations=2, bits_weights=3)
    acts = sched.quantizer.activation_quantizers
    assert set(acts) == {"relu", "relu_1"} or len(acts) == 2
    assert all(isinstance(q, ClippedLinearQuant) and q.clip_val.item() == 1.0 for q in acts.values())
    assert all(isinstance(q, DorefaWeight) for q in sched.quantizer.weight_quantizers.values())
    # outputs of the clipped ReLUs lie on the 2-bit grid in [0, 1]
    seen = []
    hooks = [q.register_forward_hook(lambda m, i, o: seen.append(o)) for q in acts.values()]
    sched.model(torch.randn(2, 1, 6, 6) * 5)
    for h in hooks:
        h.remove()
    for out in seen:
        assert out.min() >= 0 and out.max() <= 1
        assert torch.allclose(out * 3, torch.round(out * 3))


def test_pact_clip_values_join_the_optimizer_with_their_decay_and_learn():
    sched, opt = prepare(
        "PACTQuantizer", bits_activations=4, bits_weights=4, act_clip_init_val=0.5, act_clip_decay=0.01
    )
    clips = [q.clip_val for q in sched.quantizer.activation_quantizers.values()]
    assert all(isinstance(q, LearnedClipQuant) for q in sched.quantizer.activation_quantizers.values())
    group = opt.param_groups[-1]
    assert group["weight_decay"] == 0.01 and {id(p) for p in group["params"]} == {id(c) for c in clips}
    before = [c.item() for c in clips]
    sched.model.train()
    out = sched.model(torch.randn(4, 1, 6, 6) * 4)
    out.sum().backward()
    assert all(c.grad is not None for c in clips)
    opt.step()
    assert [c.item() for c in clips] != before


def test_wrpn_weights_and_overrides_choose_binary_and_ternary_per_layer():
    sched, _ = prepare(
        "WRPNQuantizer",
        bits_activations=4,
        bits_weights=4,
        overrides={
            "conv1": {"bits_weights": 1, "weights_method": "XNOR"},
            "conv2": {"bits_weights": 2, "weights_method": "TTQ"},
            "fc": {"bits_weights": 8},
        },
    )
    w = sched.quantizer.weight_quantizers
    assert isinstance(w["conv1.weight"], XnorWeight) and isinstance(w["conv2.weight"], TrainedTernaryWeight)
    assert isinstance(w["fc.weight"], WRPNWeight) and w["fc.weight"].bits == 8


def test_global_binary_method_covers_only_layers_at_its_width():
    sched, _ = prepare("DorefaQuantizer", bits_weights=1, weights_method="XNOR", overrides={"fc": {"bits_weights": 8}})
    w = sched.quantizer.weight_quantizers
    assert isinstance(w["conv1.weight"], XnorWeight) and isinstance(w["fc.weight"], DorefaWeight)


def test_binary_activations_replace_the_relu():
    sched, _ = prepare("DorefaQuantizer", bits_weights=1, weights_method="XNOR", binary_activations=True)
    acts = sched.quantizer.activation_quantizers
    assert len(acts) == 2 and all(isinstance(q, BinaryActivation) for q in acts.values())
    relus = [n for n in sched.model.graph.nodes if n.op == "call_module" and n.target == "relu"]
    assert relus == []  # the module ReLU is gone from the graph
    seen = []
    q = next(iter(acts.values()))
    q.register_forward_hook(lambda m, i, o: seen.append(o))
    sched.model(torch.randn(2, 1, 6, 6))
    assert set(seen[0].unique().tolist()) <= {-1.0, 1.0} and (seen[0] < 0).any()


def test_table_reports_methods_and_model_size():
    sched, _ = prepare(
        "DorefaQuantizer",
        bits_activations=4,
        bits_weights=2,
        weights_method="TWN",
        overrides={"fc": {"bits_weights": None, "bits_activations": None}},
    )
    q = sched.quantizer
    table = q.table()
    assert "2 twn" in table and "4 clipped" in table and "Model size" in table
    model = Functional()
    conv = model.conv1.weight.numel() + model.conv2.weight.numel()
    rest = sum(p.numel() for p in model.parameters()) - conv
    assert q.model_size_bits() == 2 * conv + 32 * rest
    assert q.fp32_bits == 32 * sum(p.numel() for p in model.parameters())


def test_wrpn_needs_two_bits():
    with pytest.raises(ValueError, match="WRPN weights need at least 2 bits"):
        prepare("WRPNQuantizer", bits_weights=1)


def test_bad_low_bit_keys_are_recipe_errors():
    with pytest.raises(RecipeError) as err:
        read_recipe(
            {
                "quantizers": {
                    "q": {
                        "class": "PACTQuantizer",
                        "weights_method": "FOO",
                        "act_clip_init_val": -1,
                        "overrides": {"conv1": {"act_clip_decay": 0.1}},
                    }
                }
            }
        )
    text = str(err.value)
    assert "weights_method" in text and "act_clip_init_val" in text and "unknown per-layer key" in text


@pytest.mark.parametrize("name", ["preact_resnet20_cifar_pact.yaml", "preact_resnet_cifar_dorefa.yaml"])
def test_distiller_low_bit_examples_build_unchanged(root, name):
    from compressor.models import create_model

    model = create_model("preact_resnet20_cifar", "digits")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = build_scheduler(read_recipe(f"{root}/schedules/distiller/{name}"), model, opt)
    sched.on_epoch_begin(0, opt)
    q = sched.quantizer
    assert q.overrides.unused() == []  # every Distiller layer name exists in our model
    assert "conv1.weight" not in q.weight_quantizers and "fc.weight" not in q.weight_quantizers
    assert {"layer1.0.pre_relu", "final_relu"}.isdisjoint(q.activation_quantizers)
    assert q.weight_quantizers["layer1.0.conv1.weight"].bits == 3
    out = sched.model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "lr",
    [{"class": "MultiStepMultiGammaLR", "milestones": [1], "gammas": [0.5]}, {"class": "ExponentialLR", "gamma": 0.5}],
)
def test_lr_schedulers_cover_the_quantizer_parameter_groups(lr):
    model = Functional()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    recipe = read_recipe(
        {
            "quantizers": {"q": {"class": "PACTQuantizer", "bits_activations": 4, "bits_weights": 4}},
            "lr_schedulers": {"lr": lr},
            "policies": [
                {"quantizer": {"instance_name": "q"}, "starting_epoch": 0, "ending_epoch": 3},
                {"lr_scheduler": {"instance_name": "lr"}, "starting_epoch": 0, "ending_epoch": 3},
            ],
        }
    )
    sched = build_scheduler(recipe, model, opt)
    assert len(opt.param_groups) == 2
    for epoch in range(2):
        sched.on_epoch_begin(epoch, opt)
        opt.step()
        sched.on_epoch_end(epoch, opt)
    assert (
        opt.param_groups[0]["lr"] == opt.param_groups[1]["lr"] == pytest.approx(0.05 if "milestones" in lr else 0.025)
    )
