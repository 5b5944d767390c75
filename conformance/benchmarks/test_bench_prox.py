"""Prox benchmarks on the CPU, side by side with their baselines in one run (spec: performance.md).

``make bench`` runs ``pytest conformance/benchmarks --benchmark-only --benchmark-json=bench.json``
and then ``python -m conformance.benchmarks.report bench.json``. Every case stores what it
measured in ``extra_info`` (impl, kind, dtype, d, rows), so the report can compute ratios against
the baselines of the same run.

Implementations: ``argsort`` (``np.argsort`` + gather: the limit any prox must pay),
``scipy`` (argsort + ramp + ``scipy.optimize.isotonic_regression`` + scatter: what a user would
build), ``torch.sort`` (values and indices) and ``weightshare.prox`` with every method.

Cut-offs (documented on the performance page): "rounds" on the chain input only up to
rows * d = 1e4 (it needs d - 1 rounds there); "search" up to d = 1e6 and "hull" up to 1e6 except
one float32 random run at 1e7 (their O(log^2 d) op sequences are built for a GPU; on 2 CPU cores
they take seconds at these sizes).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import numpy as np
import pytest
import torch

SIZES = (10**3, 10**4, 10**5, 10**6, 10**7)
BATCH = (256, 4096)
DTYPES = ("float32", "float64")
KINDS = ("random", "chain")
METHODS = ("auto", "pava", "rounds", "search", "hull")
BASELINES = ("argsort", "scipy", "torch.sort")
LAM = 1.0


def _limit(impl: str, kind: str, d: int, dtype: str, rows: int) -> bool:
    """Whether a combination is run (see the module docstring for the cut-offs)."""
    if impl == "rounds" and kind == "chain" and rows * d > 10**4:
        return False
    if impl in ("search", "hull") and rows == 1 and d > 10**6:
        return impl == "hull" and d == 10**7 and kind == "random" and dtype == "float32"
    return True


def make_input(kind: str, rows: int, d: int, dtype: str, seed: int = 0) -> np.ndarray:
    """A ``(rows, d)`` array: N(0, 1) values, or the chain family in random order."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        x = rng.standard_normal((rows, d))
    else:
        from conformance.strategies import chain

        x = np.stack([rng.permutation(chain(d, LAM)) for _ in range(rows)])
    return x.astype(dtype)


def _ramp(d: int) -> np.ndarray:
    k = np.arange(1, d + 1, dtype=np.float64)
    return LAM * (2.0 * k - d - 1.0) / max(d - 1.0, 1.0)


def make_call(impl: str, x: np.ndarray) -> Callable[[], object]:
    """A zero-argument callable doing one prox (or baseline) of every row of ``x``."""
    rows, d = x.shape
    if impl == "argsort":

        def run() -> object:
            perm = np.argsort(x, axis=1)
            return np.take_along_axis(x, perm, axis=1)

        return run
    if impl == "scipy":
        from scipy.optimize import isotonic_regression

        ramp = _ramp(d)

        def run() -> object:
            perm = np.argsort(x, axis=1)
            y = np.take_along_axis(x, perm, axis=1) - ramp
            out = np.empty_like(x)
            for r in range(rows):
                out[r, perm[r]] = isotonic_regression(y[r]).x
            return out

        return run
    t = torch.from_numpy(x)
    if impl == "torch.sort":
        return lambda: torch.sort(t, dim=1)
    import weightshare

    if rows == 1:
        v = t[0]
        return lambda: weightshare.prox(v, LAM, method=impl)
    return lambda: weightshare.prox(t, LAM, dim=1, method=impl)


@dataclasses.dataclass(frozen=True)
class Case:
    impl: str
    kind: str
    dtype: str
    rows: int
    d: int

    @property
    def name(self) -> str:
        shape = f"{self.rows}x{self.d}" if self.rows > 1 else f"{self.d:.0e}"
        return f"{self.impl}-{self.kind}-{self.dtype}-{shape}"

    def run(self) -> object:
        return make_call(self.impl, make_input(self.kind, self.rows, self.d, self.dtype))()


def cases() -> list[Case]:
    out = []
    for dtype in DTYPES:
        for kind in KINDS:
            shapes = [(1, d) for d in SIZES] + [BATCH]
            for rows, d in shapes:
                for impl in (*BASELINES, *METHODS):
                    if _limit(impl, kind, d, dtype, rows):
                        out.append(Case(impl, kind, dtype, rows, d))
    return out


