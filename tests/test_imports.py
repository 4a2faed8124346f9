"""The package's import graph: no cycles (lazy imports inside functions included), no private
names imported across modules, and every module imports on its own."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "bertology"
MODULES = sorted(p.stem for p in PKG.glob("*.py") if p.stem != "__init__")


def _imports(name: str) -> list[tuple[str, list[str]]]:
    """(imported sibling module, names) for every relative import in module ``name``."""
    tree = ast.parse((PKG / f"{name}.py").read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:  # from .x import a, b
                out.append((node.module.split(".")[0], [a.name for a in node.names]))
            else:  # from . import x
                out += [(a.name, []) for a in node.names if a.name in MODULES]
    return out


def graph() -> dict[str, set[str]]:
    return {m: {t for t, _ in _imports(m) if t in MODULES and t != m} for m in MODULES}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for t in sorted(g.get(n, ())):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (c := visit(t)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_import_graph_has_no_cycle():
    assert find_cycle(graph()) is None


def test_no_private_names_across_modules():
    bad = [(m, t, n) for m in MODULES for t, names in _imports(m) for n in names
           if n.startswith("_") and not n.startswith("__")]
    assert bad == []


@pytest.mark.parametrize("name", MODULES)
def test_module_imports_alone(name):
    subprocess.run([sys.executable, "-c", f"import bertology.{name}"], check=True, capture_output=True)
