"""Recipe -> CompressionScheduler: validate the whole recipe, then build components and policies."""

import copy

from compressor.core.errors import RecipeError
from compressor.recipe.components import CALIBRATORS, DISTILLERS, LR_SCHEDULERS, QUANTIZERS
from compressor.recipe.loader import load_recipe, parse_recipe
from compressor.recipe.validate import policy_epochs, validate
from compressor.scheduling.distillation import DistillationPolicy
from compressor.scheduling.policies import CalibrationPolicy, LRPolicy, QuantizationPolicy
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
    policies = data.get("policies") or []
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
    return scheduler
