"""The prox methods by name: which exist, which can run, and what "auto" stands for."""

from __future__ import annotations

import torch

from . import _checks as checks
from ._isotonic import METHODS, Backend, backend

#: Every value ``method=`` accepts.
ALL_METHODS = (*METHODS, "auto")

_AVAILABLE: dict[str, bool] = {}


def check_method(method: object) -> str:
    """``method``, which must be "auto" or one of the isotonic backends' names (ValueError)."""
    if not isinstance(method, str) or method not in ALL_METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(ALL_METHODS)}")
    return method


def available(method: str) -> bool:
    """Whether the method's module imports (its optional dependency is installed)."""
    if method not in _AVAILABLE:
        try:
            backend(method)
            _AVAILABLE[method] = True
        except ImportError:
            _AVAILABLE[method] = False
    return _AVAILABLE[method]


def resolve_method(method: str, v: torch.Tensor) -> str:
    """The method "auto" stands for (spec PROX-16; the prox page explains the rule).

    Eager CPU tensors: host PAVA. CUDA tensors: "triton" (a few fused kernels per level) when
    Triton is importable and no ``torch.func`` transform is active (the custom ops have no
    batching rule); else the sync-free torch-op kernel with the fewest launches, "search". Other
    devices, and CPU tensors while ``torch.compile`` traces: "hull" (fewer operations of work).
    Each list falls back along "search"/"hull"/"rounds" to "pava" when a module is missing.
    """
    if method != "auto":
        return method
    if v.device.type == "cpu" and checks.should_validate(v):
        return "pava"
    if v.device.type == "cuda":
        if not torch._C._functorch.is_functorch_wrapped_tensor(v) and available("triton"):
            return "triton"
        order = ("search", "hull", "rounds")
    else:
        order = ("hull", "search", "rounds")
    return next((m for m in order if available(m)), "pava")


def backend_for(method: str, v: torch.Tensor) -> Backend:
    """The backend that runs ``method`` ("auto" resolved) on ``v``."""
    return backend(resolve_method(method, v))


def check_device(method: str, v: torch.Tensor) -> None:
    """Errors for a method that cannot run on ``v``'s device ("triton": CUDA or the interpreter).

    ImportError when the method's module (its optional dependency) is missing.
    """
    if method == "auto":
        return
    try:
        found = backend(method)
    except ImportError as e:
        need = (
            "the triton package (it ships with torch's CUDA builds)" if method == "triton" else ""
        )
        raise ImportError(
            f"method={method!r} needs {need or 'a module that failed to import'}"
        ) from e
    found.check_device(v)
