"""The module graph has no cycles: every import, at module level or inside a function, points one way.

Two kinds of import statement are not edges of the graph: those under `if TYPE_CHECKING:` (never
run), and those inside the methods of a `HubMixin` subclass (SensitivityMask, Delta). Those
classes sit low because the layers above load and verify them; their `from_pretrained` /
`push_to_hub` / `merge_into` hooks reach the hub layer when called, in the manner of
huggingface_hub's `ModelHubMixin` (szoq_hub/core/hub_mixin.py).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"szoq_hub": REPO / "szoq_hub", "szoq_cli": REPO / "cli"}


LAYERS = ("core", "data", "masks", "runtime", "hub", "methods", "training", "export")  # szoq_hub's subpackages, lowest first


def _module_name(pkg: str, folder: Path, path: Path) -> str:
    return ".".join([pkg, *path.relative_to(folder).with_suffix("").parts])


def _not_edges(tree: ast.AST) -> set[int]:
    """ids of the nodes under `if TYPE_CHECKING:` (annotations only, never run)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for part in node.body:
                skip |= {id(n) for n in ast.walk(part)}
    return skip


def _module_graph() -> dict[str, set[str]]:
    """Module -> the modules (and packages) it imports, resolved from relative imports at any depth."""
    files = {_module_name(pkg, folder, p): p for pkg, folder in PACKAGES.items() for p in folder.rglob("*.py")}
    modules = {m.removesuffix(".__init__"): p for m, p in files.items()}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]  # the package relative imports start from
        tree = ast.parse(path.read_text())
        skip = _not_edges(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                    mod = f"{base}.{node.module}" if node.module else base
                else:
                    mod = node.module or ""
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"\.[\w.]+:\w+", node.value):
                # ".sparse.trainable:SparseTrainable": a class the method table imports on first use
                targets = [f"{pkg}.{node.value[1:].split(':')[0]}"]
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
    assert "szoq_hub.hub.masks" in graph["szoq_hub.hub.refs"]  # pull_mask is imported lazily, inside a function
    assert "szoq_hub.hub.transport" in graph["szoq_hub.hub.masks"]
    assert {"szoq_cli.mask", "szoq_cli.finetune"} <= graph["szoq_cli.app"]
    assert "szoq_hub.methods.sparse.trainable" in graph["szoq_hub.methods"]  # registered as ".sparse.trainable:SparseTrainable"


def test_the_graph_skips_only_type_checking_imports():
    graph = _module_graph()
    assert "szoq_hub.hub.transport" not in graph["szoq_hub.hub.mixin"]  # PushResult: an annotation only
    assert "szoq_hub.training.config" not in graph["szoq_hub.methods.spec"]  # FinetuneConfig: an annotation only
    assert "szoq_hub.masks.artifact" in graph["szoq_hub.methods.sparse.delta"]  # module-level imports count
    assert "szoq_hub.runtime.sparse" in graph["szoq_hub.methods.sparse.delta"]  # so do imports inside methods (Delta.merge_into)


def test_artifacts_that_publish_themselves_sit_above_the_hub_code():
    """The runtime and the registry read the mask's data, never the Hub-aware class; the classes
    with `push_to_hub` import the mixin at the top of their modules."""
    graph = _module_graph()
    for low in ("szoq_hub.masks.artifact", "szoq_hub.masks.registry", "szoq_hub.runtime.sparse"):
        assert not {t for t in graph[low] if t.startswith("szoq_hub.hub")}, low
    for artifact in ("szoq_hub.hub.sensitivity_mask", "szoq_hub.methods.sparse.delta"):
        assert "szoq_hub.hub.mixin" in graph[artifact]


def test_folders_and_modules_stay_small():
    """No library folder over 12 modules, no module in szoq_hub/ or cli/ over 450 lines."""
    for folder in [p for p in PACKAGES["szoq_hub"].rglob("*") if p.is_dir() and p.name != "__pycache__"] + [PACKAGES["szoq_cli"]]:
        assert len(list(folder.glob("*.py"))) <= 12, folder
    for pkg in PACKAGES.values():
        for path in pkg.rglob("*.py"):
            assert len(path.read_text().splitlines()) <= 450, path


def test_no_import_cycles():
    cycle = _cycle(_module_graph())
    assert cycle is None, " -> ".join(cycle)


def test_library_imports_run_down_the_layers():
    """A module of layer i imports only from layers <= i (the public API at the package root sits above them all)."""
    graph = _module_graph()
    assert {f"szoq_hub.{layer}" for layer in LAYERS} <= set(graph)
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    upward = []
    for name, targets in graph.items():
        parts = name.split(".")
        if parts[0] != "szoq_hub" or len(parts) < 2 or parts[1] not in rank:
            continue
        for t in targets:
            tp = t.split(".")
            if tp[0] == "szoq_hub" and (len(tp) == 1 or tp[1] not in rank or rank[tp[1]] > rank[parts[1]]):
                upward.append(f"{name} -> {t}")
    assert not upward, upward


def _library_imports(path: Path) -> set[str]:
    """The szoq_hub modules a file imports, at any depth."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "szoq_hub":
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "szoq_hub"}
    return found


def test_cli_imports_nothing_but_the_package_root():
    reach = {p.name: sorted(_library_imports(p) - {"szoq_hub"}) for p in PACKAGES["szoq_cli"].glob("*.py")}
    assert not any(reach.values()), {k: v for k, v in reach.items() if v}
