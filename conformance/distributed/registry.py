"""The registry of the multi-process checks: ``@check(*requirement_ids)``, and running them all.

A check is a function of a :class:`~conformance.distributed.harness.Ctx` that every rank runs,
in the same order; it passes by returning. ``test_distributed`` makes one test of each check and
world (with the check's requirement ids as its ``req`` mark); ``conformance.matrix`` reads the ids
from the decorators.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

from conformance.distributed.harness import Ctx

CheckFn = Callable[[Ctx], None]


@dataclass(frozen=True)
class Check:
    name: str
    run: CheckFn
    reqs: tuple[str, ...]
    #: the world sizes it is meant for (None: any)
    worlds: tuple[int, ...] | None = None

    def runs_on(self, world: int) -> bool:
        return self.worlds is None or world in self.worlds


CHECKS: dict[str, Check] = {}


def check(*reqs: str, worlds: tuple[int, ...] | None = None) -> Callable[[CheckFn], CheckFn]:
    """Register the decorated function as the check of requirements ``reqs`` (on ``worlds``)."""

    def register(fn: CheckFn) -> CheckFn:
        assert reqs, f"{fn.__name__} names no requirement"
        assert fn.__name__ not in CHECKS, f"two checks named {fn.__name__}"
        CHECKS[fn.__name__] = Check(fn.__name__, fn, reqs, worlds)
        return fn

    return register


def run_checks(ctx: Ctx, record: dict[str, Any]) -> None:
    """Every check meant for this world, in turn: "ok" or its traceback into ``record``."""
    for c in CHECKS.values():
        if not c.runs_on(ctx.world):
            continue
        start = time.perf_counter()
        try:
            c.run(ctx)
            record[c.name] = "ok"
        except Exception:
            record[c.name] = traceback.format_exc()
        dist.barrier()
        print(f"rank {ctx.rank}: {c.name} {time.perf_counter() - start:.2f} s", flush=True)
