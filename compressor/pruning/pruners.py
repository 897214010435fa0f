"""Distiller's pruners, by their recipe names and keys, so its schedules run unchanged.

A pruner decides masks at the epochs its policy schedules (``prune``); the masks are kept by the scheduler between
those epochs (``masks.ParameterMasks``). Parameter names may carry DataParallel's ``module.`` prefix, as
Distiller's recipes do. ``'*'`` in a level/threshold mapping means every convolution and linear weight (Distiller
applied it to every parameter, biases and batch-norm included; pruning those is not what anyone wants).

Structured pruners tie choices the network ties: filters of convolutions whose outputs meet at a residual add are
ranked together (the sum of their mean L1 norms) and the same channels go from each, so thinning can remove them;
``group_dependency: Leader`` makes every listed weight follow the first one's ranking (Distiller's option). A
pruned filter takes its bias and the batch-norm channel after it along (gamma and beta masked), so its channel is
exactly zero and thinning it changes nothing.
"""

import dataclasses
import logging

import torch

from compressor.core.spec import REQUIRED, Choice, Config, Float, Int, Spec, setting
from compressor.pruning import criteria
from compressor.pruning.masks import find_parameter, plain_name, prunable_parameters
from compressor.pruning.schedule import agp_sparsity

log = logging.getLogger(__name__)


class WeightNames(Spec):
    """A non-empty list of parameter names."""

    def check(self, value):
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            return f"expected a non-empty list of parameter names (e.g. [module.layer1.0.conv1.weight]), got {value!r}"
        if len(set(map(plain_name, value))) != len(value):
            return "a parameter is listed twice"
        return None

    def describe(self):
        return "list of parameter names"


class NameToNumber(Spec):
    """A mapping of parameter name (or '*') -> a number in [lo, hi]."""

    def __init__(self, default=REQUIRED, lo=0.0, hi=None, hi_open=False):
        super().__init__(default)
        self.number = Float(0.0, lo=lo, hi=hi, hi_open=hi_open)

    def check(self, value):
        if not isinstance(value, dict) or not value:
            return "expected a mapping of parameter name (or '*') -> number"
        for k, v in value.items():
            if not isinstance(k, str):
                return f"expected parameter names as keys, got {k!r}"
            message = self.number.check(v)
            if message:
                return f"{k}: {message}"
        return None

    def describe(self):
        return f"parameter name or '*' -> number in {self.number.describe()}"


FRACTION = dict(lo=0.0, hi=1.0, hi_open=True)
GROUP_TYPES = ["FILTERS", "CHANNELS", "ROWS", "3D"]


@dataclasses.dataclass
class PruneStep:
    """What a pruner sees when it acts: the model, the masks to update, where it is in its schedule and the
    channel groups of the plain model (``graph.channel_groups``; None where the model cannot be traced)."""

    model: torch.nn.Module
    masks: object
    epoch: int
    start: int
    end: int
    frequency: int
    groups: tuple | None = None
    fold_batchnorm: bool = False  # rank filters by weight x gamma / std of the batch-norm after them
    batches: object = None  # a few (inputs, targets) batches, for pruners that rank by activations

    def tensor(self, name):
        t = find_parameter(self.model, name)
        if t is None:
            raise KeyError(name)
        return t


class Pruner:
    """Base: ``CONFIG`` (typed settings), ``weights_named`` (the names it prunes, for validation), ``prune``."""

    CONFIG = Config

    def __init__(self, **kwargs):
        self.config = self.CONFIG.from_args(**kwargs)

    def weights_named(self):
        return list(getattr(self.config, "weights", None) or [])

    def prune(self, step):
        raise NotImplementedError

    def _each(self, step, mapping):
        """(name, tensor, value) for a name -> value mapping, '*' standing for every conv/linear weight."""
        star = mapping.get("*")
        named = {plain_name(k): v for k, v in mapping.items() if k != "*"}
        targets = prunable_parameters(step.model) if star is not None else {}
        for name in named:
            targets[name] = step.tensor(name)
        for name, tensor in targets.items():
            yield name, tensor, named.get(name, star)


# ---------------------------------------------------------------- element-wise


@dataclasses.dataclass(frozen=True, kw_only=True)
class LevelConfig(Config):
    levels: dict = setting(NameToNumber(**FRACTION), "parameter name (or '*') -> the fraction of its elements "
                           "to prune, smallest magnitudes first")


class _PerWeightPruner(Pruner):
    """Base of the pruners configured by one mapping of parameter name (or '*') -> value (``KEY``), each weight
    masked by ``criterion(weight, value)``."""

    KEY = ""

    @staticmethod
    def criterion(tensor, value):
        raise NotImplementedError

    def weights_named(self):
        return [k for k in getattr(self.config, self.KEY) if k != "*"]

    def prune(self, step):
        for name, tensor, value in self._each(step, getattr(self.config, self.KEY)):
            step.masks.combine(name, self.criterion(tensor, value))


