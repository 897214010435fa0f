"""The Python API for one's own training loop, in Distiller's words (``file_config`` and the scheduler callbacks).

A Distiller loop needs renamed imports and one change: the scheduler's ``model`` is the model to train (quantizers
prepare a traced copy that shares the original's parameters; Distiller rewrote the model in place)::

    from compressor import api

    scheduler = api.file_config(model, optimizer, "recipe.yaml")   # distiller.file_config
    model = scheduler.model
    for epoch in range(start, epochs):
        scheduler.on_epoch_begin(epoch, optimizer)
        for i, (x, y) in enumerate(loader):
            scheduler.on_minibatch_begin(epoch, i, len(loader), optimizer)
            loss = criterion(model(x), y)
            loss = scheduler.before_backward_pass(epoch, i, len(loader), loss, optimizer)
            optimizer.zero_grad()
            loss.backward()
            scheduler.before_parameter_optimization(epoch, i, len(loader), optimizer)
            optimizer.step()
            scheduler.on_minibatch_end(epoch, i, len(loader), optimizer)
        scheduler.on_epoch_end(epoch, optimizer)
        api.save_checkpoint("checkpoint.pth.tar", epoch, scheduler, optimizer, arch="mine", dataset="mine")

``examples/train_loop.py`` runs this on the embedded digits data (a test runs it); docs/api.md describes each
function. Checkpoints are the apps' own (``--resume-from`` reads them, ``torch.load(weights_only=True)`` too).
"""

from compressor.core.io import save_checkpoint as _save
from compressor.core.state_keys import load_weights
from compressor.deploy.export import export_quantized
from compressor.pruning.thinning import apply_record
from compressor.recipe.build import build_scheduler, read_recipe
from compressor.training.state import TrainState, load_train_state


def file_config(model, optimizer, recipe, scheduler=None, resumed_epoch=None):
    """A CompressionScheduler for ``model`` from ``recipe`` (a YAML file's path or a dict of the same content).

    The whole recipe is validated first (every mistake reported with ``file:line``, as the apps do). Distiller's
    ``scheduler`` and ``resumed_epoch`` arguments are accepted for its call sites: a given scheduler is refused
    (ours are built whole from a recipe), and ``resumed_epoch`` needs nothing here (the policies act by epoch;
    ``load_checkpoint`` restores their state).
    """
    if scheduler is not None:
        raise ValueError("file_config builds the whole scheduler from the recipe; pass scheduler=None")
    del resumed_epoch  # policies decide from the epoch they are called with
    return build_scheduler(read_recipe(recipe), model, optimizer)


dict_config = file_config  # Distiller's name for a recipe given as a dict


def save_checkpoint(path, epoch, scheduler, optimizer=None, arch="model", dataset="data", best_scores=()):
    """Write a checkpoint of the live run atomically (temp file, then rename): weights, optimizer, scheduler and
    quantizer state, recipe and RNG states, as plain data and tensors. Returns ``path``."""
    thinning = scheduler.keeper.thinning if scheduler.keeper is not None else None
    state = TrainState.capture(epoch, arch, dataset, scheduler.model, optimizer, scheduler, best_scores=best_scores,
                               thinning=thinning)
    _save(path, state.to_dict())
    return path


def load_checkpoint(path, scheduler, optimizer=None):
    """Restore a checkpoint written by ``save_checkpoint`` (or by the apps) into a scheduler built from the same
    recipe; returns the epoch to continue from."""
    state = load_train_state(path)
    if state.thinning:  # a thinned model: cut this one alike (the optimizer then trains the cut parameters)
        apply_record(scheduler.model, state.thinning, optimizer)
    load_weights(scheduler.model, state.state_dict)
    if optimizer is not None and state.optimizer_state_dict is not None:
        optimizer.load_state_dict(state.optimizer_state_dict)
    if state.compression_sched:
        scheduler.load_state_dict(state.compression_sched)
    return state.epoch + 1


def export(scheduler, loader, onnx_path=None, pytorch_path=None, **options):
    """Export the scheduler's quantized model (ONNX QDQ and/or PyTorch int8) and check it against the simulation
    on ``loader``; the report the apps write to summary.json (``compressor.deploy.export.export_quantized``)."""
    return export_quantized(scheduler.model.eval(), loader, onnx_path=onnx_path, pytorch_path=pytorch_path,
                            **options)


__all__ = ["file_config", "dict_config", "save_checkpoint", "load_checkpoint", "export"]
