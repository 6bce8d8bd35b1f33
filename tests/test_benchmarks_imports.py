"""benchmarks/ has no import circle (issue 20): the shared timing helpers live in the leaf
``benchmarks/timing.py``, and ``run.py`` gathers the per-topic benchmarks without any of
them importing it back. Imports inside functions count too."""
from __future__ import annotations

import ast
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def imports(path: Path) -> set[str]:
    """The benchmarks modules ``path`` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from .x import y / from . import x
                found |= {node.module} if node.module else {a.name for a in node.names}
            elif node.module and node.module.split(".")[0] == "benchmarks":
                parts = node.module.split(".")
                found |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names
                      if a.name.startswith("benchmarks.")}
    return found


def graph() -> dict[str, set[str]]:
    return {p.stem: imports(p) for p in BENCHMARKS.glob("*.py")}


def cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``g`` (a list of modules), or None."""
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(g.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep, path + [dep])):
                return found
        state[node] = 2
        return None

    for node in sorted(g):
        if node not in state and (found := visit(node, [node])):
            return found
    return None


def test_no_import_circle_in_benchmarks():
    g = graph()
    assert g["run"] >= {"layers", "sequence", "bp4_forms", "timing"}  # the walk sees them
    assert cycle(g) is None, " -> ".join(cycle(g))
    assert g["timing"] == set()  # the leaf


def test_the_cycle_finder_finds_a_circle():
    """The check above can fail: run -> layers -> run, as before issue 20."""
    found = cycle({"run": {"layers", "timing"}, "layers": {"run"}, "timing": set()})
    assert found is not None and found[0] == found[-1] and set(found) == {"run", "layers"}
