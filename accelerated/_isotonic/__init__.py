"""Row-wise non-decreasing isotonic regression: the catalogue of backends.

Every method is a :class:`~.backend.Backend` (the whole prox of a batch of rows around one
isotonic kernel), defined as ``BACKEND`` in a module of its own:

* ``host``: SciPy's sequential C++ PAVA on host NumPy views, spread over a thread pool ("pava");
* ``rounds``: parallel PAV rounds in torch ops (O(d) rounds on the worst case);
* ``search``: divide and conquer with a binary search per merge, in torch ops;
* ``hull``: the lower-hull merge with a bridge search, in torch ops (``common`` holds the
  pieces "search" and "hull" share);
* ``ragged`` (no method): the prox of row sets of different lengths for the torch-op backends;
* ``triton_hull``: the same hull merge as a few fused Triton kernels per level (CUDA, or the
  Triton interpreter); imported on first use, since it imports Triton.

A new method is a new module with a ``BACKEND`` and one line in ``_MODULES``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

from .backend import Backend as Backend

#: method name -> the module (in this package) that defines its ``BACKEND``
_MODULES = {
    "pava": ".host",
    "rounds": ".rounds",
    "search": ".search",
    "hull": ".hull",
    "triton": ".triton_hull",
}
#: The methods, in the order the documentation lists them.
METHODS = tuple(_MODULES)
#: imported on first use only (Triton is a heavy import, and optional)
_LAZY = ("triton",)

_BACKENDS: dict[str, Backend] = {}


def _load(method: str) -> Backend:
    module = importlib.import_module(_MODULES[method], __package__)
    _BACKENDS[method] = module.BACKEND
    return _BACKENDS[method]


def backend(method: str) -> Backend:
    """The backend of a method; ValueError if unknown, ImportError if its module is missing.

    The modules present are imported with this package (a dict lookup is all ``torch.compile``
    has to trace); a missing one is retried on each call.
    """
    found = _BACKENDS.get(method)
    if found is not None:
        return found
    if method not in _MODULES:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join((*METHODS, 'auto'))}")
    return _load(method)


def kernel(method: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ``(B, n) -> (B, n)`` isotonic regression of a method."""
    return backend(method).isotonic


def isotonic(y: torch.Tensor, method: str) -> torch.Tensor:
    """Isotonic regression of each row of a ``(B, n)`` tensor with the named method."""
    return backend(method).isotonic(y)


for _method in METHODS:
    if _method in _LAZY:
        continue
    try:
        _load(_method)
    except ImportError:  # an optional dependency is missing
        pass
