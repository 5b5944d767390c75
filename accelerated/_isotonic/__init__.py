"""Row-wise non-decreasing isotonic regression: the catalogue of kernels and their dispatch.

Contract shared by every method: ``y`` is a contiguous ``(B, n)`` float32/float64 tensor with
n ≥ 1 on any device; the result is a new ``(B, n)`` tensor of the same dtype and device holding the
unit-weight isotonic regression of each row. One module per algorithm:

* ``pava``: SciPy's sequential C++ PAVA on the host (CUDA tensors go to the host and back);
* ``rounds``: parallel PAV rounds in torch ops (O(d) rounds on the worst case);
* ``search``: divide and conquer with a binary search per merge, in torch ops;
* ``hull``: the lower-hull merge with a bridge search, in torch ops (``common`` holds their
  shared pieces);
* ``triton_hull``: the same hull merge as a few fused Triton kernels per level (CUDA, or the
  Triton interpreter); imported on first use, since it imports Triton.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

from .pava import isotonic_pava

#: Methods accepted by ``isotonic`` (and, with "auto", by the prox).
METHODS = ("pava", "rounds", "search", "hull", "triton")
_MODULES = {
    "rounds": (".rounds", "isotonic_rounds"),
    "search": (".search", "isotonic_search"),
    "hull": (".hull", "isotonic_hull"),
    "triton": (".triton_hull", "isotonic_triton"),
}
#: imported on first use only (Triton is a heavy import, and optional)
_LAZY = ("triton",)


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


for _method in _MODULES:
    if _method in _LAZY:
        continue
    try:
        _load(_method)
    except ImportError:  # not written yet, or an optional dependency is missing
        pass
