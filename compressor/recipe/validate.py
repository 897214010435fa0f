"""Whole-recipe validation, before training starts: every mistake reported at once."""

import inspect
import logging
import math
import re

import torch

from compressor.quantization.overrides import backtracking_risk
from compressor.recipe.components import QUANTIZERS, SECTIONS

log = logging.getLogger(__name__)

TOP_LEVEL = {"version", "quantizers", "lr_schedulers", "calibrators", "distillers", "pruners", "extensions",
             "policies"}
NOT_SUPPORTED_YET = {"regularizers"}
POLICY_KINDS = {
    "quantizer": "quantizers",
    "lr_scheduler": "lr_schedulers",
    "calibrator": "calibrators",
    "distiller": "distillers",
    "pruner": "pruners",
    "extension": "extensions",
}
TIMING_KEYS = {"starting_epoch", "ending_epoch", "frequency", "epochs"}
MAX_EPOCH = 10**6  # far beyond any schedule; bounds the epoch lists policies expand to
# LR-scheduler arguments whose domain torch does not check (gamma: -10 or .nan trained on silently)
POSITIVE_LR_ARGS = {"gamma", "gammas", "step_size", "T_max", "T_0", "T_mult", "total_iters", "max_lr", "factor"}
NON_NEGATIVE_LR_ARGS = {"eta_min", "min_lr", "base_lr", "cooldown", "patience", "eps", "threshold"}
EPOCH_LIST_LR_ARGS = {"milestones"}


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def validate(recipe):
    """A list of RecipeIssue (empty when the recipe is valid)."""
    issues = []
    data = recipe.data
    for key in data:
        if key in NOT_SUPPORTED_YET:
            issues.append(
                recipe.issue((key,), f"section '{key}' is not supported yet (quantization, pruning, thinning, "
                                     "knowledge distillation and LR schedules are)")
            )
        elif key not in TOP_LEVEL:
            issues.append(recipe.issue((key,), f"unknown top-level key; expected one of {sorted(TOP_LEVEL)}"))
    for section, registry in SECTIONS.items():
        body = data.get(section)
        if body is None:
            continue
        if not isinstance(body, dict):
            issues.append(recipe.issue((section,), "expected a mapping of instance name -> {class: ..., <arguments>}"))
            continue
        for name, spec in body.items():
            issues += _validate_component(recipe, section, registry, name, spec)
    issues += _validate_policies(recipe)
    return issues


def _validate_component(recipe, section, registry, name, spec):
    path = (section, name)
    if not isinstance(spec, dict):
        return [recipe.issue(path, "expected a mapping with 'class' and the constructor arguments")]
    cls_name = spec.get("class")
    if cls_name is None:
        return [recipe.issue(path, "missing 'class'")]
    cls = registry.get(cls_name) if isinstance(cls_name, str) else None
    if cls is None:
        return [
            recipe.issue(
                path + ("class",), f"unknown {registry.kind} class {cls_name!r}; known: {', '.join(registry.names())}"
            )
        ]
    args = {k: v for k, v in spec.items() if k != "class"}
    if section in ("quantizers", "calibrators", "distillers", "pruners", "extensions"):
        return _validate_component_args(recipe, path, cls, args)
    return _validate_lr_scheduler_args(recipe, path, cls, args)


