"""Conformance of weight sharing on sharded parameters (spec/training.md, Distributed training).

The checks themselves run in ``conformance._distributed_worker`` on worlds of 2 and 4 CPU
processes (gloo), each world started once per session; every test here reads its check's result.
Inputs that need no process group (tensor subclasses) are tested in this process.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import weightshare as ws
from conformance._distributed_worker import merged
from conformance._spawn import run_world

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)

WORLDS = (2, 4)
_RESULTS: dict[int, dict[str, str]] = {}


def results(world: int, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Every check's result on a gloo world of ``world`` CPU processes (run once)."""
    if world not in _RESULTS:
        tmp = tmp_path_factory.mktemp(f"world{world}")
        out = str(tmp / "rank{rank}.json")
        run_world("conformance._distributed_worker", world, [out], timeout=240)
        _RESULTS[world] = merged([out.format(rank=r) for r in range(world)])
    return _RESULTS[world]


def assert_check(name: str, world: int, tmp_path_factory: pytest.TempPathFactory) -> None:
    status = results(world, tmp_path_factory)[name]
    assert status == "ok", status


@pytest.mark.req("DIST-1", "DIST-2")
@pytest.mark.slow
@pytest.mark.parametrize("world", WORLDS)
def test_local_vectors_without_communication(world, tmp_path_factory) -> None:
    assert_check("api_local", world, tmp_path_factory)


@pytest.mark.req("DIST-1", "DIST-2", "DIST-3")
@pytest.mark.slow
def test_two_dimensional_mesh(tmp_path_factory) -> None:
    assert_check("api_2d", 4, tmp_path_factory)


@pytest.mark.req("DIST-1", "DIST-3")
@pytest.mark.slow
@pytest.mark.parametrize("world", WORLDS)
def test_gather_path(world, tmp_path_factory) -> None:
    assert_check("api_gather", world, tmp_path_factory)


@pytest.mark.req("DIST-4")
@pytest.mark.slow
@pytest.mark.parametrize("world", WORLDS)
def test_distributed_path(world, tmp_path_factory) -> None:
    assert_check("api_sort", world, tmp_path_factory)
    assert_check("auto_path", world, tmp_path_factory)


@pytest.mark.req("DIST-1")
@pytest.mark.slow
@pytest.mark.parametrize("world", WORLDS)
def test_autograd(world, tmp_path_factory) -> None:
    assert_check("autograd", world, tmp_path_factory)


@pytest.mark.req("DIST-5", "DIST-2")
@pytest.mark.slow
@pytest.mark.parametrize("world", WORLDS)
def test_fsdp2_training_equals_unsharded_twin(world, tmp_path_factory) -> None:
    assert_check("fsdp_training", world, tmp_path_factory)


@pytest.mark.req("DIST-5")
@pytest.mark.slow
@pytest.mark.parametrize("world", WORLDS)
def test_tensor_parallel_training_equals_unsharded_twin(world, tmp_path_factory) -> None:
    assert_check("tp_training", world, tmp_path_factory)


@pytest.mark.req("DIST-6")
@pytest.mark.slow
@pytest.mark.parametrize("world", WORLDS)
def test_fsdp2_state_dict_round_trip(world, tmp_path_factory) -> None:
    assert_check("fsdp_state_dict", world, tmp_path_factory)


@pytest.mark.req("DIST-7")
@pytest.mark.slow
@pytest.mark.parametrize("world", WORLDS)
def test_tie_under_fsdp2(world, tmp_path_factory) -> None:
    assert_check("fsdp_tie", world, tmp_path_factory)


@pytest.mark.req("DIST-8", "DIST-4")
@pytest.mark.slow
@pytest.mark.parametrize("world", WORLDS)
def test_bad_dtensor_inputs(world, tmp_path_factory) -> None:
    assert_check("errors", world, tmp_path_factory)


@pytest.mark.req("DIST-5")
@pytest.mark.slow
def test_training_page_fsdp2_example_runs() -> None:
    """The runnable example on the training page, on 2 CPU processes as torchrun starts them."""
    script = Path(__file__).resolve().parent.parent / "spec" / "_snippets" / "fsdp_example.py"
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


def test_results_exist_for_every_check() -> None:
    """The tests above cover every check of the worker (a new check gets a test)."""
    from conformance._distributed_worker import CHECKS

    tested = {"api_local", "api_2d", "api_gather", "api_sort", "auto_path", "autograd", "errors",
              "fsdp_training", "tp_training", "fsdp_state_dict", "fsdp_tie"}  # fmt: skip
    assert set(CHECKS) == tested, set(CHECKS) ^ tested
    assert Path(__file__).with_name("_distributed_worker.py").exists()
