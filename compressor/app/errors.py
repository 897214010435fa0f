"""One place that turns the user's mistakes into clear messages and exit code 2 (never a traceback).

Under torchrun every process runs the same checks, so a mistake in the flags failed on every rank and was printed
once per rank. Only rank 0 prints; every rank also writes its message to the error file torchrun asks for
(``TORCHELASTIC_ERROR_FILE``), so that torchrun's failure summary names our message instead of "To enable
traceback see ...", and a failure on another rank alone is still reported. torchrun itself then ends with its own
``ChildFailedError`` traceback for any failed process; that part is torchrun's and cannot be turned off from here.
"""

import json
import os
import signal
import sys
import time

import torch

from compressor.core.errors import CompressorError, RecipeError


class _StoppedByTorchrun(Exception):
    """SIGTERM under torchrun: its agent stops the other workers when one of them fails."""


def _stopped(signum, frame):
    raise _StoppedByTorchrun


def run_guarded(fn, *args):
    """Run an app's body; 0 on success, 2 with a message for a user mistake. Restores global torch state."""
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    # torchrun's agent sends SIGTERM to the remaining workers when one dies; rank 0 used to end without a word when
    # that came before gloo noticed the dead peer (seen with the machine busy)
    previous = signal.signal(signal.SIGTERM, _stopped) if _under_torchrun() else None
    try:
        fn(*args)
        return 0
    except RecipeError as exc:
        n = len(exc.issues)
        report([f"error: invalid recipe ({n} problem{'s' if n != 1 else ''}):"] + [f"  {i}" for i in exc.issues])
        return 2
    except CompressorError as exc:
        report([f"error: {exc}"])
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        report(["error: interrupted (Ctrl-C)"])
        return 130
    except _StoppedByTorchrun:
        report(["error: another process of this torchrun job is gone, or the job was stopped (torchrun sent SIGTERM); "
                "its own output says why. The last checkpoint written is intact: continue with "
                "--resume-from RUN_FOLDER/checkpoint.pth.tar"])
        return 128 + signal.SIGTERM
    except RuntimeError as exc:
        if not lost_peer(exc):
            raise
        report([f"error: another process of this torchrun job is gone ({first_line(exc)}); its own output "
                "says why (killed, out of memory, a crash). The last checkpoint written is intact: continue with "
                "--resume-from RUN_FOLDER/checkpoint.pth.tar"])
        return 1
    except OSError as exc:  # e.g. -o names a file, or a folder without write access; a full disk
        report([f"error: {exc.strerror or exc}: {exc.filename}" if exc.filename else f"error: {exc.strerror or exc}"])
        return 2
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _under_torchrun():
    return int(os.environ.get("WORLD_SIZE", "1") or 1) >= 2 and "TORCHELASTIC_RUN_ID" in os.environ


PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "Timed out waiting",
             "NCCL communicator was aborted", "ProcessGroupGloo", "ProcessGroupNCCL")


def lost_peer(exc):
    """Whether a RuntimeError is the collective backend reporting that another rank died or stopped answering
    (gloo raises a plain RuntimeError; a killed rank 1 left rank 0 with 30 lines of traceback)."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) < 2:
        return False
    backend_error = getattr(torch.distributed, "DistBackendError", ())
    return isinstance(exc, backend_error) or any(word in str(exc) for word in PEER_GONE)


def first_line(exc):
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split("] ", 1)[-1][:160]  # without gloo's source path


def report(lines):
    """Print an error (rank 0 only under torchrun) and hand it to torchrun's error file where one is asked for."""
    message = "\n".join(str(line) for line in lines)
    if int(os.environ.get("RANK", "0") or 0) == 0:
        print(message, file=sys.stderr)
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        try:
            with open(error_file, "w") as f:
                json.dump({"message": message, "timestamp": int(time.time())}, f)
        except OSError:
            pass  # the summary then says torchrun's own words; the message was printed (rank 0) all the same