def _validate_component_args(recipe, path, cls, args):
    """Check a quantizer's, calibrator's or distiller's arguments against its typed ``CONFIG``."""
    issues = []
    params = cls.CONFIG.specs()
    layer_keys = cls.CONFIG.layer_keys()
    for key, value in args.items():
        if key not in params:
            issues.append(
                recipe.issue(path + (key,), f"unknown argument of {cls.__name__}; expected one of {sorted(params)}")
            )
            continue
        message = params[key].check(value)
        if message:
            issues.append(recipe.issue(path + (key,), message))
    for key, spec in params.items():
        if spec.required and key not in args:
            issues.append(recipe.issue(path, f"missing required argument '{key}'"))
    overrides = args.get("overrides")
    if isinstance(overrides, dict):
        for pattern, settings in overrides.items():
            opath = path + ("overrides", pattern)
            if not isinstance(pattern, str):
                issues.append(recipe.issue(opath, "override keys are module names or regular expressions"))
                continue
            try:
                re.compile(pattern)
            except re.error as exc:
                if not re.fullmatch(r"[\w.@]+", pattern):
                    issues.append(recipe.issue(opath, f"not a valid regular expression: {exc}"))
            risk = backtracking_risk(pattern)
            if risk:
                issues.append(recipe.issue(opath, f"{risk} can take exponential time to match; write the "
                                                  "pattern without nesting (e.g. '.*X' for '(.*)*X')"))
            if settings is None:
                continue
            if not isinstance(settings, dict):
                issues.append(recipe.issue(opath, "expected a mapping of per-layer settings"))
                continue
            for key, value in settings.items():
                if key not in layer_keys:
                    issues.append(
                        recipe.issue(opath + (key,), f"unknown per-layer key; an override may set {sorted(layer_keys)}")
                    )
                    continue
                message = params[key].check(value)
                if message:
                    issues.append(recipe.issue(opath + (key,), message))
    if not issues:
        issues += _cross_check(recipe, path, cls, args)
    return issues


def _cross_check(recipe, path, cls, args):
    """Combinations of individually valid values that do not work together, for the whole config and per layer."""
    config = cls.CONFIG.from_args(**args)
    issues = [recipe.issue(path + (key,), message) for key, message in config.cross_check()]
    for pattern, settings in (args.get("overrides") or {}).items():
        if isinstance(settings, dict) and settings:  # problems an override itself brings in
            issues += [
                recipe.issue(path + ("overrides", pattern, key), message)
                for key, message in config.for_layer(settings).cross_check()
                if key in settings
            ]
    return issues


