"""Per-layer override lookup with Distiller's precedence.

An exact module name beats every regex; otherwise the first regex in file order
that fully matches wins. A leading ``module.`` (DataParallel/DDP) is ignored.
"""

import re


def strip_parallel_prefix(name):
    while name.startswith("module."):
        name = name[len("module."):]
    return name


class OverrideTable:
    def __init__(self, overrides=None):
        self._entries = dict(overrides or {})
        self._patterns = []
        for key in self._entries:
            try:
                self._patterns.append((key, re.compile(key)))
            except re.error:
                self._patterns.append((key, None))  # only usable as an exact name
        self.used = set()

    def match(self, name):
        """The key that governs ``name``, or None."""
        name = strip_parallel_prefix(name)
        if name in self._entries:
            return name
        for key, pattern in self._patterns:
            if pattern is not None and pattern.fullmatch(name):
                return key
        return None

    def lookup(self, name):
        """The override settings for ``name`` (a dict, empty when none applies); marks the key used."""
        key = self.match(name)
        if key is None:
            return {}
        self.used.add(key)
        return dict(self._entries[key] or {})

    def unused(self):
        return [key for key in self._entries if key not in self.used]
