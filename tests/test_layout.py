"""The package's shape: leaf modules stay leaves, and the audit path never imports the reference code."""

import subprocess
import sys

import pytest

# Each of these may import only the error type (the one leaf every module shares).
LEAVES = {
    "raypriv.errors": set(),
    "raypriv.config": {"raypriv.errors"},
    "raypriv.seeding": set(),
    "raypriv.store": {"raypriv.errors"},
}


def loaded_raypriv_modules(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(m for m in sys.modules if m.startswith('raypriv')))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(out.split())


@pytest.mark.parametrize("module", sorted(LEAVES))
def test_leaf_modules_import_no_other_raypriv_module(module):
    assert loaded_raypriv_modules(module) - {"raypriv", module} == LEAVES[module]


def test_the_audit_path_never_imports_the_reference_implementations():
    loaded = loaded_raypriv_modules("raypriv.driver")
    assert "raypriv.driver" in loaded and "raypriv.reference" not in loaded
    loaded = loaded_raypriv_modules("raypriv.cli")
    assert "raypriv.reference" not in loaded


def test_no_module_of_the_package_is_over_500_lines():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "raypriv"
    long = {str(p.relative_to(root)): n for p in root.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500}
    assert not long, f"modules over 500 lines: {long}"
