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


def test_a_checkpoint_too_big_for_memory_is_a_clear_error(tmp_path, monkeypatch):
    """A 6 GiB checkpoint under a 4 GiB address space raised a bare MemoryError from torch.load."""
    path = tmp_path / "big.pth.tar"
    save_checkpoint(str(path), {"epoch": 0, "state_dict": {"w": torch.ones(1000)}})

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(torch, "load", out_of_memory)
    with pytest.raises(CheckpointError, match=r"big.pth.tar \(0.0 GiB\) does not fit in this process's memory"):
        load_checkpoint(str(path))


def test_loading_maps_the_file_instead_of_holding_it_twice(tmp_path, root):
    """Peak memory of loading (and checking) a 256 MiB checkpoint: the tensors once, mapped from the file. Reading
    the bytes, copying them for the digest, then the tensors and the NaN check's temporaries peaked at 3.8x the
    file's size (1.01 GB), 2.8x with mapping alone; a 6 GiB checkpoint failed under 4 GiB."""
    import subprocess
    import sys

    path = tmp_path / "c.pth.tar"
    save_checkpoint(str(path), {"epoch": 0, "state_dict": {"w": torch.randn(64, 1 << 20)}})
    code = (
        "import sys, torch\n"
        "from compressor.core.io import load_checkpoint\n"
        "def kib(key):\n"
        "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key))\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"  # resets the peak (VmHWM) to the current size
        "before = kib('VmRSS:')\n"
        "c = load_checkpoint(sys.argv[1])\n"
        "assert float(c['state_dict']['w'].sum()) != 0\n"  # every page read
        "print((kib('VmHWM:') - before) * 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": root})
    assert done.returncode == 0, done.stderr
    grown = int(done.stdout.split()[-1])
    assert grown < 1.25 * os.path.getsize(path), (grown, os.path.getsize(path))


def test_integer_weights_are_refused_naming_the_parameter():
    """int64 weights were cast to float silently by load_state_dict; the BN counter (int64 on both sides) loads."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    state = model.state_dict()
    state["0.weight"] = torch.randint(-3, 3, state["0.weight"].shape)
    with pytest.raises(CheckpointError, match=r"integers where the model has floating-point parameters: "
                                              r"0.weight \(int64\); expected FP32 weights"):
        load_weights(model, state)
    load_weights(model, nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).state_dict())
