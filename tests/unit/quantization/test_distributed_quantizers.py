"""Every low-bit training quantizer under DistributedDataParallel (issue 13: every quantizer and policy runs under DDP).

For each recipe, 2 gloo processes (127.0.0.1) train the tiny net of ``distributed_harness`` for EPOCHS epochs on
their halves of the same global batches, wrapped as the app wraps it (``find_unused_parameters=True``). Both ranks
must end with bit-identical state -- weights, learned quantizer parameters (PACT clips, TTQ scales), every buffer
(INQ masks and frozen values) and the quantizer switches -- equal to one process trained on the whole batches.
"""

import pytest
import torch
from distributed_harness import ddp, qat_data, qat_model, run_ranks, shard, train_steps

from compressor.quantization.quant_module import QuantModule

EPOCHS = 2
ALL_EPOCHS = {"starting_epoch": 0, "ending_epoch": 10, "frequency": 1}


def recipe(quantizer, policy=None):
    """One quantizer with its policy: no per-layer overrides (the tiny net's layers have no resnet names)."""
    return {
        "version": 1,
        "quantizers": {"q": quantizer},
        "policies": [{"quantizer": {"instance_name": "q"}, **(policy or ALL_EPOCHS)}],
    }


PACT = {"class": "PACTQuantizer", "bits_activations": 4, "bits_weights": 4, "act_clip_decay": 0.0001,
        # a clip the ReLU outputs cross (more on rank 1's wider half), so its gradient is not zero
        "act_clip_init_val": 1.0}

# (recipe, names of the learned quantizer parameters it must have)
CASES = {
    "dorefa_w4a4": (recipe({"class": "DorefaQuantizer", "bits_activations": 4, "bits_weights": 4}), ()),
    "pact_w4a4": (recipe(PACT), ("clip_val",)),
    # the clip is idle (not in the graph) for the whole first epoch: what find_unused_parameters is for
    "pact_w4a4_from_epoch_1": (recipe(PACT, {**ALL_EPOCHS, "starting_epoch": 1}), ("clip_val",)),
    "ttq_ternary_a8": (recipe({"class": "DorefaQuantizer", "bits_activations": 8, "bits_weights": 2,
                               "weights_method": "TTQ"}), ("wp", "wn")),
    "twn_ternary_a8": (recipe({"class": "DorefaQuantizer", "bits_activations": 8, "bits_weights": 2,
                               "weights_method": "TWN"}), ()),
    "xnor_binary_a8": (recipe({"class": "DorefaQuantizer", "bits_activations": 8, "bits_weights": 1,
                               "weights_method": "XNOR"}), ()),
    "xnor_binary_weights_and_activations": (recipe({"class": "DorefaQuantizer", "bits_weights": 1,
                                                    "weights_method": "XNOR", "binary_activations": True}), ()),
    "wrpn_w4a4_2x": (recipe({"class": "WRPNQuantizer", "bits_activations": 4, "bits_weights": 4,
                             "width_multiplier": 2}), ()),
    # half of each layer frozen at epoch 0, three quarters at epoch 1 (chosen from the weights trained so far)
    "inq_5bit": (recipe({"class": "INQQuantizer", "bits_weights": 5, "accumulated_portions": [0.5, 0.75]},
                        {"epochs": [0, 1]}), ()),
}


def train(name, rank=None, world=1):
    """The state after EPOCHS epochs: on ``rank``'s shard under DDP when ``rank`` is given, else in one process
    on the whole batches (``world=2`` without a rank: on rank 0's shard alone, as an unsynchronized rank would)."""
    sched, opt = qat_model(CASES[name][0])
    x, y = qat_data()
    if rank is None:
        net, part = sched.model, shard(0, world)
    else:
        net, part = ddp(sched.model, rank, world), shard(rank, world)
    for epoch in range(EPOCHS):  # the app's order: wrapped first, then each epoch begun by the scheduler
        sched.on_epoch_begin(epoch, opt)
        train_steps(net, opt, x, y, part)
        sched.on_epoch_end(epoch, opt)
    return sched.model


def learned_quantizer_parameters(model):
    """State-dict names of the parameters the quantizer modules own (PACT clip values, TTQ scales)."""
    return {f"{m_name}.{p_name}" for m_name, m in model.named_modules() if isinstance(m, QuantModule)
            for p_name, _ in m.named_parameters(recurse=False)}


def _train_rank(rank, world, name, out):
    torch.save(train(name, rank, world).state_dict(), f"{out}/{rank}.pt")


def assert_ranks_equal_one_process(ranks, single):
    assert set(ranks[0]) == set(ranks[1]) == set(single)
    for key, value in single.items():
        if not torch.is_tensor(value):  # the quantizer modules' switches (extra state)
            assert ranks[0][key] == ranks[1][key] == value, key
            continue
        assert torch.equal(ranks[0][key], ranks[1][key]), f"{key} differs between the ranks"
        assert ranks[0][key].dtype == value.dtype and ranks[0][key].shape == value.shape, key
        assert torch.allclose(ranks[0][key].float(), value.float(), rtol=1e-4, atol=1e-6), (
            f"{key}: 2 ranks {ranks[0][key].flatten()[:4]} vs 1 process {value.flatten()[:4]}")


@pytest.mark.parametrize("name", list(CASES))
def test_ranks_hold_identical_state_equal_to_one_process(tmp_path, name):
    run_ranks(_train_rank, 2, (name, str(tmp_path)), timeout=300)
    ranks = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in (0, 1)]
    model = train(name)
    single = model.state_dict()
    assert_ranks_equal_one_process(ranks, single)

    # every quantizer module is switched on at the end, and the learned parameters are where they should be
    switches = [v for k, v in single.items() if k.endswith("_extra_state")]
    assert switches and all(s["enabled"] for s in switches)
    learned = learned_quantizer_parameters(model)
    assert sorted({k.rsplit(".", 1)[1] for k in learned}) == sorted(CASES[name][1])

    # the check can fail: one process on rank 0's half alone (a rank whose gradients were never averaged) ends
    # elsewhere, in its weights and in each learned quantizer parameter, which rank 1's data moved
    alone = train(name, world=2).state_dict()
    with pytest.raises(AssertionError):
        assert_ranks_equal_one_process([alone, alone], single)
    for key in learned:
        assert not torch.allclose(alone[key], single[key], rtol=1e-3, atol=1e-5), key

    if name.startswith("inq"):  # the frozen share and its power-of-two values agree too (buffers above)
        portions = [v.item() for k, v in single.items() if k.endswith(".portion")]
        assert portions and all(p == 0.75 for p in portions)
    if name == "pact_w4a4_from_epoch_1":  # trained in epoch 1 only, but trained
        assert all(single[k].item() != PACT["act_clip_init_val"] for k in learned)
