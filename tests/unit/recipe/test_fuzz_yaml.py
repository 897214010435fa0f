"""Property-based fuzzing of the YAML inputs (issue 12): recipes (loader + validator) and statistics files.

Whatever the text (random characters, mutations of real recipes, random data trees, alias chains),
reading it either succeeds or raises the input's error type whose every message names ``file:line``;
never another exception (a traceback for the user), never a hang (hypothesis' deadline), never a
memory blow-up (the process' peak resident memory grows by less than MAX_GROWTH over all examples;
an alias bomb needs gigabytes). Derandomized and bounded (max_examples, deadline): the same examples
in CI every time, about 10 s of CPU for both tests.
"""

import glob
import math
import os
import re
import resource
import tempfile

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compressor.calibration.stats_file import load_stats
from compressor.core.errors import RecipeError, StatsError
from compressor.recipe.build import read_recipe

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
SEEDS = [open(p).read() for p in sorted(glob.glob(os.path.join(ROOT, "schedules", "**", "*.yaml"), recursive=True))]
STATS_SEED = """\
conv1:
  inputs:
    0: {min: -2.1, max: 2.6, avg_min: -2.0, avg_max: 2.5, mean: 0.0, std: 1.0, b: 0.8, shape: (256, 3, 32, 32)}
  output: {min: -5.0, max: 6.0, avg_min: -4.0, avg_max: 5.0, mean: 0.1, std: 1.2, b: 0.9}
fc:
  output: {min: -3.0, max: 3.0, avg_min: -2.0, avg_max: 2.0, mean: 0.0, std: 1.0, b: 0.7}
"""
MAX_GROWTH_KB = 256 * 1024
FUZZ = settings(
    max_examples=100,
    deadline=3000,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

YAML_CHARS = st.sampled_from(
    list("abcxyz019 -:,.[]{}&*!|>'\"#%@`?\n\t")
    + ["  ", "\n  ", ".nan", ".inf", "~", "null", "class", "quantizers", "policies"]
)
KEYS = st.sampled_from(
    [
        "quantizers",
        "lr_schedulers",
        "policies",
        "class",
        "bits_weights",
        "bits_activations",
        "mode",
        "overrides",
        "starting_epoch",
        "ending_epoch",
        "frequency",
        "epochs",
        "instance_name",
        "quantizer",
        "lr_scheduler",
        "gamma",
        "milestones",
        "step_size",
        "clip_acts",
        "min",
        "max",
        "output",
        "inputs",
        "conv1",
        "fc",
        0,
        1,
        "QuantAwareTrainRangeLinearQuantizer",
        "StepLR",
    ]
)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=8), KEYS
)
TREES = st.recursive(
    SCALARS, lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(KEYS, kids, max_size=4)), max_leaves=25
)


def mutate(text, edits):
    for kind, at, piece in edits:
        i = at % (len(text) + 1)
        if kind == 0:
            text = text[:i] + piece + text[i:]
        elif kind == 1:
            text = text[:i] + text[i + len(piece) :]
        else:
            lines = text.split("\n")
            j = at % len(lines)
            lines.insert(at % (len(lines) + 1), lines[j])  # a line duplicated elsewhere
            text = "\n".join(lines)
    return text


EDITS = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 10**6), st.lists(YAML_CHARS, max_size=3).map("".join)),
    min_size=1,
    max_size=6,
)


def alias_chain(counts):
    """Anchors each referring to the previous one ``count`` times: up to 20**len(counts) nodes once expanded."""
    text = "a0: &a0 [1, 2]\n"
    for i, count in enumerate(counts, 1):
        text += f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * count)}]\n"
    return text


def splice(seed, tree, path_choice):
    """A seed document with one of its values (picked by ``path_choice``) replaced by a random tree."""
    data = yaml.safe_load(seed)
    if not isinstance(data, (dict, list)):
        return yaml.safe_dump(tree)
    node = data
    for n, step in enumerate(path_choice):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = keys[step % len(keys)]
        child = node[key]
        if not isinstance(child, (dict, list)) or step % 3 == 0 or n == len(path_choice) - 1:
            node[key] = tree
            break
        node = child
    return yaml.safe_dump(data, sort_keys=False)


TEXTS = st.one_of(
    st.lists(YAML_CHARS, max_size=80).map("".join),
    st.tuples(st.sampled_from(SEEDS), EDITS).map(lambda a: mutate(*a)),
    st.tuples(st.sampled_from(SEEDS), TREES, st.lists(st.integers(0, 50), min_size=1, max_size=5)).map(
        lambda a: splice(*a)
    ),
    TREES.map(lambda t: yaml.safe_dump(t, sort_keys=False)),
    st.lists(st.integers(1, 20), min_size=1, max_size=12).map(alias_chain),
)


def located(message, file):
    return re.search(rf"{re.escape(file)}:\d+: ", message) is not None


@pytest.fixture(scope="module")
def memory():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    yield
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < MAX_GROWTH_KB


@FUZZ
@given(text=TEXTS)
def test_recipe_text_is_accepted_or_a_located_error(memory, text):
    try:
        recipe = read_recipe(text, file="fuzz.yaml")
    except RecipeError as exc:
        assert exc.issues
        for issue in exc.issues:
            assert issue.file == "fuzz.yaml" and isinstance(issue.line, int) and issue.line >= 1, str(issue)
    else:
        assert isinstance(recipe.data, dict)


STATS_TEXTS = st.one_of(
    st.tuples(st.just(STATS_SEED), EDITS).map(lambda a: mutate(*a)),
    st.tuples(st.just(STATS_SEED), TREES, st.lists(st.integers(0, 50), min_size=1, max_size=5)).map(
        lambda a: splice(*a)
    ),
    TREES.map(lambda t: yaml.safe_dump(t, sort_keys=False)),
    st.lists(st.integers(1, 20), min_size=1, max_size=12).map(alias_chain),
    st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
)


@FUZZ
@given(text=STATS_TEXTS)
def test_stats_text_is_accepted_or_a_located_error(memory, text):
    folder = tempfile.mkdtemp(prefix="fuzz-stats-")
    path = os.path.join(folder, "stats.yaml")
    try:
        with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
        try:
            records = load_stats(path)
        except StatsError as exc:
            assert located(str(exc), path), str(exc)
        else:
            for record in records.values():
                assert math.isfinite(record["min"]) and math.isfinite(record["max"]) and record["min"] <= record["max"]
    finally:
        os.unlink(path)
        os.rmdir(folder)
