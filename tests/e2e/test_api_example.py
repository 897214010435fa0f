"""The documented Python API (docs/api.md): the example training loop runs and trains a quantized model."""

import os
import re
import subprocess
import sys

import pytest
import torch

from compressor import api
from compressor.core.errors import RecipeError
from compressor.models import create_model


@pytest.mark.slow
def test_the_example_training_loop_trains_quantized_resumes_and_exports(root, tmp_path):
    out = subprocess.run([sys.executable, os.path.join(root, "examples", "train_loop.py"), "--epochs", "3",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    top1 = [float(v) for v in re.findall(r"^epoch \d: test top-1 ([\d.]+) %", out.stdout, re.M)]
    assert len(top1) == 3 and top1[-1] >= 95.0  # two quantized epochs learn the digits
    assert f"resumed at epoch 3: test top-1 {top1[-1]:.2f} %" in out.stdout  # the checkpoint resumes exactly
    agreement = float(re.search(r"ONNX agrees with the simulation on ([\d.]+) %", out.stdout).group(1))
    assert agreement >= 99.5 and os.path.getsize(tmp_path / "model.onnx") > 0
    checkpoint = torch.load(tmp_path / "checkpoint.pth.tar", weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["compression_sched"]["quantizer"]["class"] == \
        "QuantAwareTrainRangeLinearQuantizer"


def test_file_config_takes_a_path_validates_it_and_refuses_a_given_scheduler(root, tmp_path):
    model = create_model("simplenet_digits", "digits")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = api.file_config(model, optimizer, os.path.join(root, "tests", "data", "qat_8bit_digits.yaml"))
    assert scheduler.quantizer is not None and scheduler.model is not model  # the prepared model to train
    bad = tmp_path / "bad.yaml"
    bad.write_text("quantizers:\n  q:\n    class: NoSuchQuantizer\n")
    with pytest.raises(RecipeError, match=f"{bad}:3"):
        api.file_config(model, optimizer, str(bad))
    with pytest.raises(ValueError, match="scheduler=None"):
        api.file_config(model, optimizer, {"policies": []}, scheduler=scheduler)
