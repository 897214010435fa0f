import pytest
import torch
from torch import nn

from compressor.recipe.build import build_scheduler, read_recipe
from compressor.scheduling.policies import QuantizationPolicy

RECIPE = """\
quantizers:
  q:
    class: QuantAwareTrainRangeLinearQuantizer
    bits_activations: 4
    bits_weights: 4
    mode: ASYMMETRIC_UNSIGNED
lr_schedulers:
  lr:
    class: {lr_class}
{lr_args}
policies:
  - quantizer: {{instance_name: q}}
    starting_epoch: 2
    ending_epoch: 4
    frequency: 1
  - lr_scheduler: {{instance_name: lr}}
    starting_epoch: 0
    ending_epoch: 3
    frequency: 1
"""


def make(lr_class="StepLR", lr_args="    step_size: 1\n    gamma: 0.5"):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    recipe = read_recipe(RECIPE.format(lr_class=lr_class, lr_args=lr_args), file="t.yaml")
    return model, opt, build_scheduler(recipe, model, opt)


def test_quantization_window_fp32_then_quantized_then_frozen():
    model, opt, sched = make()
    qmodel = sched.model
    x = torch.randn(8, 1, 4, 4)
    with torch.no_grad():
        ref = model.eval()(x)
    for epoch in (0, 1):
        sched.on_epoch_begin(epoch, opt)
        qmodel.eval()
        assert torch.equal(qmodel(x), ref), "FP32 before starting_epoch"
    sched.on_epoch_begin(2, opt)
    assert sched.policies[0].phase == QuantizationPolicy.TRAINING
    qmodel.train()
    qmodel(x)
    qmodel.eval()
    assert not torch.equal(qmodel(x), ref), "quantized from starting_epoch"
    act = sched.quantizer.activation_quantizers["input"]
    sched.on_epoch_begin(4, opt)
    assert sched.policies[0].phase == QuantizationPolicy.FROZEN
    frozen = act.scale.clone(), act.observer.num_updates.item()
    wq = sched.quantizer.weight_quantizers["0.weight"]
    w_scale = wq.scale.clone()
    with torch.no_grad():
        qmodel.get_submodule("0").parametrizations.weight.original.mul_(3.0)
    qmodel.train()
    qmodel(x * 5)
    assert torch.equal(act.scale, frozen[0]) and act.observer.num_updates.item() == frozen[1], (
        "ranges stop after ending_epoch"
    )
    assert torch.equal(wq.scale, w_scale), "weight scales stop after ending_epoch"
    qmodel.eval()
    assert not torch.equal(qmodel(x), ref), "still quantized after ending_epoch"


def test_lr_policy_acts_only_in_its_epochs():
    _, opt, sched = make()
    lrs = []
    for epoch in range(6):
        sched.on_epoch_begin(epoch, opt)
        sched.on_epoch_end(epoch, opt, metrics={"min": 1.0, "max": 50.0})
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == [0.5, 0.25, 0.125, 0.125, 0.125, 0.125]


def test_reduce_lr_on_plateau_is_fed_validation_metrics():
    _, opt, sched = make("ReduceLROnPlateau", "    mode: max\n    patience: 0\n    factor: 0.1")
    for epoch, top1 in enumerate([50.0, 60.0, 55.0]):
        sched.on_epoch_end(epoch, opt, metrics={"min": 1.0, "max": top1})
    assert abs(opt.param_groups[0]["lr"] - 0.1) < 1e-12  # reduced once, after the drop


def test_state_dict_round_trip_rederives_phase():
    _, opt, sched = make()
    sched.on_epoch_begin(3, opt)
    sched.on_epoch_end(3, opt)
    state = sched.state_dict()
    _, opt2, sched2 = make()
    sched2.load_state_dict(state)
    assert sched2.policies[0].phase == QuantizationPolicy.TRAINING
    assert all(q.enabled for q in sched2.quantizer.activation_quantizers.values())


def test_before_backward_pass_returns_loss_components():
    _, opt, sched = make()
    loss = torch.tensor(2.0)
    out = sched.before_backward_pass(0, 0, 1, loss, opt, return_loss_components=True)
    assert out.overall_loss is loss and out.loss_components == []


CALIBRATED = RECIPE.replace(
    "policies:\n",
    """calibrators:
  c:
    class: ActivationCalibrator
    num_batches: 2
    clip_acts: AVG
policies:
  - calibrator: {{instance_name: c}}
    epochs: [2]
""",
)


def test_calibration_stage_starts_ranges_from_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    recipe = read_recipe(CALIBRATED.format(lr_class="StepLR", lr_args="    step_size: 1"), file="t.yaml")
    sched = build_scheduler(recipe, model, opt)
    data = torch.utils.data.TensorDataset(torch.randn(64, 1, 4, 4) * 3, torch.zeros(64, dtype=torch.long))
    sched.set_calibration_data(torch.utils.data.DataLoader(data, batch_size=16))
    act = sched.quantizer.activation_quantizers["input"]
    sched.on_epoch_begin(1, opt)
    assert not act.observed  # FP32 phase: nothing calibrated yet
    sched.on_epoch_begin(2, opt)  # quantization starts and the calibration stage runs after it
    x = data.tensors[0][:32].flatten(1)
    lo, hi = act.range
    assert lo == pytest.approx(x.min(1).values.mean().item(), rel=1e-4)  # AVG over the 2 batches
    assert hi == pytest.approx(x.max(1).values.mean().item(), rel=1e-4)
    sched.model.train()
    sched.model(torch.zeros(4, 1, 4, 4))
    lo2, hi2 = act.range  # the moving average continues from the calibrated range
    assert lo2 == pytest.approx(0.999 * lo, rel=1e-3) and hi2 == pytest.approx(0.999 * hi, rel=1e-3)


def test_calibrator_without_quantizer_is_an_error():
    from compressor.core.errors import RecipeError

    text = """calibrators:
  c: {class: ActivationCalibrator}
policies:
  - calibrator: {instance_name: c}
    epochs: [0]
"""
    with pytest.raises(RecipeError, match="needs a quantizer policy"):
        read_recipe(text, file="t.yaml")
