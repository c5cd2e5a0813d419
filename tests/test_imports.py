"""The module graph has no cycles: every import, at module level or inside a function, points one way."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"szoq_hub": REPO / "szoq_hub", "szoq_cli": REPO / "cli"}


def _module_graph() -> dict[str, set[str]]:
    modules = {f"{pkg}.{p.stem}": p for pkg, folder in PACKAGES.items() for p in folder.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        pkg = name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = pkg if node.level == 1 else (node.module or "").split(".")[0] if node.level == 0 else None
                mod = f"{pkg}.{node.module}" if node.level == 1 and node.module else (node.module if node.level == 0 else base)
                if node.level == 1 and not node.module:  # from . import x
                    targets = [f"{pkg}.{a.name}" for a in node.names]
                else:
                    targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.Tuple) and node.elts and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
                # ("mask_hub", "finetune", ...): command groups imported by name with __import__
                targets = [f"{pkg}.{e.value}" for e in node.elts]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_sees_imports_inside_functions():
    graph = _module_graph()
    assert "szoq_hub.hub" in graph["szoq_hub.refs"]  # pull_mask is imported lazily, inside a function
    assert "szoq_hub.transport" in graph["szoq_hub.hub"]
    assert {"szoq_cli.mask", "szoq_cli.finetune"} <= graph["szoq_cli.app"]


def test_no_import_cycles():
    cycle = _cycle(_module_graph())
    assert cycle is None, " -> ".join(cycle)