def smoke_cases() -> list[Case]:
    """Every implementation and kind once at a tiny size (run by the conformance suite)."""
    impls = (*BASELINES, *METHODS)
    return [Case(i, k, "float64", r, 64) for i in impls for k in KINDS for r in (1, 3)]


def _rounds(d: int, rows: int) -> int:
    work = d * rows
    return 30 if work <= 10**4 else 10 if work <= 10**5 else 5 if work <= 2 * 10**6 else 2


def _versions() -> dict[str, str]:
    import platform

    import scipy

    return {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
        "torch_threads": str(torch.get_num_threads()),
        # the machine's 1-minute load average as the case ran: other jobs skew a shared machine
        "load": f"{os.getloadavg()[0]:.2f}",
    }


@pytest.mark.parametrize("case", cases(), ids=lambda c: c.name)
def test_prox_speed(benchmark, case: Case) -> None:  # type: ignore[no-untyped-def]
    x = make_input(case.kind, case.rows, case.d, case.dtype)
    call = make_call(case.impl, x)
    benchmark.group = f"{case.rows}x{case.d} {case.dtype}"
    benchmark.extra_info.update(dataclasses.asdict(case), **_versions())
    slow = case.impl in ("search", "hull") and case.d >= 10**6
    rounds = 1 if slow else _rounds(case.d, case.rows)
    benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=1)


# ---------------------------------------------------------------------------------------------
# ragged batches: prox_many of ResNet-50's weight shapes against one prox of their concatenation

#: channel counts divided by this (CPU-sized: 54 tensors, 399,512 values, lengths 64..36,864)
RAGGED_SCALE = 8
RAGGED_METHODS = ("auto", "search", "hull")
RAGGED_LAM = 1e-3


@dataclasses.dataclass(frozen=True)
class RaggedCase:
    """``prox_many`` of the scaled ResNet-50 weights (``what="ragged"``) or one ``prox`` of their
    concatenated values (``what="concatenated"``), with one method."""

    impl: str
    what: str
    dtype: str
    scale: int = RAGGED_SCALE

    @property
    def name(self) -> str:
        return f"ragged-{self.impl}-{self.what}-{self.dtype}-resnet50÷{self.scale}"

    def call(self) -> Callable[[], object]:
        import weightshare
        from conformance.benchmarks.gpu import resnet50_weight_shapes

        g = torch.Generator().manual_seed(0)
        dtype = getattr(torch, self.dtype)
        shapes = resnet50_weight_shapes(self.scale)
        tensors = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]
        if self.what == "ragged":
            return lambda: weightshare.prox_many(tensors, RAGGED_LAM, method=self.impl)
        flat = torch.cat([t.reshape(-1) for t in tensors])
        return lambda: weightshare.prox(flat, RAGGED_LAM, method=self.impl)

    def run(self) -> object:
        return self.call()()


def ragged_cases(scale: int = RAGGED_SCALE) -> list[RaggedCase]:
    return [
        RaggedCase(impl, what, dtype, scale)
        for dtype in DTYPES
        for impl in RAGGED_METHODS
        for what in ("ragged", "concatenated")
    ]


@pytest.mark.parametrize("case", ragged_cases(), ids=lambda c: c.name)
def test_prox_many_ragged(benchmark, case: RaggedCase) -> None:  # type: ignore[no-untyped-def]
    call = case.call()
    benchmark.group = f"ragged resnet50/{case.scale} {case.dtype}"
    benchmark.extra_info.update(dataclasses.asdict(case), **_versions())
    benchmark.pedantic(call, rounds=3, iterations=1, warmup_rounds=1)


MEMORY_D = 10**7


@pytest.mark.parametrize("method", ["auto", "search", "hull"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_prox_memory(benchmark, method: str, dtype: str) -> None:  # type: ignore[no-untyped-def]
    """Peak extra bytes of one prox at d = 1e7 (fresh subprocess; see memory.py)."""
    from conformance.benchmarks.memory import measure

    if method == "search" and dtype == "float64":
        pytest.skip("search at d = 1e7 is measured once (float32) to keep the run short")
    result: dict = {}
    benchmark.group = "memory"
    benchmark.pedantic(lambda: result.update(measure(method, MEMORY_D, dtype)), rounds=1)
    benchmark.extra_info.update(impl=method, memory=result, **_versions())