class SparsityLevelParameterPruner(_PerWeightPruner):
    """Prune each weight to an exact sparsity level, smallest magnitudes first."""

    CONFIG, KEY = LevelConfig, "levels"
    criterion = staticmethod(criteria.level_mask)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ThresholdConfig(Config):
    thresholds: dict = setting(NameToNumber(), "parameter name (or '*') -> magnitude at or below which an "
                               "element is pruned")


class MagnitudeParameterPruner(_PerWeightPruner):
    """Prune the elements whose magnitude is at or below a threshold."""

    CONFIG, KEY = ThresholdConfig, "thresholds"
    criterion = staticmethod(criteria.threshold_mask)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SensitivityConfig(Config):
    sensitivities: dict = setting(NameToNumber(), "parameter name (or '*') -> s: elements at or below s standard "
                                  "deviations of the weight are pruned (Han et al. 2015)")


class SensitivityPruner(_PerWeightPruner):
    """Han et al.'s rule: the threshold is a multiple of the weight's standard deviation. Applied at each epoch its
    policy schedules, it traps more weights as training pulls them towards zero (as in Distiller)."""

    CONFIG, KEY = SensitivityConfig, "sensitivities"
    criterion = staticmethod(criteria.sensitivity_mask)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AGPConfig(Config):
    initial_sparsity: float = setting(Float(REQUIRED, **FRACTION), "sparsity at the policy's starting_epoch")
    final_sparsity: float = setting(Float(REQUIRED, **FRACTION), "sparsity at the last epoch the policy acts in; "
                                    "cubic in between (Zhu & Gupta 2017)")
    weights: list = setting(WeightNames(), "the parameters to prune")

    def cross_check(self):
        issues = super().cross_check()
        if self.final_sparsity <= self.initial_sparsity:
            issues.append(("final_sparsity", f"final_sparsity ({self.final_sparsity}) must be greater than "
                                             f"initial_sparsity ({self.initial_sparsity})"))
        return issues


class AutomatedGradualPruner(Pruner):
    """Element-wise magnitude pruning on AGP's cubic schedule."""

    CONFIG = AGPConfig

    def target(self, step):
        c = self.config
        return agp_sparsity(c.initial_sparsity, c.final_sparsity, step.epoch, step.start, step.end, step.frequency)

    def prune(self, step):
        sparsity = self.target(step)
        for name in map(plain_name, self.config.weights):
            step.masks.combine(name, criteria.level_mask(step.tensor(name), sparsity))
        log.info("%s: epoch %d, target sparsity %.3f", type(self).__name__, step.epoch, sparsity)


@dataclasses.dataclass(frozen=True, kw_only=True)
class NMConfig(Config):
    n: int = setting(Int(2, lo=1), "weights kept in every block")
    m: int = setting(Int(4, lo=2), "block size along the input dimension")
    weights: list = setting(WeightNames(), "the parameters to prune")

    def cross_check(self):
        issues = super().cross_check()
        if self.n >= self.m:
            issues.append(("n", f"n ({self.n}) must be smaller than m ({self.m})"))
        return issues


class SemiStructuredPruner(Pruner):
    """N:M sparsity (2:4 by default): in every M consecutive input weights the N largest stay. Not in Distiller;
    the pattern NVIDIA's sparse tensor cores run at up to 2x (no kernel on a CPU runs it faster: it exports as a
    dense model with the zeros)."""

    CONFIG = NMConfig

    def prune(self, step):
        for name in map(plain_name, self.config.weights):
            step.masks.combine(name, criteria.n_of_m_mask(step.tensor(name), self.config.n, self.config.m))


# ---------------------------------------------------------------- structures


