"""The compression scheduler: runs the recipe's policies from the training loop's callbacks."""

from collections import namedtuple

PolicyLoss = namedtuple("PolicyLoss", ["overall_loss", "loss_components"])
LossComponent = namedtuple("LossComponent", ["name", "value"])


class CompressionScheduler:
    """Distiller's callback interface; each policy decides from the epoch whether it acts."""

    def __init__(self, model, recipe=None):
        self.model = model
        self.recipe = recipe  # plain data of the recipe, kept for checkpoints
        self.policies = []
        self.quantizer = None
        self.masks = None  # the pruning masks (compressor.pruning.masks.ParameterMasks) when the recipe prunes
        self.keeper = None  # the policy that holds them and the thinning record (scheduling.pruning.MaskKeeper)

    def add_policy(self, policy):
        self.policies.append(policy)

    def set_calibration_data(self, loader, device="cpu"):
        """Data for the recipe's calibration stages (the training split, with its batches)."""
        for p in self.policies:
            p.set_data(loader, device)

    def on_epoch_begin(self, epoch, optimizer=None):
        for p in self.policies:
            p.on_epoch_begin(self.model, epoch, optimizer)

    def on_minibatch_begin(self, epoch, minibatch_id, minibatches_per_epoch, optimizer=None):
        for p in self.policies:
            if p.active(epoch):
                p.on_minibatch_begin(self.model, epoch, minibatch_id, minibatches_per_epoch, optimizer)

    def attach(self, net, arch, dataset, device="cpu"):
        """What policies need from the run: the module the loop calls, the model and data names, the device."""
        for p in self.policies:
            p.attach(net, arch, dataset, device)

    def before_backward_pass(self, epoch, minibatch_id, minibatches_per_epoch, loss, optimizer=None,
                             return_loss_components=False):
        """Policies return loss components to add, or a PolicyLoss whose overall loss replaces the objective
        (e.g. knowledge distillation's weighted mix); its components are logged, not added again."""
        overall, components = loss, []
        for p in self.policies:  # as Distiller: each policy sees the loss as the policies before it left it
            if p.active(epoch):
                result = p.before_backward_pass(self.model, epoch, minibatch_id, minibatches_per_epoch, overall,
                                                optimizer)
                if isinstance(result, PolicyLoss):
                    overall = result.overall_loss
                    components += [LossComponent(n, v) for n, v in result.loss_components]
                else:
                    for n, v in result or []:
                        components.append(LossComponent(n, v))
                        overall = overall + v
        return PolicyLoss(overall, components) if return_loss_components else overall

    def before_parameter_optimization(self, epoch, minibatch_id, minibatches_per_epoch, optimizer=None):
        for p in self.policies:
            if p.active(epoch):
                p.before_parameter_optimization(self.model, epoch, minibatch_id, minibatches_per_epoch, optimizer)

    def on_minibatch_end(self, epoch, minibatch_id, minibatches_per_epoch, optimizer=None):
        for p in self.policies:
            if p.active(epoch):
                p.on_minibatch_end(self.model, epoch, minibatch_id, minibatches_per_epoch, optimizer)

    def on_epoch_end(self, epoch, optimizer=None, metrics=None):
        for p in self.policies:
            p.on_epoch_end(self.model, epoch, optimizer, metrics)

    def state_dict(self):
        """Plain data only: policies' states and the quantizer's configuration."""
        return {
            "policies": [p.state_dict() for p in self.policies],
            "quantizer": self.quantizer.state_dict() if self.quantizer else None,
        }

    def load_state_dict(self, state):
        if len(state["policies"]) != len(self.policies):
            raise ValueError(
                f"checkpoint's scheduler has {len(state['policies'])} policies, this recipe {len(self.policies)}"
            )
        if self.quantizer and state.get("quantizer"):
            self.quantizer.load_state_dict(state["quantizer"])
        for p, s in zip(self.policies, state["policies"]):
            p.load_state_dict(s)
