"""Safe YAML loading that remembers the line of every key, for error messages."""

import yaml

from compressor.core.errors import RecipeError, RecipeIssue


class Recipe:
    """A parsed recipe: plain data plus the line of each key path."""

    def __init__(self, data, lines, file):
        self.data, self.lines, self.file = data, lines, file

    def line(self, path):
        """Line of ``path``, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None

    def issue(self, path, message):
        return RecipeIssue(self.file, self.line(path), path, message)


def _walk(node, path, lines, issues, file):
    if isinstance(node, yaml.MappingNode):
        seen = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                issues.append(RecipeIssue(file, line, path + (key,), f"duplicate key (first at line {seen[key]})"))
            seen[key] = line
            lines[path + (key,)] = line
            _walk(value_node, path + (key,), lines, issues, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _walk(item, path + (i,), lines, issues, file)


def parse_recipe(text, file="<recipe>"):
    """Parse YAML text with the safe loader; a RecipeError for syntax errors and duplicate keys."""
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        raise RecipeError([RecipeIssue(file, line, (), f"invalid YAML: {getattr(exc, 'problem', exc)}")]) from None
    lines, issues = {}, []
    if root is not None:
        _walk(root, (), lines, issues, file)
    if issues:
        raise RecipeError(issues)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError([RecipeIssue(file, 1, (), "a recipe is a mapping of sections (quantizers, lr_schedulers, policies)")])
    return Recipe(data, lines, file)


def load_recipe(path):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise RecipeError([RecipeIssue(path, None, (), f"cannot read recipe: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise RecipeError([RecipeIssue(path, None, (), "not a YAML text file (not UTF-8)")]) from None
    return parse_recipe(text, path)
