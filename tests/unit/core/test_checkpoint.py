import os

import pytest
import torch
from torch import nn

from compressor.core.errors import CheckpointError
from compressor.core.io import load_checkpoint, save_checkpoint
from compressor.core.state_keys import load_weights
from compressor.quantization.linear.qat import QuantAwareTrainRangeLinearQuantizer


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "checkpoint.pth.tar"
    save_checkpoint(str(path), {"epoch": 1, "w": torch.ones(2)})

    class Boom:
        def __reduce__(self):
            raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        save_checkpoint(str(path), {"epoch": 2, "bad": Boom()})
    assert load_checkpoint(str(path))["epoch"] == 1
    assert os.listdir(tmp_path) == ["checkpoint.pth.tar"]  # no temp files left behind


def test_checkpoint_with_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pth.tar"
    torch.save({"model": nn.Linear(2, 2)}, path)  # a pickled module, not plain data
    with pytest.raises(CheckpointError, match="tensors and plain data"):
        load_checkpoint(str(path))
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(str(tmp_path / "missing.pth.tar"))


def _prepared():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    q = QuantAwareTrainRangeLinearQuantizer(model, None, bits_weights=8, bits_activations=8)
    return model, q.prepare_model()


def test_fp32_weights_load_into_prepared_model_and_back():
    torch.manual_seed(0)
    fp32 = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    _, gm = _prepared()
    load_weights(gm, fp32.state_dict())
    assert torch.equal(gm.get_submodule("0").parametrizations.weight.original, fp32[0].weight)
    plain = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    load_weights(plain, gm.state_dict())
    assert torch.equal(plain[2].weight, fp32[2].weight)


def test_mismatched_weights_are_a_clear_error():
    with pytest.raises(CheckpointError, match="do not fit the model"):
        load_weights(nn.Linear(3, 4), {"other.weight": torch.zeros(1)})


def test_an_output_path_that_is_a_device_or_fifo_is_never_replaced(tmp_path):
    import stat

    from compressor.core.errors import CompressorError
    from compressor.core.io import atomic_write_text

    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    with pytest.raises(CompressorError, match="is not a regular file .* not replaced"):
        atomic_write_text(str(fifo), "x")  # --export-onnx onto a device node used to replace the node
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    atomic_write_text(str(tmp_path / "ok.txt"), "x")
    assert (tmp_path / "ok.txt").read_text() == "x"
