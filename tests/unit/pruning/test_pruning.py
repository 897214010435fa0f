"""Pruners, masks and thinning on fixed examples: the schedule, the choices, exactness of thinning, Distiller's
published sparsity for its own resnet20 recipe."""

import io
import os

import pytest
import torch
import torch.nn as nn

from compressor.core.errors import CheckpointError, RecipeError
from compressor.models import create_model
from compressor.pruning import criteria
from compressor.pruning.graph import channel_groups
from compressor.pruning.masks import ParameterMasks, find_parameter
from compressor.pruning.pruners import (
    ActivationAPoZRankedFilterPruner,
    AutomatedGradualPruner,
    L1RankedStructureParameterPruner,
    PruneStep,
    SemiStructuredPruner,
)
from compressor.pruning.schedule import agp_sparsity
from compressor.pruning.summary import sparsity_table
from compressor.pruning.thinning import apply_record, restore_thinning, thin
from compressor.recipe.build import build_scheduler, read_recipe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _resnet(seed=0):
    torch.manual_seed(seed)
    model = create_model("resnet20_cifar", "cifar10")
    for m in model.modules():  # trained-looking batch-norms, so "zero in, zero out" is not an accident
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


def _step(model, masks, epoch=0, start=0, end=1, frequency=1, batches=None):
    return PruneStep(model, masks, epoch, start, end, frequency, channel_groups(model), batches=batches)


def test_agp_schedule_is_distillers_cubic():
    # start 0, end 30, every 2 epochs: span 28, so epoch 28 (the last pruning epoch) reaches the final sparsity
    assert agp_sparsity(0.1, 0.5, 0, 0, 30, 2) == pytest.approx(0.1)
    assert agp_sparsity(0.1, 0.5, 28, 0, 30, 2) == pytest.approx(0.5)
    assert agp_sparsity(0.1, 0.5, 14, 0, 30, 2) == pytest.approx(0.5 - 0.4 * 0.5 ** 3)
    values = [agp_sparsity(0.05, 0.7, e, 30, 50, 2) for e in range(30, 50, 2)]
    assert values == sorted(values) and values[-1] == pytest.approx(0.7)


def test_level_and_nm_masks():
    w = torch.arange(1.0, 17.0).view(4, 4) * torch.tensor([1.0, -1.0, 1.0, -1.0])
    keep = criteria.level_mask(w, 0.25)
    assert int((~keep).sum()) == 4 and bool((w.abs()[~keep] <= 4).all())
    nm = criteria.n_of_m_mask(torch.randn(8, 16), 2, 4)
    assert bool((nm.view(8, 4, 4).sum(2) == 2).all())
    with pytest.raises(ValueError, match="divide by 4"):
        criteria.n_of_m_mask(torch.randn(3, 6), 2, 4)


