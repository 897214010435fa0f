"""Checkpoints: tensors and plain data only (they load with ``torch.load(weights_only=True)``),
written atomically so a crash never leaves a half-written file behind."""

import os
import tempfile

import torch
from compressor.core.errors import CheckpointError
from compressor.core import distiller_checkpoint


def atomic_write(path, write):
    """Call ``write(tmp_path)`` then rename over ``path``: readers see the old file or the new one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically; the file handle is closed before the rename."""

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def save_checkpoint(path, checkpoint):
    atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def load_checkpoint(path):
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with distiller_checkpoint.safe_globals():  # + the optimizer classes Distiller pickles, nothing else
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot load checkpoint {path} as tensors and plain data: {exc}") from None
    if distiller_checkpoint.is_distiller(checkpoint):
        return distiller_checkpoint.from_distiller(checkpoint, path)
    return checkpoint
