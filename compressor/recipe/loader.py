"""Safe YAML loading that remembers the line of every key, for error messages."""

from compressor.core.errors import RecipeError, RecipeIssue
from compressor.core.safe_yaml import load_yaml, read_text


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
        return 1 if self.lines else None

    def issue(self, path, message):
        return RecipeIssue(self.file, self.line(path), path, message)


def parse_recipe(text, file="<recipe>"):
    """Parse YAML text with the bounded safe loader; a RecipeError for syntax errors, duplicate keys and
    oversized documents (see ``compressor.core.safe_yaml``)."""
    data, lines = load_yaml(text, file)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(
            [RecipeIssue(file, 1, (), "a recipe is a mapping of sections (quantizers, lr_schedulers, policies)")]
        )
    return Recipe(data, lines, file)


def load_recipe(path):
    return parse_recipe(read_text(path, "recipe"), path)
