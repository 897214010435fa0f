"""Recipe errors that point at the file, line and key path of each mistake."""


def format_path(path):
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


class RecipeIssue:
    def __init__(self, file, line, path, message):
        self.file, self.line, self.path, self.message = file, line, tuple(path), message

    def __str__(self):
        where = f"{self.file}:{self.line}" if self.line else f"{self.file}"
        return f"{where}: {format_path(self.path)}: {self.message}"


class RecipeError(ValueError):
    """All the mistakes found in one recipe, reported together."""

    def __init__(self, issues):
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))
