"""Which statistics record each activation site takes: our site names, and Distiller's module names.

Distiller's statistics files hold one record per *module* (``inputs`` and ``output``), collected on
an unfolded model whose every ReLU use and residual add is a module of its own: its ImageNet
ResNets call them ``layer1.0.relu1``, ``layer1.0.relu2`` and ``layer1.0.add``. We quantize per
*site* (one per call, fused chains, functional ops; see ``quantization/graph/sites.py``), and
torchvision's ResNets reuse one ``relu`` (our sites ``layer1.0.relu`` and ``layer1.0.relu@1``) and
add with ``+``. The mapping, tried in this order for a site whose fused chain ends at ``last``:

1. ``last`` is a conv/linear whose batch-norm ``bn`` was folded into it: ``bn``'s record (the
   folded layer computes what the batch-norm output; Distiller's ``test_stats_fusion_just_bn``).
2. the site's own name (our files; Distiller's when the names coincide).
3. the module's per-use name: ``m`` -> ``m1``, ``m@k`` -> ``m{k+1}`` (Distiller's ``relu1``,
   ``relu2``, ``relu3`` for the first, second, third call of one ReLU).
4. an in-place add ``P.iadd`` -> ``P.add``.
5. a chain ending in a functional ReLU (``F.relu``: no module, so no record in Distiller's file): the record
   of the op before it, by rules 1-4, clipped at 0 (min, max, avg_min and avg_max; mean and std kept), as
   Distiller's stats fusion derives it (its ``test_stats_fusion_sequential``, ``relu_pos_neg``/``relu_all_neg``).

Records of modules that are no site (a folded batch-norm, pooling, Distiller's ``add`` fused into
the ReLU after it) load and are unused; a record naming nothing in the model, or a site left
without a record, is an error that names them.
"""

from compressor.core.errors import StatsError


def per_use_name(name):
    """Distiller's name for one call of a reused module: ``relu`` -> ``relu1``, ``relu@1`` -> ``relu2``."""
    module, _, k = name.partition("@")
    return f"{module}{int(k or 0) + 1}"


def aliases(name, module_names=None):
    """Names a record for ``name`` may have in a Distiller statistics file, best first."""
    out = []
    module = name.split("@")[0]
    if module_names is None or module in module_names:
        out.append(per_use_name(name))
    scope, _, op = name.rpartition(".")
    if op == "iadd" or op.startswith("iadd_"):
        out.append(f"{scope}.add" if scope else "add")
    return out


def candidates(site, chain, module_names, folded):
    """Record names for ``site`` (whose fused chain is ``chain``), in the order they are tried."""
    last = chain[-1] if chain else site
    names = []
    if last.split("@")[0] in folded:
        names.append(folded[last.split("@")[0]])
    names.append(site)
    names += aliases(site, module_names)
    return names


def relu_clipped(record):
    """A record seen through a ReLU: Distiller clips min, max, avg_min and avg_max at 0 and keeps the rest."""
    out = dict(record)
    for key in ("min", "max", "avg_min", "avg_max"):
        if key in out:
            out[key] = max(out[key], 0.0)
    return out


def resolve(records, sites, module_names, chains=None, folded=None, where="stats", relus=()):
    """{site: record} for every site; ``StatsError`` naming what is missing or foreign.

    ``records``: {name: record} (``name#input`` for a module's first input, from ``load_stats``);
    ``sites``: the site names needing a record; ``chains``: {site: names of the fused ops ending at it}, for
    every site of the model (quantized or not);
    ``folded``: {conv/linear name: name of the batch-norm folded into it}; ``relus``: the sites whose chain ends
    in a ReLU (rule 5).
    """
    chains, folded, module_names = chains or {}, folded or {}, set(module_names)

    def lookup(name, chain):
        return next((records[n] for n in candidates(name, chain, module_names, folded) if n in records), None)

    result, missing = {}, []
    for site in sites:
        if site == "input":
            rec = records.get("input") or _first_input(records)
        else:
            chain = chains.get(site, (site,))
            rec = lookup(site, chain)
            functional = chain[-1].split("@")[0] not in module_names  # a ReLU module has records of its own
            if rec is None and site in relus and functional and len(chain) >= 2:
                before = lookup(chain[-2], chain[:-1])
                rec = relu_clipped(before) if before is not None else None
        if rec is None:
            missing.append(site)
        else:
            result[site] = rec
    known = set(module_names) | set(sites)
    for site in list(sites) + list(chains):  # chains may name sites left in FP32: their records are not foreign
        for name in (site, *chains.get(site, ())):
            known.add(name)
            known.update(aliases(name, module_names))
    unknown = list(dict.fromkeys(n.split("#")[0] for n in records if n.split("#")[0] not in known))
    problems = []
    if missing:
        problems.append(f"no statistics for {', '.join(missing)}")
    if unknown:
        problems.append(
            f"statistics for {', '.join(unknown)}, which the model does not have (renamed or another model?)"
        )
    if problems:
        raise StatsError(
            f"{where} do not fit the model: "
            + "; ".join(problems)
            + ". Re-collect them for this model (e.g. --qe-calibration)."
        )
    return result


def _first_input(records):
    for name, rec in records.items():
        if name.endswith("#input"):
            return rec
    return None
