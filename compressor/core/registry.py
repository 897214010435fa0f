"""Name -> class registries: recipes may only name classes registered here.

A recipe never imports by path. A registry is declared with its built-in classes and the
interface every member must have (``base``: a class to derive from, or ``members``: names it
must define, e.g. ``CONFIG`` and ``calibrate``); users add their own classes with ``register``.
Nothing registers itself at import.
"""


class Registry:
    def __init__(self, kind, classes=(), base=None, members=()):
        self.kind = kind
        self.base = base
        self.members = tuple(members)
        self._classes = {}
        for cls in classes:
            self.register(cls)

    def register(self, cls=None, *, name=None):
        """Register ``cls`` under ``name`` (default: its class name). Usable as a decorator."""

        def add(c):
            if self.base is not None and not (isinstance(c, type) and issubclass(c, self.base)):
                raise TypeError(f"a {self.kind} must derive from {self.base.__name__}; {c!r} does not")
            missing = [m for m in self.members if not callable(getattr(c, m, None))]
            if missing:
                raise TypeError(f"a {self.kind} must define {', '.join(missing)}; {c!r} does not")
            key = name or c.__name__
            if key in self._classes and self._classes[key] is not c:
                raise ValueError(f"{self.kind} '{key}' is already registered to {self._classes[key]!r}")
            self._classes[key] = c
            return c

        return add(cls) if cls is not None else add

    def get(self, name):
        return self._classes.get(name)

    def names(self):
        return sorted(self._classes)

    def __contains__(self, name):
        return name in self._classes
