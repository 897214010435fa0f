"""Checkpoints and outputs: written atomically, checked on the way back in.

Checkpoints hold tensors and plain data only (they load with ``torch.load(weights_only=True)``).
Every file is written to a temporary name in its folder, flushed to disk, then renamed over the
target, so a crash (kill -9, power loss, disk full) leaves the old file or the new one, never half
of one. A checkpoint carries a SHA-256 of its own bytes in the zip archive's comment field (the
file stays a plain ``torch.save`` archive that ``torch.load`` reads unchanged); loading verifies it,
so flipped bytes anywhere in the file, inside a tensor included, are refused with the file named.
The temporary names hold the writer's pid, so stale ones left by a killed writer are recognised
and removed (only ours, only when that process is gone and the file is old).
"""

import errno
import hashlib
import io
import logging
import math
import os
import re
import stat
import struct
import tempfile
import time

import torch

from compressor.core import distiller_checkpoint
from compressor.core.errors import CheckpointError, CompressorError, DiskFullError

log = logging.getLogger("compressor")

DIGEST_TAG = b"compressor-sha256:"
_EOCD = b"PK\x05\x06"  # zip end-of-central-directory record: 22 bytes, the last 2 the comment length
TMP_PREFIX = ".tmp-"
STALE_AFTER_S = 60  # a temp file untouched this long, whose writer has exited, is debris
_TMP_NAME = re.compile(r"^\.tmp-(\d+)-")
_cleaned = set()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_bytes(fd, data):
    """Write all of ``data`` to ``fd`` (a seam for tests that simulate a full disk)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def atomic_write(path, write):
    """Call ``write(tmp_path)`` then rename over ``path``: readers see the old file or the new one.

    The file gets the mode the umask gives (like every other file of a run), not mkstemp's 0600.
    A full disk becomes a DiskFullError naming ``path``; the old file is untouched.
    """
    if os.path.lexists(path) and not os.path.isfile(path):  # the rename would replace a device node or a FIFO
        raise CompressorError(f"{path} exists and is not a regular file (a device, FIFO or folder): not replaced; "
                              "name a file")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    clean_stale_temp_files(folder)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", suffix="-" + os.path.basename(path), dir=folder)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(f"no space left on device while writing {path}") from None
        raise


def write_bytes_atomic(path, data):
    def write(tmp):
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            _write_bytes(fd, data)
        finally:
            os.close(fd)

    atomic_write(path, write)


def atomic_write_text(path, text):
    """``text`` as UTF-8 to ``path``, atomically (write errors such as a full disk surface, never lost in a GC)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clean_stale_temp_files(folder, now=None):
    """Remove ``.tmp-<pid>-*`` files in ``folder`` left by writers that died; returns the removed paths.

    Only regular files (not links) owned by this user, whose writer pid no longer runs on this
    machine and that nobody touched for STALE_AFTER_S seconds. Done once per folder and process.
    """
    folder = os.path.abspath(folder)
    if now is None and folder in _cleaned:
        return []
    _cleaned.add(folder)
    now = time.time() if now is None else now
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _TMP_NAME.match(name)
        if not match:
            continue
        path = os.path.join(folder, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not _is_regular(st) or st.st_uid != os.getuid() or now - st.st_mtime < STALE_AFTER_S:
            continue
        if _pid_alive(int(match.group(1))):
            continue
        try:
            os.unlink(path)
            removed.append(path)
        except OSError:
            continue
    if removed:
        log.info("Removed %d stale temporary file(s) of interrupted writes in %s", len(removed), folder)
    return removed


def _is_regular(st):
    return stat.S_ISREG(st.st_mode)


def _pid_alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _with_digest(data):
    """The zip archive ``data`` with its SHA-256 stored in the archive comment (None if it is not a bare zip)."""
    if len(data) < 22 or data[-22:-18] != _EOCD or data[-2:] != b"\x00\x00":
        return None
    comment = DIGEST_TAG + hashlib.sha256(data).hexdigest().encode()
    return data[:-2] + struct.pack("<H", len(comment)) + comment


def _verify_digest(path):
    """True when the file holds a digest that matches; False when it has none; CheckpointError when it differs.
    Read in 16 MiB pieces: the file is never held in memory whole (a 6 GiB checkpoint held twice, bytes and
    tensors, did not fit a 4 GiB address space)."""
    n = len(DIGEST_TAG) + 64
    size = os.path.getsize(path)
    if size < 22 + n:
        return False
    with open(path, "rb") as f:
        f.seek(size - n - 22)
        tail = f.read()
        if tail[-n:-64] != DIGEST_TAG or tail[:4] != _EOCD:
            return False
        f.seek(0)
        sha, left = hashlib.sha256(), size - n - 2  # the digest covers the file with an empty zip comment
        while left > 0:
            piece = f.read(min(left, 16 << 20))
            if not piece:
                return False
            sha.update(piece)
            left -= len(piece)
    sha.update(b"\x00\x00")
    if sha.hexdigest().encode() != tail[-64:]:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its content does not match the SHA-256 digest "
            f"stored when it was written (damaged on disk or in transfer); use another copy "
            f"or an earlier checkpoint"
        )
    return True


