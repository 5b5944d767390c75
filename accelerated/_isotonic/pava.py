"""The sequential "pava" kernel: SciPy's C++ pool-adjacent-violators on host memory (SciPy is
imported on the first call).

Rows are spread over a process-wide thread pool (NumPy and SciPy release the GIL in their
kernels); CUDA tensors are copied to the host and back.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

_SCIPY_PAVA: Callable[..., Any] | None = None


def _scipy_pava() -> Callable[..., Any]:
    """SciPy's in-place PAVA kernel, imported on first use (SciPy is a heavy import)."""
    global _SCIPY_PAVA
    if _SCIPY_PAVA is None:
        try:  # the kernel behind scipy.optimize.isotonic_regression (SciPy >= 1.12)
            from scipy.optimize._pava_pybind import pava
        except ImportError:  # pragma: no cover - depends on the SciPy build
            from scipy.optimize import isotonic_regression

            def pava(z: np.ndarray, w: np.ndarray, r: np.ndarray) -> None:
                z[:] = isotonic_regression(z).x

        _SCIPY_PAVA = pava
    return _SCIPY_PAVA


def pava_row_(z: np.ndarray) -> None:
    """Replace a contiguous float64 1-D array by its isotonic regression, in place."""
    n = z.shape[0]
    if n >= 2:
        _scipy_pava()(z, np.ones(n), np.empty(n + 1, dtype=np.intp))


def threads() -> int:
    """Worker threads for host-side work: ``torch.get_num_threads()`` (so ``OMP_NUM_THREADS`` and
    ``torch.set_num_threads`` rule it; 1 in a DataLoader worker), at most the usable cores."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, torch.get_num_threads()))


_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_LOCAL = threading.local()


def _mark_worker() -> None:
    _LOCAL.worker = True


def in_worker() -> bool:
    """Whether this thread is one of the pool's: work it would submit runs inline instead (a
    worker waiting on the pool it occupies could wait forever)."""
    return getattr(_LOCAL, "worker", False)


def pool() -> ThreadPoolExecutor:
    """A process-wide pool of :func:`threads` threads (NumPy and SciPy release the GIL in their
    kernels); re-made when the thread count changes, and after ``fork`` in the child (whose copy
    of the pool has no threads: work submitted to it would wait forever)."""
    global _POOL, _POOL_SIZE
    size = threads()
    if _POOL is None or _POOL_SIZE != size:
        if _POOL is not None:
            _POOL.shutdown(wait=False)
        _POOL = ThreadPoolExecutor(
            max_workers=size, thread_name_prefix="weightshare", initializer=_mark_worker
        )
        _POOL_SIZE = size
    return _POOL


def _forget_pool() -> None:
    """In a forked child: drop the parent's pool (its threads did not survive the fork)."""
    global _POOL, _POOL_SIZE
    _POOL, _POOL_SIZE = None, 0


os.register_at_fork(after_in_child=_forget_pool)


def parallel_rows(fn: Callable[[int, int], None], rows: int, cost: int) -> None:
    """Run ``fn(start, stop)`` over row ranges, on several threads when the work is large."""
    workers = min(threads(), rows) if cost >= 1 << 16 and not in_worker() else 1
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
