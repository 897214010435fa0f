"""Recipe -> CompressionScheduler: validate the whole recipe, then build components and policies."""

import copy

from ..policies import LRPolicy, QuantizationPolicy
from ..registry import LR_SCHEDULERS, QUANTIZERS
from ..scheduler import CompressionScheduler
from .errors import RecipeError
from .loader import load_recipe, parse_recipe
from .validate import policy_epochs, validate


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
    for name, spec in (data.get("quantizers") or {}).items():
        args = {k: copy.deepcopy(v) for k, v in spec.items() if k != "class"}
        quantizers[name] = QUANTIZERS.get(spec["class"])(model, optimizer, **args)
    for name, spec in (data.get("lr_schedulers") or {}).items():
        args = {k: copy.deepcopy(v) for k, v in spec.items() if k != "class"}
        lr_schedulers[name] = LR_SCHEDULERS.get(spec["class"])(optimizer, **args)

    scheduler = CompressionScheduler(model, recipe=copy.deepcopy(data))
    for policy in data.get("policies") or []:
        epochs = policy_epochs(policy)
        if "quantizer" in policy:
            quantizer = quantizers[policy["quantizer"]["instance_name"]]
            scheduler.model = quantizer.prepare_model()
            scheduler.quantizer = quantizer
            qp = QuantizationPolicy(quantizer, epochs, policy.get("ending_epoch"))
            qp.apply_phase(QuantizationPolicy.FP32)
            scheduler.add_policy(qp)
        elif "lr_scheduler" in policy:
            scheduler.add_policy(LRPolicy(lr_schedulers[policy["lr_scheduler"]["instance_name"]], epochs))
    return scheduler