def save_checkpoint(path, checkpoint):
    """torch.save ``checkpoint`` to ``path`` atomically, with an integrity digest."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    data = buffer.getvalue()
    write_bytes_atomic(path, _with_digest(data) or data)


def load_checkpoint(path):
    """The checkpoint at ``path``: digest verified, tensors and plain data only, content checked."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} is not a regular file")
    try:
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"  # torch.save's zip format, which torch.load can map
        clean_stale_temp_files(os.path.dirname(os.path.abspath(path)))  # debris of a writer killed in that folder
        if not _verify_digest(path):
            log.info("Note: %s has no integrity digest (written by another tool or an older version)", path)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    try:
        with distiller_checkpoint.safe_globals():  # + the optimizer classes Distiller pickles, nothing else
            # mapped, not read: tensors are paged in from the file (private pages: the file is never written)
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except MemoryError:
        raise CheckpointError(
            f"checkpoint {path} ({os.path.getsize(path) / 2**30:.1f} GiB) does not fit in this process's memory; "
            "run where more memory (or address space: ulimit -v) is available"
        ) from None
    except Exception as exc:
        raise CheckpointError(f"cannot load checkpoint {path} as tensors and plain data: {exc}") from None
    if distiller_checkpoint.is_distiller(checkpoint):
        checkpoint = distiller_checkpoint.from_distiller(checkpoint, path)
    check_checkpoint(checkpoint, path)
    return checkpoint


# --- content checks: a malformed checkpoint is refused at load, before any work ----------------------


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _finite(tensor):
    """No NaN or infinity in ``tensor``, without a tensor-sized temporary (NaN propagates through min and max;
    ``isfinite(t).all()`` took 2.6x a 256 MiB tensor's size at its peak)."""
    lo, hi = torch.aminmax(tensor.detach())
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))


def _check_state(state, path, what):
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {path}: {what} is a {type(state).__name__}, expected a mapping of parameter name -> tensor"
        )
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointError(f"checkpoint {path}: {what} has a key {key!r}, expected parameter names")
        if (
            torch.is_tensor(value)
            and value.is_floating_point()
            and not value.is_quantized
            and value.numel()
            and not _finite(value)
        ):
            bad = "NaN" if bool(torch.isnan(value).any()) else "infinite"
            raise CheckpointError(
                f"checkpoint {path}: {what}[{key!r}] holds {bad} values (the training that wrote "
                f"it diverged); use an earlier checkpoint"
            )


# key -> (check, what was expected)
_TRAINING_KEYS = {
    "epoch": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "arch": (lambda v: v is None or isinstance(v, str), "an architecture name"),
    "dataset": (lambda v: v is None or isinstance(v, str), "a dataset name"),
    "optimizer_state_dict": (lambda v: v is None or isinstance(v, dict), "an optimizer state (a mapping) or null"),
    "compression_sched": (lambda v: v is None or isinstance(v, dict), "a scheduler state (a mapping) or null"),
    "recipe": (lambda v: v is None or isinstance(v, (dict, str)), "a recipe (a mapping) or null"),
    "quantizer": (lambda v: v is None or isinstance(v, dict), "a quantizer state (a mapping) or null"),
    "rng": (
        lambda v: v is None or _is_rng_state(v),
        "RNG states {python, numpy, torch} as saved by this tool, or null",
    ),
    "best_scores": (
        lambda v: (
            isinstance(v, list)
            and all(
                isinstance(b, (list, tuple)) and len(b) == 3 and _is_number(b[0]) and _is_number(b[1]) and _is_int(b[2])
                for b in v
            )
        ),
        "a list of [top1, top5, epoch]",
    ),
    "data_seed": (lambda v: v is None or (_is_int(v) and 0 <= v < 2**32), "an integer in [0, 2**32)"),
}


def _is_rng_state(v):
    """The shape ``compressor.training.determinism.rng_state`` writes."""
    if not isinstance(v, dict) or not {"python", "numpy", "torch"} <= set(v):
        return False
    python, numpy = v["python"], v["numpy"]
    return (
        isinstance(python, list)
        and len(python) == 3
        and isinstance(python[1], list)
        and all(_is_int(x) for x in python[1])
        and isinstance(numpy, list)
        and len(numpy) == 5
        and isinstance(numpy[0], str)
        and torch.is_tensor(numpy[1])
        and torch.is_tensor(v["torch"])
        and v["torch"].dtype == torch.uint8
    )


def check_checkpoint(checkpoint, path):
    """CheckpointError when ``checkpoint`` is not a mapping, or a known key holds the wrong kind of value."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(checkpoint).__name__}, expected a mapping "
            f"(a training checkpoint or a state dict)"
        )
    if "state_dict" in checkpoint:
        _check_state(checkpoint["state_dict"], path, "state_dict")
        for key, (ok, expected) in _TRAINING_KEYS.items():
            if key in checkpoint and not ok(checkpoint[key]):
                raise CheckpointError(f"checkpoint {path}: '{key}' is {_short(checkpoint[key])}, expected {expected}")
    elif all(torch.is_tensor(v) for v in checkpoint.values()):
        _check_state(checkpoint, path, "the state dict")


def _short(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
