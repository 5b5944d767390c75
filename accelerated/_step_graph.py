r"""The attach step as a CUDA graph: captured once per set of parameters, replayed every step.

The step's strengths $\eta\lambda$ and l1 thresholds $\eta\mu$ live in device tensors owned by
:class:`StepGraph`, refreshed with ``copy_`` (from pinned host memory, without blocking) before
every run; so is the skipped-step flag. The first step of a new *key* (the parameters, their
shapes, dtypes, dims, methods, which of them get a prox or a shrink, whether a skip flag exists)
runs eagerly on those device tensors (a warm-up: kernels compiled, layouts cached); the next
step of the same key captures the step and replays it, later ones only replay. A capture that
fails leaves that key eager for good, with the reason recorded and warned once.

Graphs are made by :func:`new_graph` only, and :func:`supported` says which tensors live on a
device that has them: tests substitute both to run this logic on the CPU with a fake graph.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable
from typing import Protocol

import torch

#: the step run on device tensors: (strengths (P,), thresholds (P,), skip flag or None)
Step = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], None]


class Graph(Protocol):
    """What the attach step needs of a graph: record a function once, run the record again."""

    def capture(self, fn: Callable[[], None]) -> None: ...

    def replay(self) -> None: ...


class _CudaGraph:
    """``torch.cuda.CUDAGraph`` behind :class:`Graph` (its memory pool is private to it)."""

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._graph = torch.cuda.CUDAGraph()

    def capture(self, fn: Callable[[], None]) -> None:
        # thread-local capture: a DataLoader's pin-memory thread may call CUDA meanwhile
        with (
            torch.cuda.device(self._device),
            torch.cuda.graph(self._graph, capture_error_mode="thread_local"),
        ):
            fn()

    def replay(self) -> None:
        self._graph.replay()


def new_graph(device: torch.device) -> Graph:
    """A new, empty graph for a step on ``device`` (the one place graphs are made)."""
    return _CudaGraph(device)


def supported(t: torch.Tensor) -> bool:
    """Whether ``t`` lives on a device whose steps can be graphs (CUDA)."""
    return t.is_cuda


def capturing() -> bool:
    """Whether the current CUDA stream is itself being captured (then the step stays eager)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


MODES = ("auto", True, False)


def check_mode(mode: object) -> bool | str:
    """The ``cuda_graph`` option: "auto", True or False (TypeError/ValueError otherwise)."""
    if not isinstance(mode, bool | str):
        raise TypeError(f"cuda_graph must be 'auto', True or False, got {type(mode).__name__}")
    if mode not in MODES:
        raise ValueError(f"cuda_graph must be 'auto', True or False, got {mode!r}")
    return mode


class StepGraph:
    """The graph state of one attachment (TRAIN-25).

    Args:
        mode: ``"auto"`` (graphs on CUDA), True (graphs wherever possible, a warning when not),
            or False (always eager).
    """

    def __init__(self, mode: bool | str) -> None:
        self.mode = mode
        #: why the last step ran eagerly; None when it replayed a graph
        self.reason: str | None = "no step yet"
        #: how many graphs were captured (a new one per key)
        self.captures = 0
        self._key: Hashable | None = None
        self._graph: Graph | None = None
        self._failed: set[Hashable] = set()
        self._warned: set[str] = set()
        self._lams = self._thresholds = torch.empty(0)
        self._skip: torch.Tensor | None = None

    def release(self) -> None:
        """Drop the graph (its memory pool) and the device tensors."""
        self._key, self._graph, self._skip = None, None, None
        self._lams = self._thresholds = torch.empty(0)

    def eager(self, reason: str, warn: bool) -> None:
        """Record why this step runs eagerly; warn once per reason if asked to."""
        self.reason = reason
        if warn and reason not in self._warned:
            self._warned.add(reason)
            warnings.warn(
                f"weightshare.attach: the step runs eagerly, not as a CUDA graph: {reason}",
                UserWarning,
                stacklevel=4,
            )

    def _load(
        self,
        device: torch.device,
        lams: list[float],
        thresholds: list[float],
        skip: torch.Tensor | None,
    ) -> None:
        """Copy this step's strengths, thresholds and skip flag into the device tensors."""
        host = torch.tensor([lams, thresholds], dtype=torch.float64)
        if device.type == "cuda":
            host = host.pin_memory()
        if self._lams.shape != (len(lams),) or self._lams.device != device:
            both = torch.empty((2, len(lams)), dtype=torch.float64, device=device)
            self._lams, self._thresholds = both[0], both[1]
        self._lams.copy_(host[0], non_blocking=True)
        self._thresholds.copy_(host[1], non_blocking=True)
        if skip is None:
            self._skip = None
        else:
            if self._skip is None or self._skip.device != skip.device:
                self._skip = torch.zeros((), dtype=torch.bool, device=skip.device)
            self._skip.copy_(skip)

    def run(
        self,
        key: Hashable,
        device: torch.device,
        lams: list[float],
        thresholds: list[float],
        skip: torch.Tensor | None,
        step: Step,
    ) -> None:
        """One attach step: eagerly on a new key (warm-up), else captured once and replayed."""
        if key != self._key:  # a new set of parameters, shapes, dtypes, ...: warm up eagerly
            self.release()
            self._key = key
            self._load(device, lams, thresholds, skip)
            step(self._lams, self._thresholds, self._skip)
            self.eager("warm-up step of a new set of parameters, shapes or dtypes", False)
            return
        self._load(device, lams, thresholds, skip)
        if self._graph is None and key not in self._failed:
            graph = new_graph(device)
            lam_t, thr_t, skip_t = self._lams, self._thresholds, self._skip
            try:
                graph.capture(lambda: step(lam_t, thr_t, skip_t))
            except Exception as e:  # any failure: this key stays eager
                self._failed.add(key)
                self.eager(f"capture failed ({type(e).__name__}: {e})", True)
            else:
                self._graph = graph
                self.captures += 1
        if self._graph is None:
            step(self._lams, self._thresholds, self._skip)
            return
        self._graph.replay()
        self.reason = None
