"""LAPQ: the joint search of clipping values lowers the calibration loss; Lp initialisation per site."""

import pytest
import torch
from torch import nn

from compressor.quantization.linear.lapq import lapq
from compressor.quantization.linear.ptq import PostTrainLinearQuantizer


def setup(bits=3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 12, generator=g)
    x[:4] *= 8  # outliers: min/max ranges are far too wide at 3 bits
    y = model(x).argmax(1)
    data = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]
    q = PostTrainLinearQuantizer(model, bits_activations=bits, bits_parameters=8, mode="ASYMMETRIC_UNSIGNED")
    gm = q.prepare_model()
    q.calibrate(data)
    return q, gm, data


def test_lapq_lowers_the_calibration_loss_and_keeps_the_best_point():
    q, gm, data = setup()
    before = dict(q.ranges)
    start, end = lapq(q, gm, data, nn.CrossEntropyLoss(), maxiter=1, maxfev=80)
    assert end < start * 0.9
    assert q.ranges != before
    with torch.no_grad():
        loss = sum(float(nn.functional.cross_entropy(gm(x), y)) * len(y) for x, y in data) / 256
    assert loss == pytest.approx(end, rel=1e-5)  # the model holds the best ranges found


def test_lp_initialisation_shrinks_ranges_with_outliers():
    q, gm, data = setup()
    before = dict(q.ranges)
    lapq(q, gm, data, nn.CrossEntropyLoss(), init_mode="L2", maxfev=1)
    widths = {n: (hi - lo) / (before[n][1] - before[n][0]) for n, (lo, hi) in q.ranges.items()}
    assert widths["input"] < 0.9 and all(w <= 1.0 + 1e-6 for w in widths.values())


@pytest.mark.slow
def test_post_train_quant_runs_lapq(tmp_path):
    import glob
    import json
    import os

    from compressor.app.post_train import main
    from compressor.models import create_model

    torch.manual_seed(0)
    ckpt = tmp_path / "fp32.pth.tar"
    torch.save({"arch": "simplenet_digits", "state_dict": create_model("simplenet_digits", "digits").state_dict()},
               ckpt)
    assert main(["-a", "simplenet_digits", "--resume-from", str(ckpt), "--qe-lapq", "--lapq-init-mode", "L3",
                 "--lapq-maxfev", "20", "--qeba", "4", "--calibration-size", "64", "-b", "32",
                 "-o", str(tmp_path), "-n", "lapq"]) == 0
    (run,) = glob.glob(os.path.join(tmp_path, "lapq___*"))
    assert "LAPQ: loss" in "".join(open(f).read() for f in glob.glob(os.path.join(run, "*.log")))
    assert json.load(open(os.path.join(run, "summary.json")))["quantized"]["top1"] >= 0
    assert main(["-a", "simplenet_digits", "--resume-from", str(ckpt), "--qe-lapq", "--qe-dynamic",
                 "-o", str(tmp_path)]) == 2
