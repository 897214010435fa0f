"""Distiller's checkpoints load safely: its optimizer class is allowed, nothing else is; missing
BatchNorm num_batches_tracked is accepted; epoch, arch and best top-1 map onto ours."""

import glob
import json
import os

import pytest
import torch

from compressor.app.classifier import main as classifier
from compressor.core.errors import CheckpointError
from compressor.core.io import load_checkpoint
from compressor.core.state_keys import load_weights, model_state
from compressor.models import create_model


def distiller_save(path, model, optimizer, epoch=4, arch="resnet20_cifar", drop_bn_counters=False, parallel=True,
                   **more):
    """What distiller.apputils.save_checkpoint writes (from a DataParallel model: 'module.' prefixes)."""
    state = {("module." + k if parallel else k): v for k, v in model.state_dict().items()
             if not (drop_bn_counters and k.endswith("num_batches_tracked"))}
    checkpoint = {"epoch": epoch, "state_dict": state, "arch": arch, "is_parallel": parallel, "dataset": "digits",
                  "optimizer_state_dict": optimizer.state_dict(), "optimizer_type": type(optimizer),
                  "compression_sched": {"masks_dict": {}},
                  "extras": {"current_top1": 90.5, "best_top1": 93.25, "best_epoch": 3}, **more}
    torch.save(checkpoint, path)
    return path


@pytest.fixture
def trained():
    torch.manual_seed(0)
    model = create_model("resnet20_cifar", "digits")
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_distiller_checkpoint_loads_and_maps(tmp_path, trained):
    model, optimizer = trained
    path = distiller_save(tmp_path / "checkpoint.pth.tar", model, optimizer)
    with pytest.raises(Exception, match="Unsupported global"):  # plain weights_only refuses Distiller's file
        torch.load(path, weights_only=True)
    ckpt = load_checkpoint(str(path))
    assert ckpt["epoch"] == 4 and ckpt["arch"] == "resnet20_cifar" and ckpt["best_scores"] == [[93.25, 0.0, 3]]
    assert "optimizer_type" not in ckpt and "compression_sched" not in ckpt
    fresh = create_model("resnet20_cifar", "digits")
    load_weights(fresh, model_state(ckpt))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(fresh.eval()(x), model.eval()(x))
    again = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    again.load_state_dict(ckpt["optimizer_state_dict"])
    assert len(again.state) == len(optimizer.state)


def test_missing_batchnorm_counters_are_accepted(tmp_path, trained):
    model, optimizer = trained
    path = distiller_save(tmp_path / "ssl.pth.tar", model, optimizer, drop_bn_counters=True, parallel=False)
    fresh = create_model("resnet20_cifar", "digits")
    load_weights(fresh, model_state(load_checkpoint(str(path))))
    assert torch.equal(fresh.layer1[0].bn1.running_mean, model.layer1[0].bn1.running_mean)
    broken = {k: v for k, v in model.state_dict().items() if not k.endswith("bn1.running_mean")}
    with pytest.raises(CheckpointError, match="missing"):
        load_weights(create_model("resnet20_cifar", "digits"), broken)


def test_other_pickled_classes_stay_refused(tmp_path, trained):
    model, optimizer = trained
    path = distiller_save(tmp_path / "evil.pth.tar", model, optimizer,
                          lr_type=torch.optim.lr_scheduler.StepLR)  # a class Distiller does not write
    with pytest.raises(CheckpointError, match="as tensors and plain data"):
        load_checkpoint(str(path))


def test_quantized_distiller_checkpoint_is_refused_clearly(tmp_path, trained):
    model, optimizer = trained
    path = distiller_save(tmp_path / "q.pth.tar", model, optimizer, quantizer_metadata={"params": {"bits": 8}})
    with pytest.raises(CheckpointError, match="quantized Distiller checkpoint"):
        load_checkpoint(str(path))


@pytest.mark.slow
def test_classifier_resumes_and_loads_weights_from_a_distiller_checkpoint(tmp_path, trained):
    model, optimizer = trained
    path = str(distiller_save(tmp_path / "checkpoint.pth.tar", model, optimizer, drop_bn_counters=True))
    for flag in ("--resume-from", "--exp-load-weights-from"):
        name = flag.strip("-").replace("-", "_")
        assert classifier(["-a", "resnet20_cifar", "--dataset", "digits", flag, path, "--evaluate",
                           "--etes", "0.1", "-o", str(tmp_path), "-n", name]) == 0
        (run,) = glob.glob(os.path.join(tmp_path, f"{name}___*"))
        assert json.load(open(os.path.join(run, "summary.json")))["arch"] == "resnet20_cifar"
