"""Per-layer override lookup with Distiller's precedence.

An exact module name beats every regex; otherwise the first regex in file order
that fully matches wins. A leading ``module.`` (DataParallel/DDP) is ignored.
"""

import re

from compressor.core.errors import RecipeError

try:  # the parser re.compile itself uses (private, so guarded): it gives the pattern's tree
    from re import _constants as _sre_constants
    from re import _parser as _sre_parser
except ImportError:  # pragma: no cover - Python < 3.11
    import sre_constants as _sre_constants
    import sre_parse as _sre_parser

_REPEATS = {_sre_constants.MAX_REPEAT, _sre_constants.MIN_REPEAT, getattr(_sre_constants, "POSSESSIVE_REPEAT", None)}


def backtracking_risk(pattern):
    """Why matching ``pattern`` can take exponential time, or None.

    Python's ``re`` backtracks: a repeated group whose body can itself match the same text in many ways (a
    ``*``/``+`` inside, or an alternation) tries them all before failing, so ``(.*.*)*X`` against a 15-character
    layer name ran for minutes (an attacker's or a typo's recipe hung preparation). Such nesting is refused;
    every override Distiller's recipes use (``conv1``, ``layer1\\..*``, ``.*downsample.*``) has none.
    """
    try:
        tree = _sre_parser.parse(pattern)
    except re.error:
        return None

    def unbounded(max_count):
        return max_count == _sre_constants.MAXREPEAT or max_count > 16

    def walk(items, inside_repeat):
        for op, arg in items:
            if op in _REPEATS:
                lo, hi, body = arg
                if inside_repeat and unbounded(hi):
                    return "a repeated group that contains another unbounded repeat (e.g. (.*)*)"
                found = walk(body, inside_repeat or unbounded(hi))
                if found:
                    return found
            elif op is _sre_constants.BRANCH:
                if inside_repeat:
                    return "an alternation inside a repeated group (e.g. (a|b)*)"
                for branch in arg[1]:
                    found = walk(branch, inside_repeat)
                    if found:
                        return found
            elif op is _sre_constants.SUBPATTERN:
                found = walk(arg[-1], inside_repeat)
                if found:
                    return found
            elif op in (_sre_constants.ASSERT, _sre_constants.ASSERT_NOT):
                found = walk(arg[1], inside_repeat)
                if found:
                    return found
        return None

    return walk(tree, False)


def strip_parallel_prefix(name):
    while name.startswith("module."):
        name = name[len("module."):]
    return name


class OverrideTable:
    def __init__(self, overrides=None):
        self._entries = dict(overrides or {})
        self._patterns = []
        for key in self._entries:
            risk = backtracking_risk(key) if isinstance(key, str) else None
            if risk:
                raise RecipeError([f"overrides: {key!r}: {risk} can take exponential time to match; "
                                  "write the pattern without nesting (e.g. '.*X' for '(.*)*X')"])
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
