r"""The public prox verbs: a ``DTensor`` goes to the distributed adapters, any other tensor to
the plain implementations (``_prox``, ``_penalty``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from . import _checks as checks
from . import _distributed as distributed
from . import _penalty as plain_penalty
from . import _prox as plain

__all__ = ["clusters", "penalty", "prox", "prox_", "prox_many", "soft_threshold"]


def penalty(w: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    r"""$R(w) = \frac{1}{d-1}\sum_{i>j}|w_i - w_j|$, by sorting: $\sum_k c_k w_{(k)}$.

    With $w_{(1)} \le \dots \le w_{(d)}$ and $c_k = (2k-d-1)/(d-1)$. The gradient is the
    minimum-norm subgradient: entry $i$ gets $c_k$ for its rank $k$, and tied entries share the
    mean of their coefficients. Sums are accumulated in float64 from each vector's minimum (by
    shift invariance) and rounded to ``w``'s dtype.

    Args:
        w: a real floating tensor without NaN/inf.
        dim: None: the whole tensor is one vector (a 0-dim result); an int: one value per slice
            along ``dim`` (the result has ``w``'s shape without ``dim``).

    Returns:
        The penalty, with ``w``'s dtype and device (0 where d < 2).

    Raises:
        TypeError: for a non-floating ``w``.
        ValueError: for NaN/inf in ``w``.
        IndexError: for ``dim`` out of range.

    Example:
        >>> import torch, weightshare
        >>> weightshare.penalty(torch.tensor([0.0, 1.0, 3.0]))
        tensor(3.)
    """
    if checks.is_dtensor(w):
        return distributed.penalty(w, dim)
    return plain_penalty.penalty(w, dim)


def prox(
    v: torch.Tensor, lam: float | torch.Tensor, dim: int | None = None, *, method: str = "auto"
) -> torch.Tensor:
    r"""$\operatorname{prox}_{\lambda R}(v)$, for the whole tensor or for each slice along ``dim``.

    Differentiable: the backward pass averages the incoming gradient within each cluster (and
    gives the gradient with respect to a tensor ``lam``).

    Args:
        v: a real floating tensor of any shape, on any device.
        lam: the strength λ ≥ 0: a number (Python or NumPy), or a tensor broadcastable to the
            batch shape (the shape of ``v`` without ``dim``; ``()`` for ``dim=None``).
        dim: None: the whole tensor is one vector; an int: each slice along ``dim`` is a vector.
        method: "auto", "pava", "rounds", "search", "hull" or "triton" (the
            isotonic-regression algorithm; "triton" needs CUDA tensors).

    Returns:
        A new tensor with the shape, dtype and device of ``v``.

    Raises:
        TypeError: for a non-floating ``v`` or a non-real ``lam``.
        ValueError: for NaN/inf in ``v``, a negative or non-finite ``lam``, a ``lam`` shape that
            does not broadcast, or an unknown ``method``.
        IndexError: for ``dim`` out of range.

    Example:
        >>> import torch, weightshare
        >>> weightshare.prox(torch.tensor([0.0, 0.1, 1.0]), 0.2)
        tensor([0.1500, 0.1500, 0.8000])
    """
    if checks.is_dtensor(v):
        return distributed.prox(v, lam, dim, method)
    return plain.prox(v, lam, dim, method)


def prox_(
    v: torch.Tensor, lam: float | torch.Tensor, dim: int | None = None, *, method: str = "auto"
) -> torch.Tensor:
    r"""In-place :func:`prox`: overwrite ``v`` (same storage) and return it; not differentiable.

    Args:
        v: a real floating tensor (e.g. a ``nn.Parameter``); unchanged if an error is raised.
        lam: the strength λ ≥ 0 (float or tensor broadcastable to the batch shape).
        dim: None (whole tensor) or the dimension along which the vectors lie.
        method: "auto", "pava", "rounds", "search", "hull" or "triton".

    Returns:
        ``v`` itself.

    Raises:
        TypeError: for a non-floating ``v`` or a non-real ``lam``.
        ValueError: for NaN/inf in ``v``, a bad ``lam`` or an unknown ``method``.
        IndexError: for ``dim`` out of range.

    Example:
        >>> import torch, weightshare
        >>> w = torch.nn.Parameter(torch.tensor([0.0, 0.1, 1.0]))
        >>> weightshare.prox_(w, 0.2) is w
        True
    """
    if checks.is_dtensor(v):
        return distributed.prox_(v, lam, dim, method)
    return plain.prox_(v, lam, dim, method)


def prox_many(
    tensors: Sequence[torch.Tensor],
    lams: float | torch.Tensor | Sequence[float | torch.Tensor],
    dim: int | None = None,
    *,
    method: str = "auto",
) -> list[Any]:
    r""":func:`prox` of several tensors in one fused pass (one validation read, one dispatch).

    The tensors never interact: each is its own vector (``dim=None``) or batch of vectors. On the
    host path all vectors are spread over one thread pool; on the torch path the vectors of one
    dtype and device, of any lengths, are padded into one batch: one sort and one kernel call.
    Differentiable like :func:`prox` when grad mode is on and an input requires grad (then it
    runs one :func:`prox` per tensor).

    Args:
        tensors: real floating tensors (any shapes, dtypes, devices).
        lams: one strength for all, or a sequence with one float/tensor per tensor.
        dim: applied to every tensor: None (whole tensor) or the vector dimension.
        method: "auto", "pava", "rounds", "search", "hull" or "triton".

    Returns:
        A list of new tensors, in the order of ``tensors``.

    Raises:
        TypeError: for a non-floating tensor, one tensor instead of a sequence, or a strength
            that is not a number, a tensor or a sequence of them.
        ValueError: for NaN/inf, a bad strength, a ``lams`` of the wrong length or an unknown
            ``method``.
        IndexError: for ``dim`` out of range for some tensor.

    Example:
        >>> import torch, weightshare
        >>> lin = torch.nn.Linear(3, 2)
        >>> w, b = weightshare.prox_many([lin.weight, lin.bias], 0.1)
    """
    tensor_list = checks.tensor_list(tensors)
    if any(checks.is_dtensor(t) for t in tensor_list):
        return distributed.prox_many(tensor_list, lams, dim, method)
    return plain.prox_many(tensor_list, lams, dim, method)


def clusters(w: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Cluster labels: within each vector, equal label ⇔ equal value.

    Labels are ``0..k-1`` in increasing order of value (``-0.0`` equals ``0.0``), per vector.

    Args:
        w: a real floating tensor without NaN/inf.
        dim: None (the whole tensor is one vector) or the dimension along which vectors lie.

    Returns:
        An int64 tensor with the shape and device of ``w``.

    Raises:
        TypeError: for a non-floating ``w``.
        ValueError: for NaN/inf in ``w``.
        IndexError: for ``dim`` out of range.

    Example:
        >>> import torch, weightshare
        >>> weightshare.clusters(torch.tensor([0.5, -1.0, 0.5, 2.0]))
        tensor([1, 0, 1, 2])
    """
    if checks.is_dtensor(w):
        return distributed.clusters(w, dim)
    return plain.clusters(w, dim)


def soft_threshold(w: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    r"""Elementwise soft-thresholding $\operatorname{sign}(w)\max(|w|-t, 0)$.

    It is the prox of $t\|\cdot\|_1$.

    Args:
        w: a real floating tensor without NaN/inf.
        t: the threshold t ≥ 0: a float or a tensor broadcastable to ``w``.

    Returns:
        A new tensor like ``w`` (differentiable).

    Raises:
        TypeError: for a non-floating ``w`` or a non-real ``t``.
        ValueError: for NaN/inf in ``w`` or a negative, non-finite or non-broadcastable ``t``.

    Example:
        >>> import torch, weightshare
        >>> weightshare.soft_threshold(torch.tensor([-2.0, 0.5, 3.0]), 1.0)
        tensor([-1.,  0.,  2.])
    """
    if checks.is_dtensor(w):
        return distributed.soft_threshold(w, t)
    return plain.soft_threshold(w, t)
