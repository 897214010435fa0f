"""Bounded safe YAML: the one reader of recipes and statistics files, with the line of every key.

PyYAML's safe loader builds no objects, but by itself it does not bound resources: an alias bomb
("billion laughs", nine levels of nine aliases) expands to 10^9 nodes when anything walks the data
(measured before this module: past 12 GB), deep nesting ends in a RecursionError traceback, and
``/dev/zero`` is read until memory runs out. So this reader refuses, with ``file:line`` errors:
files that are not regular files or exceed MAX_BYTES, nesting deeper than MAX_DEPTH, documents
whose alias-expanded size exceeds MAX_NODES, and self-referencing aliases. The limits are far
above real files: a recipe has under 1,000 nodes at depth under 8, a statistics file about ten
nodes per layer at depth 4. Composing MAX_BYTES of YAML stays under ~0.5 GB (nodes are counted
while composing, so a large flat file stops at MAX_NODES too).
"""

import os
import stat

import yaml

from compressor.core.errors import RecipeError, RecipeIssue

MAX_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 200_000


_BASE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: streams events (PyYAML's own scanner
# looks ahead over every "[" of a flow collection: 10 kB of "[" took 2 s, 4 MB would not end)


class _Loader(_BASE):
    """The safe loader (LibYAML's parser when present) whose value errors carry a line."""

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, OverflowError) as exc:  # e.g. a timestamp 2001-13-45
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read value {node.value!r}: {exc}", node.start_mark
            ) from None


_NODE_EVENTS = (yaml.ScalarEvent, yaml.AliasEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent)


def _check_events(text):
    """One streaming pass over the parser's events: YAMLError past MAX_DEPTH or MAX_NODES (before composing)."""
    depth = nodes = 0
    for event in yaml.parse(text, Loader=_BASE):
        if isinstance(event, _NODE_EVENTS):
            nodes += 1
            if nodes > MAX_NODES:
                raise yaml.composer.ComposerError(None, None, f"more than {MAX_NODES} values", event.start_mark)
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nesting deeper than {MAX_DEPTH} levels", event.start_mark
                )
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


def read_text(path, what="file"):
    """The UTF-8 text of the regular file ``path`` (at most MAX_BYTES), else a RecipeError naming it."""

    def fail(message, line=None):
        return RecipeError([RecipeIssue(path, line, (), message)])

    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise fail(f"cannot read {what}: not a regular file")
        if st.st_size > MAX_BYTES:
            raise fail(f"{what} is {st.st_size} bytes, more than the {MAX_BYTES} a {what} may have")
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise fail(f"cannot read {what}: {exc.strerror}") from None
    if len(data) > MAX_BYTES:
        raise fail(f"{what} is more than the {MAX_BYTES} bytes a {what} may have")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise fail(
            f"not a YAML text file (byte {exc.start} is not UTF-8)", data[: exc.start].count(b"\n") + 1
        ) from None


def load_yaml(text, file):
    """``(data, lines)``: the document and {key path: line}; a RecipeError for bad or oversized YAML."""
    if len(text) > MAX_BYTES:
        raise RecipeError([RecipeIssue(file, None, (), f"more than {MAX_BYTES} characters of YAML")])
    loader = None
    try:
        _check_events(text)
        loader = _Loader(text)
        root = loader.get_single_node()
        if root is not None:
            _check_size(root)
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark else 1
        problem = getattr(exc, "problem", None) or str(exc)
        if "maximum nesting depth" in problem:  # libyaml >= 0.2.5 (PyYAML 6.0.4's wheels) stops deep flow
            # collections while scanning, before our event check sees depth MAX_DEPTH + 1: same refusal, our words
            problem = f"nesting deeper than {MAX_DEPTH} levels (the YAML parser's own limit: {problem})"
        raise RecipeError([RecipeIssue(file, line, (), f"invalid YAML: {problem}")]) from None
    finally:
        if loader is not None:
            loader.dispose()
    lines, issues = {}, []
    if root is not None:
        _walk(root, (), lines, issues, file)
    if issues:
        raise RecipeError(issues)
    return data, lines


def _check_size(root):
    """YAMLError when the alias-expanded document exceeds MAX_NODES nodes or MAX_DEPTH levels, or an
    alias refers to the node that contains it. Memoized per node: linear in the composed size."""
    memo, active = {}, set()

    def fail(message, node):
        return yaml.composer.ComposerError(None, None, message, node.start_mark)

    def measure(node, depth):  # -> (expanded size, height)
        if depth > MAX_DEPTH:
            raise fail(f"nesting deeper than {MAX_DEPTH} levels once aliases are expanded", node)
        key = id(node)
        if key in active:
            raise fail("an alias refers to the node that contains it", node)
        if key not in memo:
            active.add(key)
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            else:
                children = []
            total, height = 1, 1
            for child in children:
                child_size, child_height = measure(child, depth + 1)
                total, height = total + child_size, max(height, child_height + 1)
                if total > MAX_NODES:
                    raise fail(f"more than {MAX_NODES} values once aliases are expanded (an alias bomb?)", child)
            active.discard(key)
            memo[key] = (total, height)
        if depth + memo[key][1] - 1 > MAX_DEPTH:
            raise fail(f"nesting deeper than {MAX_DEPTH} levels once aliases are expanded", node)
        return memo[key]

    measure(root, 1)


def _walk(node, path, lines, issues, file):
    if isinstance(node, yaml.MappingNode):
        seen = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else f"<{key_node.id} key at line {line}>"
            if key in seen:
                issues.append(RecipeIssue(file, line, path + (key,), f"duplicate key (first at line {seen[key]})"))
            seen[key] = line
            lines[path + (key,)] = line
            _walk(value_node, path + (key,), lines, issues, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _walk(item, path + (i,), lines, issues, file)
