"""The package's shape: leaf modules stay leaves, and the audit path never imports the reference code."""

import subprocess
import sys
from pathlib import Path

import pytest

# Each of these may import only the error type (the one leaf every module shares).
LEAVES = {
    "raypriv.errors": set(),
    "raypriv.config": {"raypriv.errors", "raypriv.config.fields"},
    "raypriv.seeding": set(),
    "raypriv.run.store": {"raypriv.errors", "raypriv.run", "raypriv.run.format"},
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
    assert "raypriv.driver" in loaded and "raypriv.attacks.reference" not in loaded
    loaded = loaded_raypriv_modules("raypriv.cli")
    assert "raypriv.attacks.reference" not in loaded


def test_scoring_imports_neither_torch_nor_ray():
    """Scoring's readers (benchmark workers, Ray Data tasks) never pay for torch; Ray loads only when a backend needs it."""
    code = "import sys, raypriv.scoring; print('torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    assert out == ["False", "False"]


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its source (top level, in functions, for type checks).

    A package's ``__init__`` is a facade over its modules, so an import of it is not an edge."""
    import ast

    files = {".".join(p.relative_to(root.parent).with_suffix("").parts): p for p in root.rglob("*.py")}
    modules = {name.removesuffix(".__init__") for name in files}
    packages = {name.removesuffix(".__init__") for name in files if name.endswith(".__init__")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        module = name.removesuffix(".__init__")
        package = module if name.endswith(".__init__") else module.rpartition(".")[0]
        edges = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            else:
                continue
            edges.update(t for t in targets if t in modules and t not in packages and t != module)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_no_import_cycles_among_the_package_modules():
    """Deferred and type-only imports count: a cycle through them still ties two modules' designs together."""
    graph = import_graph(Path(__file__).resolve().parents[1] / "raypriv")
    assert "raypriv.run.fingerprints" in graph["raypriv.scoring.plan"]  # a function-level import is read
    assert import_cycles(graph) == []


def test_the_cycle_check_finds_a_cycle(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from pkg.a import f\n")
    (package / "a.py").write_text("def f():\n    from pkg import b\n")
    (package / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import f\n")
    (package / "c.py").write_text("from . import a\n")
    graph = import_graph(package)
    assert graph["pkg.c"] == {"pkg.a"} and import_cycles(graph) == [["pkg.a", "pkg.b"]]


def test_no_private_name_is_imported_across_modules():
    """What modules share is public and documented: no ``from raypriv.x import _y`` anywhere in the package."""
    import ast

    root = Path(__file__).resolve().parents[1] / "raypriv"
    found = [
        f"{path.relative_to(root.parent)}:{node.lineno} imports {alias.name} from {node.module}"
        for path in sorted(root.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("raypriv")
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    ]
    assert not found, "\n".join(found)
