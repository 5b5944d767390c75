"""Packaging requirements, checked on the editable install and on the installed wheel."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import re
import subprocess
import sys
from pathlib import Path

import pytest

import weightshare


@pytest.mark.req("PKG-1")
def test_reference_imports_no_torch() -> None:
    code = (
        "import sys, weightshare.reference as r; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m); "
        "print(r.penalty.__module__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "weightshare.reference._penalty"


@pytest.mark.req("PKG-2")
def test_every_public_name_resolves() -> None:
    for name in weightshare.__all__:
        assert getattr(weightshare, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        _ = weightshare.not_a_name  # type: ignore[attr-defined]


@pytest.mark.req("PKG-2")
def test_reference_names_match_accelerated() -> None:
    import weightshare.reference as ref

    shared = {"penalty", "prox", "clusters", "soft_threshold", "hashing", "symmetry"}
    shared |= {"pack_bits", "unpack_bits", "bit_width", "huffman_encode", "huffman_decode"}
    missing = sorted(n for n in shared if n not in weightshare.__all__ or n not in ref.__all__)
    assert not missing, f"names missing on one side: {missing}"


@pytest.mark.req("PKG-3")
def test_version_matches_distribution_metadata() -> None:
    assert weightshare.__version__ == importlib.metadata.version("weightshare")


@pytest.mark.req("PKG-4")
def test_packages_are_typed() -> None:
    for package in ("weightshare", "weightshare.reference"):
        assert importlib.resources.files(package).joinpath("py.typed").is_file(), package


@pytest.mark.req("PKG-5")
def test_readme_tour_runs_as_written() -> None:
    readme = Path(__file__).resolve().parent.parent / "README.md"
    if not readme.is_file():
        pytest.skip("README.md is not beside this copy of the suite (installed-wheel run)")
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "README.md has no python block"
    for block in blocks:
        namespace: dict[str, object] = {}
        exec(compile(block, str(readme), "exec"), namespace)
        opt = namespace.get("opt")
        if opt is not None:  # the tour ties before it builds the retraining optimizer
            assert hasattr(namespace["model"][0], "parametrizations")  # type: ignore[index]
            groups = opt.param_groups  # type: ignore[attr-defined]
            assert not any(k.startswith("wsr_") for g in groups for k in g), "prox on a tie"
            assert not opt.state  # type: ignore[attr-defined]
