r"""Tensors as ``(B, d)`` rows of vectors, the ramp, and means over runs of equal sorted values.

A tensor with ``dim=None`` is one vector (one row); with ``dim=k`` each slice along ``k`` is a
row. The ramp holds the coefficients $c_k = (2k-d-1)/(d-1)$ shared by the penalty and the prox.
"""

from __future__ import annotations

import math

import torch

from . import _checks as checks


def rows(t: torch.Tensor, dim: int | None) -> torch.Tensor:
    """The ``(B, d)`` view (or copy) of ``t``'s vectors; ``dim`` is non-negative or None."""
    if dim is None or t.dim() == 0:
        return t.reshape(1, t.numel())
    d = t.shape[dim]
    moved = t.movedim(dim, -1)
    return moved.reshape(moved.numel() // d if d else math.prod(moved.shape[:-1]), d)


def unrows(r: torch.Tensor, shape: torch.Size, dim: int | None) -> torch.Tensor:
    """The inverse of :func:`rows`: ``(B, d)`` rows back to a tensor of ``shape``."""
    if dim is None or len(shape) == 0:
        return r.reshape(shape)
    moved = [*shape[:dim], *shape[dim + 1 :], shape[dim]]
    return r.reshape(moved).movedim(-1, dim)


def ramp(d: int, device: torch.device) -> torch.Tensor:
    """The coefficients (2k-d-1)/(d-1), k = 1..d, in float64 (zeros for d < 2)."""
    k = torch.arange(d, dtype=torch.float64, device=device)
    return (2.0 * k - (d - 1)) / max(d - 1, 1)


def strength_rows(lam: checks.Lam, t: torch.Tensor, dim: int | None) -> float | torch.Tensor:
    """A float, or the strengths as a float64 ``(B, 1)`` tensor on ``t``'s device."""
    if not isinstance(lam, torch.Tensor):
        return float(lam)
    shape = checks.batch_shape(t, dim)
    lam64 = lam.to(device=t.device, dtype=torch.float64)
    return lam64.broadcast_to(shape).reshape(math.prod(shape), 1)


def run_labels(new: torch.Tensor) -> torch.Tensor:
    """Per row, the index of each entry's run: ``new[:, k]`` says entry k+1 starts a new run."""
    b = new.shape[0]
    zero = torch.zeros((b, 1), dtype=torch.int64, device=new.device)
    return torch.cat([zero, new.cumsum(1)], dim=1)


def sorted_labels(xs: torch.Tensor) -> torch.Tensor:
    """Labels 0..k-1 of the runs of equal values of each sorted row (``-0.0`` equals ``0.0``)."""
    return run_labels(xs[:, 1:] != xs[:, :-1])


def run_means(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each entry of the ``(B, d)`` ``values`` replaced by the mean over its run (``labels``)."""
    b, d = values.shape
    if b * d == 0:
        return values.clone()
    ids = (labels + torch.arange(b, device=labels.device)[:, None] * d).reshape(-1)
    flat = values.reshape(-1)
    sums = torch.zeros_like(flat).scatter_add(0, ids, flat)
    counts = torch.zeros_like(flat).scatter_add(0, ids, torch.ones_like(flat))
    return (sums / counts.clamp_min(1.0)).gather(0, ids).reshape(b, d)
