"""The requirement -> test matrix: every normative id in ``spec/`` and the tests that prove it.

A requirement is defined where a line of a spec page starts (after an optional list bullet or table
bar) with its id in bold, e.g. ``**PROX-3**``. A test proves it with ``@pytest.mark.req("PROX-3")``;
a multi-process check (``conformance/distributed/checks/``, one test of ``test_distributed.py``
per world) with ``@check("DIST-1")``.
``python -m conformance.matrix --write`` regenerates ``spec/_snippets/matrix.md``; the conformance
test ``test_matrix.py`` fails when the committed table drifts from this computation.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "spec"
TESTS = ROOT / "conformance"
CHECKS = TESTS / "distributed" / "checks"
SNIPPET = SPEC / "_snippets" / "matrix.md"

_DEFINITION = re.compile(r"^\s*(?:[-*|]\s*)?\*\*([A-Z]+-\d+)\*\*", re.M)
ID = re.compile(r"^[A-Z]+-\d+$")


def requirements() -> dict[str, str]:
    """Map each requirement id to the spec page (relative path) that defines it."""
    found: dict[str, str] = {}
    for page in sorted(SPEC.rglob("*.md")):
        if "_snippets" in page.parts:
            continue
        for rid in _DEFINITION.findall(page.read_text(encoding="utf-8")):
            if rid in found:
                raise ValueError(f"{rid} is defined twice: {found[rid]} and {page}")
            found[rid] = page.relative_to(SPEC).as_posix()
    return found


def _req_ids(decorator: ast.expr, name: str) -> list[str]:
    """The ids a decorator ``name(...)`` (or ``something.name(...)``) names."""
    if isinstance(decorator, ast.Call):
        called = ast.unparse(decorator.func)
        if called == name or called.endswith(f".{name}"):
            return [a.value for a in decorator.args if isinstance(a, ast.Constant)]
    return []


def proofs() -> dict[str, list[str]]:
    """Map each requirement id named by a ``req`` mark or a ``check`` decorator to its tests
    (``file::name``)."""
    found: dict[str, list[str]] = defaultdict(list)
    sources = [(path, "mark.req") for path in sorted(TESTS.rglob("test_*.py"))]
    sources += [(path, "check") for path in sorted(CHECKS.glob("*.py"))]
    for path, decorator in sources:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                for dec in node.decorator_list:
                    for rid in _req_ids(dec, decorator):
                        found[rid].append(f"{path.relative_to(TESTS).as_posix()}::{node.name}")
    return dict(found)


def table() -> str:
    reqs, tests = requirements(), proofs()
    lines = ["| requirement | page | tests |", "| --- | --- | --- |"]
    for rid in sorted(reqs, key=lambda r: (r.split("-")[0], int(r.split("-")[1]))):
        names = "<br>".join(f"`{t}`" for t in sorted(tests.get(rid, []))) or "**none**"
        lines.append(f"| {rid} | [{reqs[rid]}]({reqs[rid]}) | {names} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite the committed snippet")
    args = parser.parse_args(argv)
    text = table()
    if args.write:
        SNIPPET.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
