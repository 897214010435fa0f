"""Pruning in the scheduler: pruner policies choose masks at their epochs, one keeper holds the masks on the model
every step after, and thinning (Distiller's ``net_thinner`` extension) removes what structured pruning left dead.

```yaml
pruners:
  fine_pruner:
    class: AutomatedGradualPruner
    initial_sparsity: 0.05
    final_sparsity: 0.70
    weights: [module.layer3.1.conv1.weight, module.layer3.1.conv2.weight]
extensions:
  net_thinner:
    class: FilterRemover
    thinning_func_str: remove_filters
    arch: resnet20_cifar
    dataset: cifar10
policies:
  - pruner: {instance_name: fine_pruner}
    starting_epoch: 0
    ending_epoch: 30
    frequency: 2
  - extension: {instance_name: net_thinner}
    epochs: [30]
```
"""

import dataclasses
import logging

import torch

from compressor.core.spec import Choice, Config, Spec, setting
from compressor.pruning.pruners import PruneStep
from compressor.pruning.summary import layer_macs, sparsity_table
from compressor.pruning.thinning import merge_records, thin
from compressor.scheduling.policies import Policy

log = logging.getLogger(__name__)


class PruningPolicy(Policy):
    """Runs its pruner at the start of each of its epochs (masks only; the keeper applies them)."""

    def __init__(self, pruner, masks, epochs, start, end, frequency, groups=None, fold_batchnorm=False):
        super().__init__(epochs)
        self.pruner, self.masks = pruner, masks
        self.start, self.end, self.frequency, self.groups = start, end, frequency, groups
        self.fold_batchnorm = fold_batchnorm
        self.loader = None

    def set_data(self, loader, device="cpu"):
        self.loader = loader  # activation-ranked pruners read a few training batches

    def on_epoch_begin(self, model, epoch, optimizer=None):
        if self.active(epoch):
            self.pruner.prune(PruneStep(model, self.masks, epoch, self.start, self.end, self.frequency, self.groups,
                                        self.fold_batchnorm, self.loader))


class MaskKeeper(Policy):
    """Holds every pruner's masks on the model from the first pruning epoch on: gradients masked before each
    optimizer step, weights after it (weight decay and momentum would revive them). Its state is the masks, so a
    resumed run keeps them; it logs the sparsity table at the end of each epoch a pruner acted in."""

    def __init__(self, masks, first_epoch, pruning_epochs):
        super().__init__([])
        self.masks, self.first, self.pruning_epochs = masks, first_epoch, set(pruning_epochs)
        self.thinning = None  # the thinning record (ThinningPolicy sets it), kept in checkpoints
        self.sample = None  # one training image: the table's MACs

    def set_data(self, loader, device="cpu"):
        with torch.random.fork_rng(devices=[]):  # a random augmentation must not move the run's random streams
            try:
                self.sample = loader.dataset[0][0].unsqueeze(0).to(device)
            except (IndexError, TypeError, AttributeError):
                self.sample = None

    def active(self, epoch):
        return epoch >= self.first

    def on_epoch_begin(self, model, epoch, optimizer=None):
        if self.active(epoch):
            self.masks.apply(model)

    def before_parameter_optimization(self, model, epoch, minibatch_id, minibatches_per_epoch, optimizer=None):
        self.masks.mask_gradients(model)

    def on_minibatch_end(self, model, epoch, minibatch_id, minibatches_per_epoch, optimizer=None):
        self.masks.apply(model)

    def on_epoch_end(self, model, epoch, optimizer=None, metrics=None):
        """Distiller's sparsity table after the last pruning epoch, the total after the others."""
        if epoch in self.pruning_epochs:
            macs = layer_macs(model, self.sample) if self.sample is not None and epoch == max(self.pruning_epochs) \
                else None
            table, total = sparsity_table(model, macs)
            if epoch == max(self.pruning_epochs):
                log.info("Parameters (epoch %d):\n%s", epoch, table)
            log.info("Total sparsity: %.2f %% (epoch %d)", 100 * total, epoch)

    def state_dict(self):
        return {"masks": self.masks.state_dict(), "thinning": self.thinning}

    def load_state_dict(self, state):
        self.masks.load_state_dict(state.get("masks") or {})
        self.thinning = state.get("thinning")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ThinnerConfig(Config):
    thinning_func_str: str | None = setting(Choice(None, ["REMOVE_FILTERS", "REMOVE_CHANNELS"]),
                                            "Distiller's thinning function: remove_filters (channels whose "
                                            "filters are pruned) or remove_channels (channels no layer reads); "
                                            "null: the class decides")
    arch: str | None = setting(Spec(None), "Distiller's architecture name (accepted; the run's model is used)")
    dataset: str | None = setting(Spec(None), "Distiller's dataset name (accepted; the run's data is used)")


class FilterRemover:
    """Removes channels whose filters are pruned (all producers' outputs exactly zero)."""

    CONFIG = ThinnerConfig
    MODE = "filters"

    def __init__(self, **kwargs):
        self.config = self.CONFIG.from_args(**kwargs)
        func = (self.config.thinning_func_str or "").upper()
        self.mode = {"REMOVE_FILTERS": "filters", "REMOVE_CHANNELS": "channels"}.get(func, self.MODE)


class ChannelRemover(FilterRemover):
    """Removes channels that no layer reads (input channels pruned in every consumer)."""

    MODE = "channels"


class StructureRemover(FilterRemover):
    """Distiller's general remover: both rules unless ``thinning_func_str`` picks one."""

    MODE = "both"


class ThinningPolicy(Policy):
    """Thins the model at the start of its epochs; the record goes to the keeper's state (checkpoints)."""

    def __init__(self, thinner, keeper, epochs):
        super().__init__(epochs)
        self.thinner, self.keeper = thinner, keeper

    def on_epoch_begin(self, model, epoch, optimizer=None):
        if not self.active(epoch):
            return
        self.keeper.masks.apply(model)
        before = sum(p.numel() for p in model.parameters())
        record, report = thin(model, self.thinner.mode, optimizer, self.keeper.masks)
        self.keeper.thinning = merge_records(self.keeper.thinning, record)
        after = sum(p.numel() for p in model.parameters())
        log.info("Thinning (%s) at epoch %d: %d -> %d parameters\n  %s", self.thinner.mode, epoch, before, after,
                 "\n  ".join(report) or "nothing to remove")
