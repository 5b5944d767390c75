"""The package's layers (spec/algorithms.md, *Layers*): imports go one way, down the layers.

The import graph is read statically from the sources of ``weightshare`` (``accelerated/``):
every ``import`` counts, at module top or inside a function; imports under ``if TYPE_CHECKING:``
do not (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "accelerated"

#: The layers, bottom first. A module may import modules of its own layer or of lower ones.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("reference",),  # weightshare.reference (NumPy only; its _args holds the error words)
    ("_checks",),
    ("_rows", "_segments"),
    ("_isotonic",),  # the backends, one module per method
    ("_methods",),
    ("_prox", "_penalty", "_deferred"),
    ("_distributed_layout", "_distributed_sort", "_distributed"),
    ("_api",),
    # the parts of stored weights, and the machinery that applies them all or nothing
    (
        "_packing",
        "_coding",
        "_coded",
        "_sparse",
        "_parametrized",
        "_memory_format",
        "_sharing",
        "_transaction",
        "_dropped",
    ),
    (
        "_attach",
        "_step_graph",
        "_tie",
        "_bucket_sum",
        "_hashing",
        "_hash_recipe",
        "_hashed_layers",
        "_symmetry",
    ),
    ("_factorization",),
    # whole models: compress, save, load (_file_checks: a file's header, untrusted)
    ("_structures", "_file_checks", "_compress", "_serialize", "_storage"),
    ("__init__", "__main__", "factorization", "hashing", "nn", "symmetry", "storage"),
)


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"] or ["__init__"]
    return ".".join(parts)


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    raise AssertionError(f"module {module!r} is in no layer: add it to LAYERS and the spec")


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str | None:
    """The imported module, relative to the package root (None if outside weightshare)."""
    if node.level == 0:
        name = node.module or ""
        if not name.startswith("weightshare"):
            return None
        return name.removeprefix("weightshare").lstrip(".") or "__init__"
    base = module.split(".") if module != "__init__" else []
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    target = ".".join([*base, *([node.module] if node.module else [])])
    return target or "__init__"


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def import_graph() -> dict[str, set[str]]:
    """``module -> modules of weightshare it imports`` (names relative to the package)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        module = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_lines(tree)
        edges: set[str] = set()
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            if isinstance(node, ast.ImportFrom):
                target = _resolve(module, node, path.name == "__init__.py")
                if target is None:
                    continue
                # "from . import x" imports the submodule x
                if node.module is None:
                    edges.update(
                        f"{target}.{a.name}" if target != "__init__" else a.name for a in node.names
                    )
                else:
                    edges.add(target)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("weightshare"):
                        edges.add(alias.name.removeprefix("weightshare").lstrip(".") or "__init__")
        graph[module] = {e for e in edges if e != module}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


@pytest.mark.req("ARCH-1")
def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert "_prox" in graph and "_distributed" in graph  # the reader found the modules
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


@pytest.mark.req("ARCH-1")
def test_imports_go_down_the_layers() -> None:
    upward = [
        f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
        for a, targets in import_graph().items()
        for b in targets
        if _layer(b) > _layer(a)
    ]
    assert not upward, "\n".join(upward)


@pytest.mark.req("ARCH-1")
def test_the_plain_verbs_never_import_the_distributed_layer() -> None:
    graph = import_graph()
    below = [m for m in graph if _layer(m) < _layer("_distributed")]
    assert below
    for module in below:
        assert not any(t.startswith("_distributed") for t in graph[module]), module


@pytest.mark.req("ARCH-1")
def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
