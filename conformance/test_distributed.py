"""Conformance of weight sharing on sharded parameters (spec/training.md, Distributed training).

The checks themselves (``conformance/distributed/checks/``) run on worlds of 2 and 4 CPU processes
(gloo), each world started once per session; there is one test per registered check and world,
which reads that check's result and carries the check's requirement ids. Inputs that need no
process group (tensor subclasses) are tested in this process.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

import weightshare as ws
from conformance.distributed.checks import CHECKS
from conformance.distributed.harness import merged, run_ranks
from conformance.distributed.spawn import run_world

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)

ROOT = Path(__file__).resolve().parent.parent
WORLDS = (2, 4)
_RESULTS: dict[int, dict[str, str]] = {}


def results(world: int) -> dict[str, str]:
    """Every check's result on a gloo world of ``world`` CPU processes (run once)."""
    if world not in _RESULTS:
        _RESULTS[world] = merged(run_ranks("conformance.distributed", world, [], timeout=240)[1])
    return _RESULTS[world]


def check_cases() -> list[pytest.ParameterSet]:
    """One case per registered check and world it is meant for, marked with its requirements."""
    return [
        pytest.param(c.name, world, id=f"{c.name}-world{world}",
                     marks=[pytest.mark.req(*c.reqs), pytest.mark.slow])
        for world in WORLDS
        for c in CHECKS.values()
        if c.runs_on(world)
    ]  # fmt: skip


@pytest.mark.parametrize(("name", "world"), check_cases())
def test_check(name: str, world: int) -> None:
    status = results(world)[name]
    assert status == "ok", status


def test_every_check_is_registered() -> None:
    """The registry holds every check (a check module missing from ``checks/__init__`` would
    drop its tests silently), each naming the requirements it proves."""
    expected = {
        *("api_local", "api_gather", "api_2d", "autograd"),  # placements
        *("api_sort", "auto_path", "huge_strength", "errors"),  # sort_path, errors
        *("fsdp_training", "tp_training", "fsdp_state_dict", "fsdp_tie"),  # training
    }
    assert set(CHECKS) == expected, set(CHECKS) ^ expected
    assert all(c.reqs for c in CHECKS.values())


def test_cited_commands_exist() -> None:
    """Every ``python -m conformance...`` command the spec pages and the GPU check cite for the
    distributed checks names a module that runs (a package with a ``__main__``)."""
    cited = {}
    for path in (ROOT / "spec" / "training.md", ROOT / "spec" / "conformance.md"):
        for module in re.findall(r"python3? -m (conformance[\w.]*)", path.read_text()):
            cited[module] = path.name
    for source in sorted((ROOT / "conformance" / "gpu_check").glob("*.py")):
        text = source.read_text()
        for module in re.findall(r'"-m", "(conformance[\w.]*)"', text):
            cited[module] = f"gpu_check/{source.name}"
        for module in re.findall(r'"(conformance\.benchmarks\.\w+)"', text):
            cited[module] = f"gpu_check/{source.name}"
    assert {"conformance.distributed", "conformance.benchmarks.distributed"} <= set(cited), cited
    for module, where in cited.items():
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.submodule_search_locations is not None:
            spec = importlib.util.find_spec(f"{module}.__main__")
        assert spec is not None, f"{where} cites python -m {module}, which does not exist"


@pytest.mark.req("DIST-5")
@pytest.mark.slow
def test_training_page_fsdp2_example_runs() -> None:
    """The runnable example on the training page, on 2 CPU processes as torchrun starts them."""
    script = ROOT / "spec" / "_snippets" / "fsdp_example.py"
    logs = run_world(str(script), 2, [])
    for rank, log in enumerate(logs):
        assert f"rank {rank}: DTensor (Shard(dim=0),)" in log, log
        found = re.search(r"(\d+) distinct values of (\d+)", log)
        assert found and int(found[1]) < int(found[2]), log  # the prox made shared values


class Tagged(torch.Tensor):
    """A tensor subclass that is neither a plain tensor nor a DTensor."""


@pytest.mark.req("DIST-8")
def test_other_tensor_subclasses_are_refused() -> None:
    plain = torch.randn(3, 4, dtype=torch.float64)
    t = plain.clone().as_subclass(Tagged)
    before = plain.clone()
    calls = {
        "prox": lambda: ws.prox(t, 0.5),
        "prox_": lambda: ws.prox_(t, 0.5, 1),
        "prox_many": lambda: ws.prox_many([plain, t], 0.5),
        "penalty": lambda: ws.penalty(t),
        "clusters": lambda: ws.clusters(t),
        "soft_threshold": lambda: ws.soft_threshold(t, 0.1),
    }
    for name, call in calls.items():
        with pytest.raises(TypeError, match="Tagged"):
            call()
        assert torch.equal(t.as_subclass(torch.Tensor), before), name
    param = torch.nn.Parameter(plain.clone())  # a Parameter is a plain tensor
    torch.testing.assert_close(ws.prox(param, 0.5), ws.prox(plain, 0.5))
