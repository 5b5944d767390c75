"""The requirement matrix cannot drift: every spec id is proven, every proof names a real id."""

from __future__ import annotations

import pytest

from conformance import matrix


@pytest.mark.req("CONF-1")
def test_every_requirement_has_a_test() -> None:
    reqs, tests = matrix.requirements(), matrix.proofs()
    assert reqs, "no requirement ids found in spec/"
    missing = sorted(set(reqs) - set(tests))
    assert not missing, f"requirements without a test: {missing}"


@pytest.mark.req("CONF-2")
def test_every_test_names_a_defined_requirement() -> None:
    reqs, tests = matrix.requirements(), matrix.proofs()
    malformed = sorted(r for r in tests if not matrix.ID.match(r))
    assert not malformed, f"malformed requirement ids in req marks: {malformed}"
    unknown = sorted(set(tests) - set(reqs))
    assert not unknown, f"tests name requirements the spec does not define: {unknown}"


@pytest.mark.req("CONF-3")
def test_published_matrix_is_current() -> None:
    committed = matrix.SNIPPET.read_text(encoding="utf-8")
    assert committed == matrix.table(), "run `make matrix` and commit spec/_snippets/matrix.md"
