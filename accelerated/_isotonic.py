"""Row-wise non-decreasing isotonic regression: method dispatch and the sequential "pava" path.

Contract shared by every method: ``y`` is a contiguous ``(B, n)`` float32/float64 tensor with
n ≥ 1 on any device; the result is a new ``(B, n)`` tensor of the same dtype and device holding the
unit-weight isotonic regression of each row. "rounds", "search" and "hull" live in their own
modules, imported on first use; "pava" runs SciPy's C++ PAVA on the host.
"""

from __future__ import annotations

import importlib
import itertools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

#: Methods accepted by ``isotonic`` (and, with "auto", by the prox).
METHODS = ("pava", "rounds", "search", "hull")
_MODULES = {
    "rounds": ("._isotonic_rounds", "isotonic_rounds"),
    "search": ("._isotonic_search", "isotonic_search"),
    "hull": ("._isotonic_hull", "isotonic_hull"),
}


_KERNELS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}


def _load(method: str) -> None:
    module, name = _MODULES[method]
    _KERNELS[method] = getattr(importlib.import_module(module, __package__), name)


def kernel(method: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ``(B, n) -> (B, n)`` function of a method; ImportError if its module is missing.

    The modules present are imported with this one (a plain dict lookup is all ``torch.compile``
    has to trace); a missing one is retried on each eager call.
    """
    if method == "pava":
        return isotonic_pava
    if method not in _MODULES:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join((*METHODS, 'auto'))}")
    if method not in _KERNELS:
        _load(method)
    return _KERNELS[method]


def isotonic(y: torch.Tensor, method: str) -> torch.Tensor:
    """Isotonic regression of each row of a ``(B, n)`` tensor with the named method."""
    return kernel(method)(y)


# ---------------------------------------------------------------------------------------------
# "pava": SciPy's C++ pool-adjacent-violators on host memory, rows spread over threads.

try:  # the in-place kernel behind scipy.optimize.isotonic_regression (SciPy >= 1.12)
    from scipy.optimize._pava_pybind import pava as _scipy_pava
except ImportError:  # pragma: no cover - depends on the SciPy build
    _scipy_pava = None


def pava_row_(z: np.ndarray) -> None:
    """Replace a contiguous float64 1-D array by its isotonic regression, in place."""
    n = z.shape[0]
    if n < 2:
        return
    if _scipy_pava is not None:
        _scipy_pava(z, np.ones(n), np.empty(n + 1, dtype=np.intp))
    else:  # pragma: no cover - public API, a little slower (validation and copies)
        from scipy.optimize import isotonic_regression

        z[:] = isotonic_regression(z).x


def threads() -> int:
    """Worker threads for host-side work: the usable cores, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


_POOL: ThreadPoolExecutor | None = None


def pool() -> ThreadPoolExecutor:
    """A process-wide thread pool (NumPy and SciPy release the GIL in their kernels)."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=threads(), thread_name_prefix="weightshare")
    return _POOL


def parallel_rows(fn: Callable[[int, int], None], rows: int, cost: int) -> None:
    """Run ``fn(start, stop)`` over row ranges, on several threads when the work is large."""
    workers = min(threads(), rows) if cost >= 1 << 16 else 1
    if workers <= 1:
        fn(0, rows)
        return
    bounds = np.linspace(0, rows, workers + 1).astype(int)
    futures = [pool().submit(fn, int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]
    for f in futures:
        f.result()


def pava_rows_(z: np.ndarray) -> None:
    """In-place isotonic regression of every row of a C-contiguous float64 ``(B, n)`` array."""

    def work(a: int, b: int) -> None:
        for r in range(a, b):
            pava_row_(z[r])

    parallel_rows(work, z.shape[0], z.size)


def isotonic_pava(y: torch.Tensor) -> torch.Tensor:
    """Sequential PAVA per row (host memory; CUDA tensors are copied to the host and back)."""
    host = y.detach().to("cpu", torch.float64, copy=True).contiguous()
    pava_rows_(host.numpy())
    return host.to(y.device, y.dtype)


for _method in _MODULES:
    try:
        _load(_method)
    except ImportError:  # not written yet, or an optional dependency is missing
        pass