@dataclasses.dataclass(frozen=True, kw_only=True)
class StructureConfig(Config):
    group_type: str = setting(Choice(REQUIRED, GROUP_TYPES), "Filters (output channels), Channels (input "
                              "channels of a conv), Rows (input features of a linear layer), 3D (= Filters)")
    weights: list = setting(WeightNames(), "the parameters to prune")
    group_dependency: str | None = setting(Choice(None, ["LEADER"]), "Leader: every weight follows the ranking of "
                                           "the first one listed (null: rank each, jointly where outputs meet at "
                                           "an add)")
    group_size: int = setting(Int(1, lo=1), "prune in multiples of this many structures (Distiller's key): 8 "
                              "keeps channel counts on the 8-channel blocks of CPU convolution kernels")
    kwargs: dict | None = setting(Spec(None), "Distiller's extra arguments (accepted, unused)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RankedConfig(StructureConfig):
    desired_sparsity: float = setting(Float(REQUIRED, **FRACTION), "fraction of the structures to prune")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RankedAGPConfig(StructureConfig, AGPConfig):
    pass


class L1RankedStructureParameterPruner(Pruner):
    """Prune the filters, channels or rows with the smallest mean L1 norm, to a fraction of them."""

    CONFIG = RankedConfig
    NORM = 1

    def fraction(self, step):
        return self.config.desired_sparsity

    def _kind(self):
        kind = self.config.group_type.upper()
        return "FILTERS" if kind == "3D" else kind

    def _ties(self, step, names, kind):
        """Lists of names ranked together: the leader's list, or those that share a channel group."""
        if (self.config.group_dependency or "").upper() == "LEADER":
            return [names]
        if step.groups is None:
            return [[n] for n in names]
        groups, owner = step.groups
        by_group = {}
        for name in names:
            module = name.rpartition(".")[0]
            if kind == "FILTERS" and module in owner:
                key = ("out", owner[module])
            else:
                width = step.tensor(name).shape[1]
                key = ("in", _consumed_group(groups, module, width)) if kind != "FILTERS" else ("own", name)
                if key[1] is None:
                    key = ("own", name)
            by_group.setdefault(key, []).append(name)
        return list(by_group.values())

    def _scores_by_name(self, step, names, kind):
        """{name: a score per structure}; higher is kept."""
        return {n: self._folded(step, n, kind, criteria.structure_scores(step.tensor(n), kind, self.NORM))
                for n in names}

    def _folded(self, step, name, kind, scores):
        """Scores of filters scaled by |gamma| / std of the batch-norm after them (``fold_batchnorm``)."""
        if not step.fold_batchnorm or kind != "FILTERS" or step.groups is None:
            return scores
        groups, owner = step.groups
        module = name.rpartition(".")[0]
        norm_name = groups[owner[module]].norm_of.get(module) if module in owner else None
        if norm_name is None:
            return scores
        norm = step.model.get_submodule(norm_name)
        scale = (norm.weight.detach().abs() if norm.affine else 1.0) / (norm.running_var + norm.eps).sqrt()
        return scores * scale

    def prune(self, step):
        kind, fraction = self._kind(), self.fraction(step)
        names = [plain_name(n) for n in self.config.weights]
        score_of = self._scores_by_name(step, names, kind)
        leader = (self.config.group_dependency or "").upper() == "LEADER"
        for tie in self._ties(step, names, kind):
            tensors = [step.tensor(n) for n in tie]
            sizes = {t.shape[criteria.structure_dim(kind)] for t in tensors}
            if len(sizes) != 1:
                raise ValueError(f"{', '.join(tie)} are ranked together but have {sorted(sizes)} structures")
            scores = score_of[tie[0]] if leader else sum(score_of[n] for n in tie)
            kept = torch.ones_like(scores, dtype=torch.bool)
            for n in tie:
                if n in step.masks:
                    dim = criteria.structure_dim(kind)
                    m = step.masks[n].transpose(0, dim).reshape(scores.numel(), -1)
                    kept &= m.any(1)
            pruned = criteria.bottom_structures(scores, fraction, kept, self.config.group_size)
            for name, tensor in zip(tie, tensors):
                step.masks.combine(name, criteria.expand_structures(tensor, kind, pruned))
                if kind == "FILTERS":
                    _mask_followers(step, name, pruned)
            log.info("%s: %s %s: %d of %d %s pruned (target %.3f)", type(self).__name__, step.epoch,
                     ", ".join(tie), len(pruned), scores.numel(), kind.lower(), fraction)


class L2RankedStructureParameterPruner(L1RankedStructureParameterPruner):
    """As the L1 form, ranking by the root mean square."""

    NORM = 2


class L1RankedStructureParameterPruner_AGP(L1RankedStructureParameterPruner):  # noqa: N801 (Distiller's name)
    """Ranked structure pruning on AGP's cubic schedule."""

    CONFIG = RankedAGPConfig

    def fraction(self, step):
        c = self.config
        return agp_sparsity(c.initial_sparsity, c.final_sparsity, step.epoch, step.start, step.end, step.frequency)


class L2RankedStructureParameterPruner_AGP(L1RankedStructureParameterPruner_AGP):  # noqa: N801
    NORM = 2


def _consumed_group(groups, module, width):
    """The group whose channels are exactly ``module``'s input (not a concatenation of several), or None."""
    for gid, group in groups.items():
        if (module, 0) in group.consumers and group.size == width:
            return gid
    return None


def _mask_followers(step, weight_name, pruned):
    """A pruned filter's bias and the batch-norm channel right after it go too, so the channel is exactly zero;
    where the filter is its channels' only producer, also the depthwise convolutions and batch-norms further on
    (MobileNet's expand -> depthwise -> project), whose outputs would otherwise be a constant, not zero."""
    module = weight_name.rpartition(".")[0]
    targets = [(module, 0)]  # (module, offset of these channels in its dim 0)
    if step.groups is not None:
        groups, owner = step.groups
        group = groups[owner[module]] if module in owner else None
        if group is not None and group.norm_of.get(module):
            targets.append((group.norm_of[module], 0))
        if group is not None and group.producers == [module]:
            targets += group.norms + group.channelwise
    for target, offset in dict.fromkeys(targets):
        for attr in ("weight", "bias") if target != module else ("bias",):
            tensor = find_parameter(step.model, f"{target}.{attr}")
            if tensor is None:
                continue
            keep = torch.ones(tensor.shape[0], dtype=torch.bool, device=tensor.device)
            keep[pruned.to(keep.device) + offset] = False
            if tensor.dim() > 1:
                keep = keep.view(-1, *[1] * (tensor.dim() - 1)).expand_as(tensor).clone()
            step.masks.combine(f"{target}.{attr}", keep)


ACTIVATION_BATCHES = 8  # training batches whose activations rank filters (a few hundred images, as Hu et al.)


class ActivationAPoZRankedFilterPruner(L1RankedStructureParameterPruner):
    """Network trimming (Hu et al. 2016): prune the filters whose channels are most often zero after the ReLU, over
    a few training batches. The channel is read after the batch-norm that follows the filter (a value <= 0 there is
    a zero after the ReLU), or at the convolution's output where no batch-norm follows."""

    def _kind(self):
        return "FILTERS"

    def _activation_scores(self, step, names):
        model, sums, counts, hooks = step.model, {}, {}, []
        groups = step.groups
        for name in names:
            module = name.rpartition(".")[0]
            watched = module
            if groups is not None and module in groups[1]:
                watched = groups[0][groups[1][module]].norm_of.get(module, module)

            def hook(_, __, out, name=name):
                x = out.detach().float().transpose(0, 1).reshape(out.shape[1], -1)
                sums[name] = sums.get(name, 0) + self.statistic(x)
                counts[name] = counts.get(name, 0) + 1

            hooks.append(model.get_submodule(watched).register_forward_hook(hook))
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        try:
            with torch.no_grad():
                for i, (inputs, _) in enumerate(step.batches or []):
                    if i == ACTIVATION_BATCHES:
                        break
                    model(inputs.to(device))
        finally:
            for h in hooks:
                h.remove()
            model.train(was_training)
        if not counts:
            raise ValueError(f"{type(self).__name__} ranks filters by activations and saw no data")
        return {n: sums[n] / counts[n] for n in names}

    @staticmethod
    def statistic(x):
        """Per channel: the fraction of zeros after a ReLU; higher is pruned first (so negated)."""
        return -(x <= 0).float().mean(1)

    def _scores_by_name(self, step, names, kind):
        return self._activation_scores(step, names)


class ActivationMeanRankedFilterPruner(ActivationAPoZRankedFilterPruner):
    """Molchanov et al. 2017's mean-activation criterion: prune the filters whose channels have the smallest mean
    after the ReLU. (Distiller's version kept the smallest; this one prunes them, as the paper does.)"""

    @staticmethod
    def statistic(x):
        return x.clamp(min=0).mean(1)


class ActivationAPoZRankedFilterPruner_AGP(ActivationAPoZRankedFilterPruner):  # noqa: N801 (Distiller's name)
    CONFIG = RankedAGPConfig
    fraction = L1RankedStructureParameterPruner_AGP.fraction


class ActivationMeanRankedFilterPruner_AGP(ActivationMeanRankedFilterPruner):  # noqa: N801
    CONFIG = RankedAGPConfig
    fraction = L1RankedStructureParameterPruner_AGP.fraction


PRUNER_CLASSES = [AutomatedGradualPruner, SparsityLevelParameterPruner, MagnitudeParameterPruner, SensitivityPruner,
                  L1RankedStructureParameterPruner, L2RankedStructureParameterPruner,
                  L1RankedStructureParameterPruner_AGP, L2RankedStructureParameterPruner_AGP, SemiStructuredPruner,
                  ActivationAPoZRankedFilterPruner, ActivationMeanRankedFilterPruner,
                  ActivationAPoZRankedFilterPruner_AGP, ActivationMeanRankedFilterPruner_AGP]
