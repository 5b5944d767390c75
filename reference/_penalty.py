r"""Reference weight-sharing penalty: the literal pairwise double sum."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._args import dtype_message, nonfinite_message


class InputDTypeError(TypeError, ValueError):
    """A non-float input: a ``TypeError`` that is also a ``ValueError``."""


def as_vector(w: ArrayLike, name: str = "w") -> NDArray[np.float64]:
    """Validate a 1-D finite float array and return it as a new float64 array.

    Raises:
        InputDTypeError: if the array is not of a real floating dtype.
        ValueError: if it is not 1-D or holds NaN/inf (the message gives the count).
    """
    arr = np.asarray(w)
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputDTypeError(dtype_message(name, arr.dtype))
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        raise ValueError(nonfinite_message(name, bad))
    return arr.astype(np.float64, copy=True)


def penalty(w: ArrayLike) -> float:
    r"""The weight-sharing penalty $R(w) = \frac{1}{d-1}\sum_{i>j} |w_i - w_j|$.

    Evaluated literally as the pairwise double sum (O(d²) time); 0.0 for d < 2.

    Args:
        w: a 1-D float array of length d.

    Returns:
        The penalty as a Python float (computed in float64).

    Raises:
        ValueError: for a non-float, non-1-D or non-finite input.
    """
    x = as_vector(w)
    d = x.size
    if d < 2:
        return 0.0
    total = 0.0
    for i in range(1, d):
        total += float(np.abs(x[i] - x[:i]).sum())
    return total / (d - 1)
