"""The import direction of compressor, written down so a test can hold it.

Each package may import packages of a lower layer (earlier in ``LAYERS``) and modules of its own
package; never a higher layer, never a sibling of the same layer. Imports are read with ``ast``
(function-local ones included: a lazy import does not excuse a wrong direction).
"""

import ast
import os

# lowest first; packages in one tuple are independent of each other
LAYERS = (
    ("compressor.core",),
    ("compressor.calibration", "compressor.data", "compressor.models"),
    ("compressor.quantization", "compressor.pruning"),
    ("compressor.scheduling",),
    ("compressor.recipe",),
    ("compressor.training",),
    ("compressor.deploy",),
    ("compressor.app",),
    ("compressor.compare", "compressor.cli", "compressor.api"),  # entry points: commands and the Python API
)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _package_of(module):
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _resolve(module_name, node):
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level == 0:
        return [node.module] if node.module else []
    base = module_name.split(".")[: -node.level]
    target = ".".join(base + ([node.module] if node.module else []))
    if node.module:
        return [target]
    return [f"{target}.{a.name}" for a in node.names]


def _parsed_modules():
    """(module name, anchor for relative imports, parsed tree) of every module under compressor/."""
    for dirpath, _, files in sorted(os.walk(ROOT)):
        for f in sorted(files):
            if not f.endswith(".py"):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
            name = rel[: -len(".__init__")] if rel.endswith(".__init__") else rel
            with open(path, encoding="utf-8") as fh:
                tree = ast.parse(fh.read(), path)
            # relative imports inside a package's __init__ resolve against the package itself
            yield name, rel, tree


def module_imports():
    """{module: set of compressor modules it imports} for every module under compressor/.

    ``from package import name`` counts as importing ``package.name`` when that is a module."""
    parsed = list(_parsed_modules())
    known = {name for name, _, _ in parsed}
    out = {}
    for name, anchor, tree in parsed:
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _resolve(anchor, node):
                    if not target.startswith("compressor"):
                        continue
                    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                        subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
                        deps.update(subs or [target])
                    else:
                        deps.add(target)
        out[name] = deps - {name}
    return out


def package_imports():
    """{package: set of other compressor packages it imports}."""
    out = {}
    for module, deps in module_imports().items():
        pkg = _package_of(module)
        out.setdefault(pkg, set()).update(_package_of(d) for d in deps if _package_of(d) != pkg)
    return out


def check(imports=None):
    """Messages for every import that goes up or sideways, and every package missing from LAYERS."""
    imports = package_imports() if imports is None else imports
    rank = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
    problems = []
    for pkg, deps in sorted(imports.items()):
        if pkg == "compressor":
            continue
        if pkg not in rank:
            problems.append(f"{pkg} is in no layer of compressor.core.layers.LAYERS")
            continue
        for dep in sorted(deps):
            if dep == "compressor":
                problems.append(f"{pkg} imports the top-level package compressor")
            elif dep not in rank:
                problems.append(f"{pkg} imports {dep}, which is in no layer")
            elif rank[dep] >= rank[pkg]:
                problems.append(f"{pkg} (layer {rank[pkg]}) imports {dep} (layer {rank[dep]})")
    return problems


def module_cycles(imports=None):
    """Each import cycle between modules, as a list of module names (function-local imports count)."""
    imports = module_imports() if imports is None else imports
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(imports.get(node, ())):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = "done"

    for module in sorted(imports):
        if module not in state:
            visit(module, [])
    return cycles


def local_imports():
    """(module, line, imported module) for every compressor import made inside a function."""
    found = []
    for name, anchor, tree in _parsed_modules():
        for func in ast.walk(tree):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(func):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        found += [(name, node.lineno, t) for t in _resolve(anchor, node) if t.startswith("compressor")]
    return found
