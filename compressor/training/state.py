"""The training checkpoint's layout, owned here and nowhere else.

Both apps used to assemble the checkpoint dict by hand (post-training quantization even wrote the
scheduler's state itself); a field added in one place went missing in the other. ``TrainState``
names every key once, its scheduler part always comes from ``scheduler.state_dict()``, and the
file carries a ``format_version`` so a checkpoint written by a newer layout is refused with a
message instead of half-loading.

Versions: 1 is the layout written before this object existed (the same keys, no
``format_version``); 2 adds ``format_version``. Both load.
"""

from dataclasses import dataclass, field

from compressor.core.errors import CheckpointError
from compressor.core.io import load_checkpoint
from compressor.core.state_keys import model_state
from compressor.training.determinism import rng_state

FORMAT_VERSION = 2
LEGACY_VERSION = 1  # checkpoints without a "format_version" key
REQUIRED = ("state_dict", "optimizer_state_dict", "epoch")


@dataclass
class TrainState:
    """Everything a run needs to continue, or to be evaluated, from a checkpoint (tensors and plain data)."""

    epoch: int
    arch: str
    dataset: str
    state_dict: dict
    optimizer_state_dict: dict | None = None
    compression_sched: dict | None = None  # scheduler.state_dict()
    recipe: dict | None = None  # the recipe's plain data, so a resumed run rebuilds the same scheduler
    quantizer: dict | None = None  # the quantizer's state, read without building the scheduler
    rng: dict | None = None
    best_scores: list = field(default_factory=list)
    data_seed: int | None = None
    rng_ranks: list | None = None  # under DDP: every rank's RNG state, indexed by rank
    thinning: dict | None = None  # pruned channels removed: {module: {"out"/"in": kept indices}} (pruning.thinning)

    @classmethod
    def capture(
        cls,
        epoch,
        arch,
        dataset,
        model,
        optimizer=None,
        scheduler=None,
        recipe=None,
        best_scores=(),
        data_seed=None,
        with_rng=True,
        thinning=None,
    ):
        """The state of a live run; ``recipe`` defaults to the scheduler's own."""
        quantizer = scheduler.quantizer if scheduler is not None else None
        return cls(
            epoch=epoch,
            arch=arch,
            dataset=dataset,
            state_dict=model.state_dict(),
            optimizer_state_dict=optimizer.state_dict() if optimizer is not None else None,
            compression_sched=scheduler.state_dict() if scheduler is not None else None,
            recipe=recipe if recipe is not None else (scheduler.recipe if scheduler is not None else None),
            quantizer=quantizer.state_dict() if quantizer is not None else None,
            rng=rng_state() if with_rng else None,
            best_scores=[list(b) for b in best_scores],
            data_seed=data_seed,
            thinning=thinning,
        )

    def to_dict(self):
        return {
            "format_version": FORMAT_VERSION,
            "epoch": self.epoch,
            "arch": self.arch,
            "dataset": self.dataset,
            "state_dict": self.state_dict,
            "optimizer_state_dict": self.optimizer_state_dict,
            "compression_sched": self.compression_sched,
            "recipe": self.recipe,
            "quantizer": self.quantizer,
            "rng": self.rng,
            "best_scores": [list(b) for b in self.best_scores],
            "data_seed": self.data_seed,
            "rng_ranks": self.rng_ranks,
            "thinning": self.thinning,
        }

    @classmethod
    def from_dict(cls, data, source="checkpoint"):
        """A TrainState from a loaded checkpoint of either version; ``source`` names it in errors."""
        check_version(data, source)
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise CheckpointError(f"{source} is not a training checkpoint of this tool (no {', '.join(missing)})")
        return cls(
            epoch=data["epoch"],
            arch=data.get("arch"),
            dataset=data.get("dataset"),
            state_dict=data["state_dict"],
            optimizer_state_dict=data["optimizer_state_dict"],
            compression_sched=data.get("compression_sched"),
            recipe=data.get("recipe"),
            quantizer=data.get("quantizer"),
            rng=data.get("rng"),
            best_scores=[tuple(b) for b in data.get("best_scores") or []],
            data_seed=data.get("data_seed"),
            rng_ranks=data.get("rng_ranks"),
            thinning=data.get("thinning"),
        )


def check_version(data, source):
    """Refuse a checkpoint whose layout this version does not know (written by a newer compressor)."""
    if not isinstance(data, dict) or "format_version" not in data:
        return LEGACY_VERSION
    version = data["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or not LEGACY_VERSION <= version <= FORMAT_VERSION:
        raise CheckpointError(
            f"{source}: checkpoint format version {version!r} is not one this version of "
            f"compressor reads ({LEGACY_VERSION} to {FORMAT_VERSION}); was it written by a "
            f"newer release?"
        )
    return version


def load_train_state(path, flag="--resume-from"):
    """The TrainState in ``path``; a weights-only file is named as such, with the flag that takes it."""
    data = load_checkpoint(path)
    source = f"{flag} {path}"
    check_version(data, source)
    missing = [k for k in REQUIRED if not isinstance(data, dict) or k not in data]
    if missing:
        raise CheckpointError(
            f"{source} is not a training checkpoint of this tool (no {', '.join(missing)}); "
            f"use --exp-load-weights-from to load weights only"
        )
    return TrainState.from_dict(data, source)


def load_model_weights(path, flag="--exp-load-weights-from"):
    """The loaded checkpoint and its model state dict: one of our checkpoints (any known version)
    or a bare state dict."""
    data = load_checkpoint(path)
    check_version(data, f"{flag} {path}")
    return data, model_state(data)
