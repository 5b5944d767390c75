"""Conformance of the training integration with the rest of the ecosystem (spec/training.md,
*Training in the ecosystem*): mixed precision, fork and DataLoader workers, copies of attached
optimizers, edited settings, added param groups, Lightning."""

from __future__ import annotations

import multiprocessing
import warnings
from collections.abc import Callable

import pytest
import torch

import weightshare as ws
from weightshare._isotonic import host, pava

# ---------------------------------------------------------------------------------------------
# the host threads (PROX-23)


def _host_calls() -> list[torch.Tensor]:
    """Every public host entry point, sized so that each one hands work to the pool (and the
    torch ops stay below torch's own intra-op parallelism, which a forked child cannot use)."""
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(400, 250, generator=g)
    small = [torch.randn(20, 30, generator=g) for _ in range(4)]
    out = [ws.prox(rows, 0.1, dim=1, method="pava"), *ws.prox_many(small, 0.1, dim=1)]
    out.append(ws.prox_(small[0].clone(), 0.2))
    saved = host._idle_cores
    host._idle_cores = lambda: 1.0  # split the long vector over the threads
    try:
        out.append(ws.prox(torch.randn(host.SPLIT_MIN, generator=g), 0.1))
    finally:
        host._idle_cores = saved
    params = [torch.nn.Parameter(t.clone()) for t in small]
    opt = torch.optim.SGD(params, lr=0.1)
    handle = ws.attach(opt, 0.5, dim=1)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    handle.remove()
    return [*out, *(p.detach() for p in params)]


def _in_child(fn: Callable[[], bool]) -> int | None:
    """Run ``fn`` in a forked child; its exit code (0: ``fn`` returned True), None if it hung."""
    context = multiprocessing.get_context("fork")
    with warnings.catch_warnings():  # Python >= 3.12 warns about forking a threaded process
        warnings.simplefilter("ignore", DeprecationWarning)
        proc = context.Process(target=lambda: exit(0 if fn() else 1))
        proc.start()
    proc.join(120)  # a guard against a hang, not a timing
    if proc.is_alive():
        proc.kill()
        proc.join()
        return None
    return proc.exitcode


@pytest.mark.req("PROX-23")
def test_a_forked_child_runs_every_host_entry_point() -> None:
    if pava.threads() < 2:
        pytest.skip("one host thread: the pool is never used")
    want = _host_calls()  # the parent's pool now has live threads
    assert pava._POOL is not None

    def child() -> bool:
        return all(torch.equal(a, b) for a, b in zip(_host_calls(), want, strict=True))

    assert _in_child(child) == 0, "the forked child hung or differed"


@pytest.mark.req("PROX-23")
def test_threads_follow_torch() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert pava.threads() == 1
        x = torch.randn(400, 250)
        one = ws.prox(x, 0.1, dim=1)
        torch.set_num_threads(2)
        assert pava.threads() == min(2, len(pava.os.sched_getaffinity(0)))
        assert torch.equal(ws.prox(x, 0.1, dim=1), one)  # the same on any thread count
        assert pava.pool()._max_workers == pava.threads()
    finally:
        torch.set_num_threads(before)


@pytest.mark.req("PROX-23")
def test_nested_host_work_never_waits_on_itself() -> None:
    """Several batched tensors of one prox_many call: each pooled job's rows run inline."""
    g = torch.Generator().manual_seed(1)
    tensors = [torch.randn(400, 250, generator=g) for _ in range(3)]
    fused = ws.prox_many(tensors, 0.1, dim=1)
    for t, out in zip(tensors, fused, strict=True):
        assert torch.equal(out, ws.prox(t, 0.1, dim=1))
