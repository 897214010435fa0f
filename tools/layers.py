"""Print compressor's layers, what each imports, and any import that goes upwards or forms a cycle.

    python tools/layers.py          # the layer table; exit 1 when the import direction is broken

The layer order lives in ``compressor.core.layers.LAYERS``; tests/test_layering.py runs the same check.
"""

import sys

from compressor.core.layers import LAYERS, check, local_imports, module_cycles, package_imports


def main():
    imports = package_imports()
    for i, layer in enumerate(LAYERS):
        for pkg in layer:
            deps = sorted(imports.get(pkg, ()))
            print(f"{i}  {pkg:<28} imports {', '.join(deps) if deps else '-'}")
    problems = check(imports) + [" -> ".join(c) for c in module_cycles()]
    for module, line, target in local_imports():
        print(f"function-local import: {module}:{line} imports {target}")
    for p in problems:
        print("VIOLATION:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
