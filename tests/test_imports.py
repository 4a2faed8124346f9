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


#: The engine's rooms: the only modules that may run a model (issue 15).
ROOMS = {"extract", "interventions", "scorers"}
MODEL_CALLEES = {"model", "base_model", "forward"}


def model_calls(source: str) -> list[int]:
    """Lines of calls that run a model: ``model(...)``, ``x.model(...)``, ``x.base_model(...)``,
    ``x.forward(...)``, or a call of what ``base_of(...)`` returns."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name):  # forward(...) is the engine's function, model(...) is not
            bad = f.id in ("model", "base_model")
        elif isinstance(f, ast.Attribute):  # x.model(...), x.forward(...) but not extract.forward(...)
            engine = isinstance(f.value, ast.Name) and f.value.id in ("extract", "_extract", "ex")
            bad = f.attr in MODEL_CALLEES and not (f.attr == "forward" and engine)
        else:  # base_of(model)(...)
            bad = isinstance(f, ast.Call) and getattr(f.func, "id", getattr(f.func, "attr", None)) in ("base_of", "_base")
        if bad:
            lines.append(node.lineno)
    return sorted(lines)


def test_model_call_finder_finds_planted_calls():
    src = ("a = loaded.model(**b)\nb = model(x)\nc = self._base.base_model(ids)\nd = m.forward(x)\n"
           "e = base_of(m)(**b)\nf = probe(x)\ng = forward(loaded, b)\nh = loaded.model.config\n"
           "i = _extract.forward(loaded, b)\n")
    assert model_calls(src) == [1, 2, 3, 4, 5]


def test_models_run_only_in_the_engine_rooms():
    bad = {m: model_calls((PKG / f"{m}.py").read_text(encoding="utf-8")) for m in MODULES if m not in ROOMS}
    assert {m: lines for m, lines in bad.items() if lines} == {}
