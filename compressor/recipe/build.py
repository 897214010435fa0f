"""Recipe -> CompressionScheduler: validate the whole recipe, then build components and policies."""

import copy

from compressor.core.errors import RecipeError
from compressor.pruning.graph import channel_groups
from compressor.pruning.masks import ParameterMasks, find_parameter, plain_name
from compressor.recipe.components import CALIBRATORS, DISTILLERS, EXTENSIONS, LR_SCHEDULERS, PRUNERS, QUANTIZERS
from compressor.recipe.loader import load_recipe, parse_recipe
from compressor.recipe.validate import policy_epochs, validate
from compressor.scheduling.distillation import DistillationPolicy
from compressor.scheduling.policies import CalibrationPolicy, LRPolicy, QuantizationPolicy
from compressor.scheduling.pruning import MaskKeeper, PruningPolicy, ThinningPolicy
from compressor.scheduling.scheduler import CompressionScheduler


def read_recipe(source, file=None):
    """A validated Recipe from a path, YAML text (with ``file`` naming it) or a dict."""
    if isinstance(source, dict):
        import yaml

        recipe = parse_recipe(yaml.safe_dump(source, sort_keys=False), file or "<recipe>")
    elif file is not None:
        recipe = parse_recipe(source, file)
    else:
        recipe = load_recipe(source)
    issues = validate(recipe)
    if issues:
        raise RecipeError(issues)
    return recipe


def build_scheduler(recipe, model, optimizer):
    """The scheduler for a validated recipe; ``scheduler.model`` is the model to train (prepared if quantized)."""
    data = recipe.data
    quantizers, lr_schedulers = {}, {}
    pruners = {name: PRUNERS.get(spec["class"])(**{k: copy.deepcopy(v) for k, v in spec.items() if k != "class"})
               for name, spec in (data.get("pruners") or {}).items()}
    _check_weight_names(recipe, pruners, model)
    policies = data.get("policies") or []
    groups = None
    if any("pruner" in p or "extension" in p for p in policies):  # on the plain model, before a quantizer wraps it
        try:
            groups = channel_groups(model)
        except ValueError as exc:
            if any("extension" in p for p in policies):
                i = next(i for i, p in enumerate(policies) if "extension" in p)
                raise RecipeError([recipe.issue(("policies", i, "extension"), f"thinning needs the model's graph: "
                                                                              f"{exc}")]) from None
    for name, spec in (data.get("quantizers") or {}).items():
        args = {k: copy.deepcopy(v) for k, v in spec.items() if k != "class"}
        quantizers[name] = QUANTIZERS.get(spec["class"])(model, optimizer, **args)
    for policy in data.get("policies") or []:
        if "quantizer" in policy:  # before LR schedulers: preparing may add parameter groups (PACT, TTQ)
            quantizers[policy["quantizer"]["instance_name"]].prepare_model()
    for name, spec in (data.get("lr_schedulers") or {}).items():
        args = {k: copy.deepcopy(v) for k, v in spec.items() if k != "class"}
        lr_schedulers[name] = LR_SCHEDULERS.get(spec["class"])(optimizer, **args)

    calibrators = {
        name: CALIBRATORS.get(spec["class"])(**{k: copy.deepcopy(v) for k, v in spec.items() if k != "class"})
        for name, spec in (data.get("calibrators") or {}).items()
    }
    distillers = {
        name: DISTILLERS.get(spec["class"])(**{k: copy.deepcopy(v) for k, v in spec.items() if k != "class"})
        for name, spec in (data.get("distillers") or {}).items()
    }
    scheduler = CompressionScheduler(model, recipe=copy.deepcopy(data))
    masks = ParameterMasks()
    pruning = [policy_epochs(p) for p in policies if "pruner" in p]
    keeper = MaskKeeper(masks, min(e[0] for e in pruning), [x for e in pruning for x in e]) if pruning else None
    if keeper is None and any("extension" in p for p in policies):
        keeper = MaskKeeper(masks, 10**9, [])
    # calibration stages run after the quantization policy in each epoch, whatever the file order
    policies = [p for p in policies if "calibrator" not in p] + [p for p in policies if "calibrator" in p]
    for policy in policies:
        epochs = policy_epochs(policy)
        if "quantizer" in policy:
            quantizer = quantizers[policy["quantizer"]["instance_name"]]
            scheduler.model = quantizer.prepare_model()
            scheduler.quantizer = quantizer
            qp = QuantizationPolicy(quantizer, epochs, policy.get("ending_epoch"))
            qp.apply_phase(QuantizationPolicy.FP32)
            scheduler.add_policy(qp)
        elif "calibrator" in policy:
            scheduler.add_policy(
                CalibrationPolicy(calibrators[policy["calibrator"]["instance_name"]], scheduler.quantizer, epochs)
            )
        elif "distiller" in policy:
            scheduler.add_policy(DistillationPolicy(distillers[policy["distiller"]["instance_name"]], epochs))
        elif "lr_scheduler" in policy:
            scheduler.add_policy(LRPolicy(lr_schedulers[policy["lr_scheduler"]["instance_name"]], epochs))
        elif "pruner" in policy:
            end = policy.get("ending_epoch", epochs[-1] + 1)
            args = policy["pruner"].get("args") or {}
            scheduler.add_policy(PruningPolicy(pruners[policy["pruner"]["instance_name"]], masks, epochs, epochs[0],
                                               end, policy.get("frequency", 1), groups,
                                               args.get("fold_batchnorm", False)))
        elif "extension" in policy:
            spec = data["extensions"][policy["extension"]["instance_name"]]
            thinner = EXTENSIONS.get(spec["class"])(**{k: copy.deepcopy(v) for k, v in spec.items() if k != "class"})
            scheduler.add_policy(ThinningPolicy(thinner, keeper, epochs))
    if keeper is not None:  # last: it applies the masks the pruners chose this epoch
        scheduler.add_policy(keeper)
        scheduler.masks, scheduler.keeper = masks, keeper
    return scheduler


def _check_weight_names(recipe, pruners, model):
    """Every parameter a pruner names exists in the model (a typo would prune nothing, silently)."""
    issues = []
    names = [n for n, _ in model.named_parameters()]
    for pname, pruner in pruners.items():
        for i, wname in enumerate(pruner.weights_named()):
            if find_parameter(model, wname) is None:
                stem = plain_name(wname).rpartition(".")[0]
                close = [n for n in names if n.startswith(stem.rpartition(".")[0])][:4]
                key = "weights" if "weights" in recipe.data["pruners"][pname] else None
                path = ("pruners", pname, key, i) if key else ("pruners", pname)
                issues.append(recipe.issue(path, f"no parameter {wname!r} in the model"
                                                 f"{'; near: ' + ', '.join(close) if close else ''}"))
    if issues:
        raise RecipeError(issues)