def test_agp_masks_grow_and_stay_zero_through_sgd_with_momentum_and_weight_decay():
    model = _resnet()
    masks = ParameterMasks()
    pruner = AutomatedGradualPruner(initial_sparsity=0.2, final_sparsity=0.8, weights=["module.layer3.1.conv1.weight"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    w = find_parameter(model, "layer3.1.conv1.weight")
    previous = None
    for epoch in range(4):
        pruner.prune(_step(model, masks, epoch, 0, 4, 1))
        masks.apply(model)
        for _ in range(2):
            loss = model(torch.randn(4, 3, 32, 32)).square().mean()
            loss.backward()
            masks.mask_gradients(model)
            opt.step()
            opt.zero_grad()
            masks.apply(model)
        pruned = ~masks["layer3.1.conv1.weight"]
        assert bool((w[pruned] == 0).all())
        if previous is not None:
            assert bool((pruned | ~previous).all() and (previous <= pruned).all())  # never revived
        previous = pruned
    assert (w == 0).float().mean().item() == pytest.approx(0.8, abs=1e-3)


def test_filters_meeting_at_an_add_are_pruned_alike_with_their_batchnorm():
    model = _resnet()
    masks = ParameterMasks()
    names = ["layer2.0.conv2.weight", "layer2.0.downsample.0.weight", "layer2.1.conv2.weight"]
    L1RankedStructureParameterPruner(group_type="Filters", desired_sparsity=0.5, weights=names).prune(
        _step(model, masks))
    gone = [set(torch.nonzero(~masks[n].reshape(32, -1).any(1)).flatten().tolist()) for n in names]
    assert len(gone[0]) == 16 and gone[0] == gone[1] == gone[2]
    for bn in ("layer2.0.bn2", "layer2.0.downsample.1", "layer2.1.bn2"):
        assert set(torch.nonzero(~masks[f"{bn}.weight"]).flatten().tolist()) == gone[0]
        assert set(torch.nonzero(~masks[f"{bn}.bias"]).flatten().tolist()) == gone[0]


def test_floor_of_the_fraction_as_distiller():
    model = _resnet()
    masks = ParameterMasks()
    L1RankedStructureParameterPruner(group_type="Filters", desired_sparsity=0.3, weights=["layer1.0.conv1.weight"]
                                     ).prune(_step(model, masks))
    assert int((~masks["layer1.0.conv1.weight"].reshape(16, -1).any(1)).sum()) == 4  # floor(0.3 * 16)




def test_group_size_prunes_in_multiples_and_never_removes_a_whole_layer():
    model = _resnet()
    masks = ParameterMasks()
    L1RankedStructureParameterPruner(group_type="Filters", desired_sparsity=0.3, group_size=8,
                                     weights=["layer2.0.conv1.weight", "layer3.0.conv1.weight"]
                                     ).prune(_step(model, masks))
    gone = {n: int((~masks[f"{n}.0.conv1.weight"].flatten(1).any(1)).sum()) for n in ("layer2", "layer3")}
    assert gone == {"layer2": 8, "layer3": 16}  # floor(0.3 * 32 / 8) * 8 and floor(0.3 * 64 / 8) * 8
    assert criteria.bottom_structures(torch.arange(16.0), 0.99, group_size=8).tolist() == list(range(8))
    assert criteria.bottom_structures(torch.arange(16.0), 0.99).numel() == 15
    assert criteria.bottom_structures(torch.arange(4.0), 0.9, group_size=8).numel() == 0
@pytest.mark.parametrize("mode", ["filters", "channels"])
def test_thinning_keeps_the_function_and_a_fresh_model_loads_the_thinned_weights(mode):
    model = _resnet()
    masks = ParameterMasks()
    if mode == "filters":
        weights = ["layer2.0.conv1.weight", "layer2.0.conv2.weight", "layer2.0.downsample.0.weight",
                   "layer2.1.conv2.weight", "layer2.2.conv2.weight", "layer3.1.conv1.weight"]
        L1RankedStructureParameterPruner(group_type="Filters", desired_sparsity=0.5, weights=weights).prune(
            _step(model, masks))
    else:
        weights = ["layer3.1.conv2.weight", "layer1.0.conv2.weight"]
        L1RankedStructureParameterPruner(group_type="Channels", desired_sparsity=0.5, weights=weights).prune(
            _step(model, masks))
    masks.apply(model)
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    before, params = model(x), sum(p.numel() for p in model.parameters())
    record, report = thin(model, mode, masks=masks)
    after = model(x)
    assert torch.allclose(before, after, atol=1e-5), (before - after).abs().max()
    assert sum(p.numel() for p in model.parameters()) < params
    assert report
    for name, mask in masks.items():  # masks cut alike
        assert mask.shape == find_parameter(model, name).shape, name
    fresh = create_model("resnet20_cifar", "cifar10")
    apply_record(fresh, record)
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    assert torch.equal(fresh(x), after)


def test_thinning_replaces_parameters_in_the_optimizer_with_their_state_and_trains_on():
    model = _resnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    masks = ParameterMasks()
    L1RankedStructureParameterPruner(group_type="Filters", desired_sparsity=0.5, weights=["layer1.0.conv1.weight"]
                                     ).prune(_step(model, masks))
    masks.apply(model)
    momentum = opt.state[model.layer1[0].conv1.weight]["momentum_buffer"].clone()
    keep = masks["layer1.0.conv1.weight"].reshape(16, -1).any(1)
    thin(model, "filters", opt, masks)
    w = model.layer1[0].conv1.weight
    assert w.shape[0] == 8 and any(p is w for p in opt.param_groups[0]["params"])
    assert torch.equal(opt.state[w]["momentum_buffer"], momentum[keep])
    model(torch.randn(2, 3, 32, 32)).sum().backward()  # autograd works with the new shapes
    opt.step()


@pytest.mark.parametrize("arch", ["mobilenet_v2", "densenet121", "googlenet", "squeezenet1_1", "efficientnet_b0"])
def test_thinning_through_depthwise_convolutions_and_concatenations_is_exact(arch):
    torch.manual_seed(0)
    model = create_model(arch, "imagenet")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    model.eval()
    groups, owner = channel_groups(model)
    # every filter that is its channels' only producer, where the channels can be removed
    names = [f"{g.producers[0]}.weight" for g in groups.values() if len(g.producers) == 1 and not g.frozen]
    masks = ParameterMasks()
    L1RankedStructureParameterPruner(group_type="Filters", desired_sparsity=0.5, weights=names).prune(
        PruneStep(model, masks, 0, 0, 1, 1, (groups, owner)))
    masks.apply(model)
    x = torch.randn(1, 3, 224, 224)
    before, params = model(x), sum(p.numel() for p in model.parameters())
    record, _ = thin(model, masks=masks)
    after = model(x)
    assert (before - after).abs().max() <= 1e-5 * before.abs().max()
    assert sum(p.numel() for p in model.parameters()) < 0.8 * params
    fresh = create_model(arch, "imagenet")
    apply_record(fresh, record)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.eval()(x), after)


def test_frozen_groups_are_left_whole_and_said_so():
    groups, _ = channel_groups(create_model("efficientnet_b0", "imagenet"))
    reasons = [g.frozen for g in groups.values() if g.frozen]
    assert any("mul reads" in r for r in reasons) and any("output" in r for r in reasons)
    groups, _ = channel_groups(create_model("resnext50_32x4d", "imagenet"))
    assert any("grouped convolution" in (g.frozen or "") for g in groups.values())


def test_activation_apoz_prunes_the_filters_that_are_most_often_zero():
    model = _resnet()
    bn = model.layer1[0].bn1
    with torch.no_grad():
        bn.bias[:4] = -100.0  # channels 0-3 always negative before the ReLU: APoZ 1
    masks = ParameterMasks()
    batches = [(torch.randn(8, 3, 32, 32), torch.zeros(8)) for _ in range(2)]
    ActivationAPoZRankedFilterPruner(group_type="Filters", desired_sparsity=0.25,
                                     weights=["layer1.0.conv1.weight"]).prune(_step(model, masks, batches=batches))
    gone = torch.nonzero(~masks["layer1.0.conv1.weight"].reshape(16, -1).any(1)).flatten().tolist()
    assert gone == [0, 1, 2, 3]


def test_semi_structured_two_of_four():
    model = _resnet()
    masks = ParameterMasks()
    SemiStructuredPruner(weights=["layer3.0.conv2.weight"]).prune(_step(model, masks))
    m = masks["layer3.0.conv2.weight"].reshape(64, -1, 4)
    assert bool((m.sum(2) == 2).all())


def _run_schedule(recipe, epochs, model=None):
    model = model or _resnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scheduler = build_scheduler(read_recipe(recipe), model, opt)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for epoch in epochs:
        scheduler.on_epoch_begin(epoch, opt)
        loss = nn.functional.cross_entropy(scheduler.model(x), y)
        loss.backward()
        scheduler.before_parameter_optimization(epoch, 0, 1, opt)
        opt.step()
        opt.zero_grad()
        scheduler.on_minibatch_end(epoch, 0, 1, opt)
        scheduler.on_epoch_end(epoch, opt)
    return scheduler, opt


def test_distillers_resnet20_filter_recipe_runs_unchanged_to_its_published_sparsity():
    # its header: "Total sparsity: 46.32", 223,536 dense and 120,000 nonzero weights after thinning at epoch 30
    recipe = os.path.join(ROOT, "schedules", "distiller", "pruning", "resnet20_filters.schedule_agp.yaml")
    scheduler, _ = _run_schedule(recipe, range(0, 50))
    _, total = sparsity_table(scheduler.model)
    weights = [find_parameter(scheduler.model, f"{n}.weight") for n, m in scheduler.model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert sum(w.numel() for w in weights) == 223536
    assert abs(sum(int(torch.count_nonzero(w)) for w in weights) - 120000) <= 8
    assert 100 * total == pytest.approx(46.32, abs=0.01)
    assert scheduler.model.layer2[0].conv2.weight.shape == (16, 16, 3, 3)


def test_masks_and_thinning_survive_a_checkpoint_loaded_with_weights_only():
    recipe = os.path.join(ROOT, "schedules", "distiller", "pruning", "resnet20_filters.schedule_agp.yaml")
    scheduler, _ = _run_schedule(recipe, range(0, 34))
    buf = io.BytesIO()
    torch.save({"sched": scheduler.state_dict(), "weights": scheduler.model.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model = create_model("resnet20_cifar", "cifar10")
    restore_thinning(model, scheduler.keeper.thinning, "test")
    model.load_state_dict(saved["weights"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    again = build_scheduler(read_recipe(recipe), model, opt)
    again.load_state_dict(saved["sched"])
    for name, mask in scheduler.masks.items():
        assert torch.equal(again.masks[name], mask)
    again.on_epoch_begin(34, opt)  # masks held on, pruning goes on from the restored masks
    w = find_parameter(model, "layer3.1.conv1.weight")
    assert bool((w[~again.masks["layer3.1.conv1.weight"]] == 0).all())
    with pytest.raises(CheckpointError, match="thinning record does not fit"):
        restore_thinning(create_model("simplenet_digits", "digits"), scheduler.keeper.thinning, "x.pth.tar")


def test_pruned_zeros_stay_zero_under_quantization_aware_training():
    recipe = {
        "version": 1,
        "quantizers": {"q": {"class": "QuantAwareTrainRangeLinearQuantizer", "bits_activations": 8,
                             "bits_weights": 8, "per_channel_wts": True}},
        "pruners": {"p": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.3, "final_sparsity": 0.6,
                          "weights": ["layer3.1.conv1.weight"]}},
        "policies": [{"pruner": {"instance_name": "p"}, "starting_epoch": 0, "ending_epoch": 2, "frequency": 1},
                     {"quantizer": {"instance_name": "q"}, "starting_epoch": 0, "ending_epoch": 3,
                      "frequency": 1}],
    }
    model = _resnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scheduler = build_scheduler(read_recipe(recipe), model, opt)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for epoch in range(3):
        scheduler.on_epoch_begin(epoch, opt)
        nn.functional.cross_entropy(scheduler.model(x), y).backward()
        scheduler.before_parameter_optimization(epoch, 0, 1, opt)
        opt.step()
        opt.zero_grad()
        scheduler.on_minibatch_end(epoch, 0, 1, opt)
    conv = scheduler.model.get_submodule("layer3.1.conv1")
    quantized = conv.weight  # through the weight quantizer's parametrization
    mask = scheduler.masks["layer3.1.conv1.weight"]
    assert (~mask).float().mean().item() == pytest.approx(0.6, abs=1e-3)
    assert bool((quantized[~mask] == 0).all()) and bool((quantized[mask] != 0).any())


def _issues(recipe):
    with pytest.raises(RecipeError) as err:
        model = create_model("resnet20_cifar", "cifar10")
        build_scheduler(read_recipe(recipe, file="r.yaml"), model, torch.optim.SGD(model.parameters(), lr=0.1))
    return str(err.value)


def test_recipe_mistakes_name_file_line_and_key():
    text = """version: 1
pruners:
  p:
    class: AutomatedGradualPruner
    initial_sparsity: 0.5
    final_sparsity: 0.2
    weights: [module.layer9.conv1.weight]
policies:
  - pruner: {instance_name: p, args: {mask_on_forward_only: true}}
    starting_epoch: 0
    ending_epoch: 4
"""
    message = _issues(text)
    assert "r.yaml:6: pruners.p.final_sparsity" in message and "must be greater" in message
    assert "mask_on_forward_only: not supported" in message
    fixed = text.replace("0.2", "0.8").replace(", args: {mask_on_forward_only: true}", "")
    assert "r.yaml:7:" in _issues(fixed) and "no parameter 'module.layer9.conv1.weight'" in _issues(fixed)
    both = fixed.replace("layer9", "layer1.0") + """quantizers:
  q: {class: QuantAwareTrainRangeLinearQuantizer}
extensions:
  t: {class: FilterRemover}
"""
    both = both.replace("policies:\n", "policies:\n  - quantizer: {instance_name: q}\n    starting_epoch: 0\n"
                                       "    ending_epoch: 4\n  - extension: {instance_name: t}\n    epochs: [2]\n")
    assert "thinning and a quantizer in one recipe are not supported" in _issues(both)


def test_level_star_means_every_conv_and_linear_weight_and_names_override_it():
    from compressor.pruning.pruners import SensitivityPruner, SparsityLevelParameterPruner

    model = _resnet()
    masks = ParameterMasks()
    SparsityLevelParameterPruner(levels={"*": 0.5, "module.fc.weight": 0.2}).prune(_step(model, masks))
    assert (~masks["fc.weight"]).float().mean().item() == pytest.approx(0.2)
    assert (~masks["layer2.1.conv1.weight"]).float().mean().item() == pytest.approx(0.5)
    assert "bn1.weight" not in masks  # batch-norm is not a '*' target (Distiller pruned it too)
    w = find_parameter(model, "layer1.0.conv1.weight")
    SensitivityPruner(sensitivities={"layer1.0.conv1.weight": 1.0}).prune(_step(model, masks))
    assert bool((w.abs()[~masks["layer1.0.conv1.weight"]] <= w.std()).all())


def test_sensitivity_prunes_one_weight_at_a_time_and_restores_it():
    from compressor.pruning.sensitivity import pruning_sensitivity

    model = _resnet().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 3, 32, 32)
    seen = []

    def evaluate(m):
        zeros = {n: int((p == 0).sum()) for n, p in m.named_parameters() if p.dim() == 4}
        seen.append(zeros)
        return {"top1": float(m(x).abs().sum())}

    rows = pruning_sensitivity(model, evaluate, "filter", [0.0, 0.5])
    assert len(rows) == 2 * 21  # 19 convolutions in resnet20_cifar and 2 downsampling ones
    name, level, _ = rows[3]
    assert (name, level) == ("layer1.0.conv1.weight", 0.5)
    assert seen[3]["layer1.0.conv1.weight"] == 8 * 16 * 9 and seen[3]["layer1.0.conv2.weight"] == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_python_api_checkpoints_carry_the_thinning(tmp_path):
    from compressor import api

    recipe = os.path.join(ROOT, "schedules", "distiller", "pruning", "resnet20_filters.schedule_agp.yaml")
    scheduler, opt = _run_schedule(recipe, range(28, 32))
    path = api.save_checkpoint(str(tmp_path / "ck.pth.tar"), 31, scheduler, opt, arch="resnet20_cifar")
    model = create_model("resnet20_cifar", "cifar10")
    opt2 = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    again = api.file_config(model, opt2, recipe)
    assert api.load_checkpoint(path, again, opt2) == 32
    assert model.layer2[0].conv1.weight.shape == (16, 16, 3, 3)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.eval()(x), scheduler.model.eval()(x))
    assert any(p is model.layer2[0].conv1.weight for p in opt2.param_groups[0]["params"])
    apply_record(model, scheduler.keeper.thinning)  # already cut: left as it is
    assert model.layer2[0].conv1.weight.shape == (16, 16, 3, 3)
