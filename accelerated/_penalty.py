r"""The weight-sharing penalty in O(d log d), differentiable with the tie-averaged subgradient."""

from __future__ import annotations

import torch

from . import _distributed as _dt
from . import _validation as val
from ._prox import _ramp, _rows


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
    if _dt.is_dtensor(w):
        return _dt.penalty(w, dim)
    val.check_float(w, "w")
    dim = val.normalize_dim(w, dim)
    if val.should_validate(w):
        val.check_values([w], [], ["w"])
    rows = _rows(w, dim)
    d = rows.shape[1]
    xs = torch.sort(rows, dim=1).values
    coef = _tie_averaged(xs.detach(), _ramp(d, w.device))
    x64 = xs.to(torch.float64)
    # shift invariance: measuring from each row's minimum cancels less (all-equal rows give 0)
    x64 = x64 - x64[:, :1].detach()
    value = (x64 * coef).sum(dim=1).to(w.dtype)
    return value.reshape(val.batch_shape(w, dim))


def _tie_averaged(xs: torch.Tensor, ramp: torch.Tensor) -> torch.Tensor:
    """The ramp averaged over every run of equal values in each sorted row."""
    b, d = xs.shape
    if b * d == 0:
        return ramp.expand(b, d)
    new = xs[:, 1:] != xs[:, :-1]
    labels = torch.cat(
        [torch.zeros((b, 1), dtype=torch.int64, device=new.device), new.cumsum(1)], dim=1
    )
    ids = (labels + torch.arange(b, device=xs.device)[:, None] * d).reshape(-1)
    flat = ramp.expand(b, d).reshape(-1)
    sums = torch.zeros_like(flat).scatter_add(0, ids, flat)
    counts = torch.zeros_like(flat).scatter_add(0, ids, torch.ones_like(flat))
    return (sums / counts.clamp_min(1.0)).gather(0, ids).reshape(b, d)
