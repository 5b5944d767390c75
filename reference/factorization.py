r"""Reference deep weight factorization (spec page *Factorization (DWF)*).

A weight $w$ is the elementwise product of $D$ factors, $w = u_1 \odot \dots \odot u_D$; an L2
penalty $\mu\sum_d \lVert u_d\rVert^2$ on the factors induces $D\mu\sum_j |w_j|^{2/D}$ on $w$.
Plain NumPy, slow and obviously correct.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._args import check_depth, check_float_array, check_init, check_nonneg_finite

__all__ = [
    "collapse",
    "compression_ratio",
    "equivalent_penalty",
    "factor_penalty",
    "init",
    "product",
    "weight_decay_for",
]


def _check_factors(factors: Sequence[Any]) -> list[np.ndarray]:
    if isinstance(factors, np.ndarray) or not isinstance(factors, Sequence):
        raise TypeError("factors must be a sequence of arrays")
    if not factors:
        raise ValueError("factors must hold at least one array")
    arrays = [check_float_array(u, f"factors[{d}]") for d, u in enumerate(factors)]
    shapes = {u.shape for u in arrays}
    if len(shapes) > 1:
        raise ValueError(f"factors must share one shape, got shapes {sorted(shapes)}")
    return arrays


def product(factors: Sequence[Any]) -> np.ndarray:
    r"""The elementwise product $u_1 \odot \dots \odot u_D$ of the factors.

    Args:
        factors: $D \ge 1$ arrays of one shape.

    Returns:
        The collapsed weight.
    """
    arrays = _check_factors(factors)
    out = arrays[0].copy()
    for u in arrays[1:]:
        out = out * u
    return out


def collapse(factors: Sequence[Any], *, threshold: float) -> np.ndarray:
    r"""The collapsed weight ``product(factors)`` with entries $|w_j| < \text{threshold}$ set to 0.

    The torch namesake ``weightshare.collapse`` takes a *module* instead and returns it with the
    parametrization removed; its weight equals this function applied to the module's factors.

    Args:
        factors: $D \ge 1$ arrays of one shape.
        threshold: Magnitudes strictly below it become exactly 0 (0 keeps everything).

    Returns:
        The collapsed, thresholded weight.
    """
    threshold = check_nonneg_finite(threshold, "threshold")
    w = product(factors)
    return np.where(np.abs(w) < threshold, np.zeros_like(w), w)


def equivalent_penalty(w: Any, mu: float, depth: int) -> float:
    r"""The penalty induced on $w$ by $\mu\sum_d\lVert u_d\rVert^2$: $D\mu\sum_j |w_j|^{2/D}$.

    Args:
        w: The collapsed weight.
        mu: The factor L2 coefficient $\mu \ge 0$.
        depth: $D \ge 1$.

    Returns:
        The minimum of $\mu\sum_d\lVert u_d\rVert^2$ over factorizations of $w$.
    """
    w = check_float_array(w, "w")
    mu, depth = check_nonneg_finite(mu, "mu"), check_depth(depth)
    return float(depth * mu * np.sum(np.abs(w.astype(np.float64)) ** (2.0 / depth)))


def factor_penalty(factors: Sequence[Any], mu: float) -> float:
    r"""The factor penalty $\mu \sum_d \lVert u_d \rVert_2^2$.

    Args:
        factors: $D \ge 1$ arrays of one shape.
        mu: The coefficient $\mu \ge 0$.

    Returns:
        The penalty value.
    """
    arrays = _check_factors(factors)
    mu = check_nonneg_finite(mu, "mu")
    return float(mu * sum(np.sum(u.astype(np.float64) ** 2) for u in arrays))


def weight_decay_for(lam: float, depth: int) -> float:
    r"""The SGD ``weight_decay`` on every factor that realizes the paper's penalty.

    The paper's objective $L(w) + (\lambda/D)\sum_d\lVert u_d\rVert^2$ is SGD with
    ``weight_decay`` $= 2\lambda/D$ on each factor (torch's decay $\text{wd}\cdot u$ is the
    gradient of $(\text{wd}/2)\lVert u\rVert^2$); it induces $\lambda\sum_j|w_j|^{2/D}$.

    Args:
        lam: The paper's $\lambda \ge 0$.
        depth: $D \ge 1$.

    Returns:
        $2\lambda / D$.
    """
    return 2.0 * check_nonneg_finite(lam, "lam") / check_depth(depth)


def init(
    shape: Sequence[int],
    depth: int,
    rng: np.random.Generator,
    *,
    std: float,
    eps: float | None = None,
    truncate: bool = True,
) -> list[np.ndarray]:
    r"""Variance-matching factors with absolute-value truncation (our reading of Algorithm 1).

    Each factor entry is drawn i.i.d. from $\mathcal N(0, \sigma_w^{2/D})$, so that without
    truncation $\operatorname{Var}(\prod_d u_d) = \sigma_w^2$. With ``truncate`` an entry is
    redrawn (rejection) until $\varepsilon^{1/D} < |u| < \min(1, (2\sigma_w)^{1/D})$.

    Args:
        shape: The weight shape.
        depth: $D \ge 1$.
        rng: The NumPy random generator.
        std: $\sigma_w > 0$, the std of the layer's ordinary init.
        eps: $\varepsilon$, the smallest collapsed magnitude; ``None`` means $\sigma_w/4$.
        truncate: Whether to apply the truncation.

    Returns:
        ``depth`` float64 arrays of ``shape``.
    """
    depth, std, lo, hi = check_init(depth, std, eps, truncate)
    scale = std ** (1.0 / depth)
    factors = []
    for _ in range(depth):
        u = rng.normal(0.0, scale, size=tuple(shape))
        if truncate:
            bad = ~((np.abs(u) > lo) & (np.abs(u) < hi))
            while bad.any():
                u[bad] = rng.normal(0.0, scale, size=int(bad.sum()))
                bad = ~((np.abs(u) > lo) & (np.abs(u) < hi))
        factors.append(u)
    return factors


def compression_ratio(w: Any) -> float:
    r"""The compression ratio $\#\text{entries} / \#\text{non-zero entries}$ (inf if all zero).

    Args:
        w: A weight array, or a sequence of them (pooled).

    Returns:
        The ratio.
    """
    arrays = [np.asarray(a) for a in w] if isinstance(w, list | tuple) else [np.asarray(w)]
    total = sum(a.size for a in arrays)
    nonzero = sum(int(np.count_nonzero(a)) for a in arrays)
    if total == 0:
        raise ValueError("compression_ratio of an empty weight")
    return math.inf if nonzero == 0 else total / nonzero
