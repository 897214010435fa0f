"""The package's import direction (compressor.core.layers.LAYERS) holds: no upward import, no cycle,
no compressor import hidden inside a function, nothing registered as a side effect of importing."""

import subprocess
import sys

from compressor.core.layers import LAYERS, check, local_imports, module_cycles, module_imports, package_imports


def test_every_package_imports_only_lower_layers():
    assert check() == []


def test_no_module_level_import_cycle():
    assert module_cycles() == []


def test_no_function_local_project_import():
    assert local_imports() == []


def test_the_check_catches_an_upward_import_and_a_cycle():
    imports = package_imports()
    imports["compressor.core"] = {"compressor.app"}
    assert check(imports) == ["compressor.core (layer 0) imports compressor.app (layer 7)"]
    modules = module_imports()
    modules["compressor.core.errors"] = {"compressor.core.io"}
    # the cycle is reported from wherever the search met it first (which module is visited first decides)
    assert any({"compressor.core.errors", "compressor.core.io"} <= set(c) for c in module_cycles(modules))


def test_layers_cover_every_package():
    packages = {m.split(".")[1] for m in module_imports() if m.count(".") >= 1}
    assert packages == {pkg.split(".")[1] for layer in LAYERS for pkg in layer}


def test_importing_the_library_registers_nothing():
    """Importing every quantizer module leaves no registry filled: registries are declared in recipe.components."""
    code = ("import compressor.quantization.linear.qat, compressor.quantization.linear.ptq, "
            "compressor.quantization.low_bit.quantizers, compressor.quantization.low_bit.inq, "
            "compressor.scheduling.calibrator, compressor.scheduling.distillation, sys; "
            "print(sorted(m for m in sys.modules if m == 'compressor.recipe.components'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_tools_layers_prints_the_table(root):
    out = subprocess.run([sys.executable, "tools/layers.py"], capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stdout
    assert "0  compressor.core" in out.stdout and "7  compressor.app" in out.stdout


def test_unit_tests_are_laid_out_like_the_package(root):
    """tests/unit/<package>/ mirrors compressor/<package>/; app-level runs live in tests/e2e/."""
    import os

    unit = os.path.join(root, "tests", "unit")
    packages = {pkg.split(".")[1] for layer in LAYERS for pkg in layer}
    assert set(os.listdir(unit)) - {"__pycache__"} <= packages