class _DummyOptimizer(torch.optim.SGD):
    def __init__(self):
        super().__init__([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)


def _validate_lr_scheduler_args(recipe, path, cls, args):
    sig = inspect.signature(cls.__init__)
    accepted = [p for p in list(sig.parameters)[1:] if p != "optimizer"]
    issues = []
    for key in args:
        if key not in accepted:
            issues.append(
                recipe.issue(path + (key,), f"unknown argument of {cls.__name__}; expected one of {accepted}")
            )
        else:
            message = _lr_value_issue(key, args[key])
            if message:
                issues.append(recipe.issue(path + (key,), message))
    for pname, p in sig.parameters.items():
        if pname in ("self", "optimizer") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is inspect.Parameter.empty and pname not in args:
            issues.append(recipe.issue(path, f"missing required argument '{pname}' of {cls.__name__}"))
    for key, value in args.items():
        if key in sig.parameters:
            message = _type_mismatch(sig.parameters[key].default, value)
            if message:
                issues.append(recipe.issue(path + (key,), message))
    if not issues:
        try:  # let torch check values on a throw-away optimizer, over a few epochs
            optimizer = _DummyOptimizer()
            scheduler = cls(optimizer, **args)
            for _ in range(3):
                optimizer.step()
                if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    scheduler.step(1.0)
                else:
                    scheduler.step()
        except Exception as exc:  # any failure here comes from the user's values
            issues.append(recipe.issue(path, f"invalid arguments for {cls.__name__}: {exc}"))
    return issues


def _numbers(value):
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _numbers(v)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    return []


def _lr_value_issue(key, value):
    """A message when an LR-scheduler value is out of its domain (non-finite, gamma <= 0, milestones not epochs)."""
    if any(not math.isfinite(n) for n in _numbers(value)):
        return f"expected finite numbers, got {value!r}"
    if key in EPOCH_LIST_LR_ARGS:
        if not isinstance(value, list) or not all(_is_int(v) and 0 <= v <= MAX_EPOCH for v in value):
            return f"expected a list of epoch numbers (integers >= 0), got {value!r}"
    values = value if isinstance(value, list) else [value]
    if key in POSITIVE_LR_ARGS and any(
        not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0 for v in values
    ):
        return f"expected a number > 0, got {value!r}"
    if key in NON_NEGATIVE_LR_ARGS and any(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0 for v in values
    ):
        return f"expected a number >= 0, got {value!r}"
    return None


def _type_mismatch(default, value):
    """A message when ``value`` has not the type of the argument's default (None/empty: anything goes)."""
    if default is inspect.Parameter.empty or default is None:
        return None
    if isinstance(default, bool):
        ok, expected = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, expected = _is_int(value), "an integer"
    elif isinstance(default, float):
        ok, expected = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif isinstance(default, str):
        ok, expected = isinstance(value, str), "a string"
    else:
        return None
    return None if ok else f"expected {expected}, got {value!r}"


def _validate_policies(recipe):
    data = recipe.data
    policies = data.get("policies")
    if policies is None:
        return []
    if not isinstance(policies, list):
        return [recipe.issue(("policies",), "expected a list of policies")]
    issues, used_quantizers, quantizer_policies = [], set(), 0
    for i, policy in enumerate(policies):
        path = ("policies", i)
        if not isinstance(policy, dict):
            issues.append(
                recipe.issue(path, "expected a mapping such as {quantizer: {instance_name: ...}, starting_epoch: ...}")
            )
            continue
        kinds = [k for k in policy if k in POLICY_KINDS or k in ("regularizer",)]
        unknown = [k for k in policy if k not in kinds and k not in TIMING_KEYS]
        for k in unknown:
            issues.append(
                recipe.issue(
                    path + (k,),
                    f"unknown policy key; expected one of {sorted(POLICY_KINDS)} and timing keys {sorted(TIMING_KEYS)}",
                )
            )
        if len(kinds) != 1:
            issues.append(
                recipe.issue(path, f"a policy names exactly one of {sorted(POLICY_KINDS)}, found {kinds or 'none'}")
            )
            continue
        kind = kinds[0]
        if kind not in POLICY_KINDS:
            issues.append(recipe.issue(path + (kind,), f"'{kind}' policies are not supported yet"))
            continue
        body = policy[kind]
        if not isinstance(body, dict) or "instance_name" not in body:
            issues.append(recipe.issue(path + (kind,), "expected {instance_name: NAME}"))
        else:
            for k in body:
                if k == "args" and kind == "pruner":
                    issues += _validate_pruner_args(recipe, path + (kind, k), body["args"])
                elif k == "args":
                    if body["args"]:
                        issues.append(recipe.issue(path + (kind, k), f"{kind} policies take no args"))
                elif k != "instance_name":
                    issues.append(recipe.issue(path + (kind, k), "unknown key; expected instance_name"))
            name = body["instance_name"]
            section = POLICY_KINDS[kind]
            sections = data.get(section)
            if not isinstance(name, str):
                issues.append(recipe.issue(path + (kind, "instance_name"), f"expected an instance name, got {name!r}"))
            elif not isinstance(sections, dict) or name not in sections:
                issues.append(
                    recipe.issue(path + (kind, "instance_name"), f"undefined instance {name!r}: not in '{section}'")
                )
            elif kind == "quantizer":
                quantizer_policies += 1
                used_quantizers.add(name)
                issues += _validate_quantizer_epochs(recipe, path, sections[name], policy)
        issues += _validate_timing(recipe, path, policy)
    calibrator_policies = [i for i, p in enumerate(policies) if isinstance(p, dict) and "calibrator" in p]
    if calibrator_policies and not used_quantizers:
        issues.append(
            recipe.issue(
                ("policies", calibrator_policies[0], "calibrator"),
                "a calibration stage needs a quantizer policy to calibrate",
            )
        )
    thinning = [i for i, p in enumerate(policies) if isinstance(p, dict) and "extension" in p]
    if thinning and used_quantizers:
        issues.append(recipe.issue(("policies", thinning[0], "extension"),
                                   "thinning and a quantizer in one recipe are not supported: prune and thin in one "
                                   "run, then quantize the thinned model (--exp-load-weights-from with a QAT "
                                   "recipe, or apps/post_train_quant.py)"))
    if len(used_quantizers) > 1:
        issues.append(recipe.issue(("policies",), f"one quantizer per recipe; policies use {sorted(used_quantizers)}"))
    elif quantizer_policies > 1:
        issues.append(
            recipe.issue(("policies",), "one quantizer policy per recipe: its window is a single epoch range")
        )
    return issues


PRUNER_POLICY_ARGS = {
    "fold_batchnorm": "rank filters by their weights scaled by the batch-norm after them (gamma / std)",
    "mask_gradients": "gradients of pruned weights are always masked here; accepted",
}
REFUSED_PRUNER_POLICY_ARGS = ("keep_mask", "mini_batch_pruning_frequency", "mask_on_forward_only",
                              "use_double_copies", "discard_masks_at_minibatch_end")


def _validate_pruner_args(recipe, path, args):
    """Distiller's pruner-policy ``args``: those with a meaning here are accepted, the rest refused by name."""
    if args is None:
        return []
    if not isinstance(args, dict):
        return [recipe.issue(path, f"expected a mapping of {sorted(PRUNER_POLICY_ARGS)}, got {args!r}")]
    issues = []
    for key, value in args.items():
        if key in REFUSED_PRUNER_POLICY_ARGS:
            issues.append(recipe.issue(path + (key,), "not supported: masks here are kept on the weights for the "
                                                      "whole run, pruned once per scheduled epoch (Distiller's "
                                                      "network-surgery and drop-filter regimes are not built)"))
        elif key not in PRUNER_POLICY_ARGS:
            issues.append(recipe.issue(path + (key,), f"unknown pruner policy argument; expected one of "
                                                      f"{sorted(PRUNER_POLICY_ARGS)}"))
        elif not isinstance(value, bool):
            issues.append(recipe.issue(path + (key,), f"expected true or false, got {value!r}"))
    return issues


def _validate_quantizer_epochs(recipe, path, spec, policy):
    """Quantizers whose state follows the policy's epochs (INQ) check the pairing."""
    cls = QUANTIZERS.get(spec.get("class")) if isinstance(spec, dict) else None
    if cls is None or _validate_timing(recipe, path, policy):
        return []
    message = cls.check_policy_epochs({k: v for k, v in spec.items() if k != "class"}, policy_epochs(policy))
    return [recipe.issue(path, message)] if message else []


def _validate_timing(recipe, path, policy):
    triple = [k for k in ("starting_epoch", "ending_epoch", "frequency") if k in policy]
    if "epochs" in policy:
        if triple:
            return [
                recipe.issue(
                    path + (triple[0],), "'epochs' and starting_epoch/ending_epoch/frequency are mutually exclusive"
                )
            ]
        epochs = policy["epochs"]
        if not isinstance(epochs, list) or not epochs or not all(_is_int(e) and 0 <= e <= MAX_EPOCH for e in epochs):
            return [
                recipe.issue(
                    path + ("epochs",),
                    f"expected a non-empty list of epoch numbers in [0, {MAX_EPOCH}], got {epochs!r}",
                )
            ]
        if len(set(epochs)) != len(epochs):
            return [recipe.issue(path + ("epochs",), "epochs are listed twice")]
        return []
    issues = []
    for k in ("starting_epoch", "ending_epoch"):
        if k not in policy:
            issues.append(recipe.issue(path, f"missing '{k}' (or give an 'epochs' list)"))
        elif not _is_int(policy[k]) or not 0 <= policy[k] <= MAX_EPOCH:
            issues.append(recipe.issue(path + (k,), f"expected an integer in [0, {MAX_EPOCH}], got {policy[k]!r}"))
    if "frequency" in policy and (not _is_int(policy["frequency"]) or policy["frequency"] <= 0):
        issues.append(recipe.issue(path + ("frequency",), f"expected an integer > 0, got {policy['frequency']!r}"))
    if issues:
        return issues
    start, end, freq = policy["starting_epoch"], policy["ending_epoch"], policy.get("frequency", 1)
    if start >= end:
        issues.append(
            recipe.issue(
                path + ("ending_epoch",), f"ending_epoch ({end}) must be greater than starting_epoch ({start})"
            )
        )
    elif freq > end - start:
        issues.append(
            recipe.issue(
                path + ("frequency",), f"frequency ({freq}) exceeds ending_epoch - starting_epoch ({end - start})"
            )
        )
    return issues


def policy_epochs(policy):
    """The epochs a (validated) policy acts in."""
    if "epochs" in policy:
        return sorted(policy["epochs"])
    return list(range(policy["starting_epoch"], policy["ending_epoch"], policy.get("frequency", 1)))
