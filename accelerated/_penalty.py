r"""The weight-sharing penalty of plain tensors in O(d log d), with the tie-averaged subgradient."""

from __future__ import annotations

import torch

from . import _checks as checks
from . import _rows as rows_


def penalty(w: torch.Tensor, dim: object = None) -> torch.Tensor:
    r"""``weightshare.penalty`` of a plain tensor: $\sum_k c_k w_{(k)}$ over each sorted vector.

    Sums are accumulated in float64 from each vector's minimum (by shift invariance) and rounded
    to ``w``'s dtype; tied entries share the mean of their coefficients in the gradient.
    """
    checks.check_float(w, "w")
    dim = checks.normalize_dim(w, dim)
    if checks.should_validate(w):
        checks.check_values([w], ["w"])
    rows = rows_.rows(w, dim)
    b, d = rows.shape
    xs = torch.sort(rows, dim=1).values
    ramp = rows_.ramp(d, w.device).expand(b, d)
    coef = rows_.run_means(ramp, rows_.sorted_labels(xs.detach())) if b * d else ramp
    x64 = xs.to(torch.float64)
    # shift invariance: measuring from each row's minimum cancels less (all-equal rows give 0)
    x64 = x64 - x64[:, :1].detach()
    value = (x64 * coef).sum(dim=1).to(w.dtype)
    return value.reshape(checks.batch_shape(w, dim))
