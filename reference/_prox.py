r"""Reference proximal operator of the weight-sharing penalty, three independent ways.

* :func:`prox`: the definition, solved as a convex program with CVXPY (small d only).
* :func:`prox_pava`: sort, subtract the ramp, pool adjacent violators, unsort.
* :func:`prox_particles`: an event-driven sticky-particle simulation for unit time.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._args import check_nonneg_finite
from ._penalty import InputDTypeError, as_vector

if TYPE_CHECKING:
    import cvxpy as cp

#: Largest d the CVXPY programs accept (the pairwise program has d(d-1)/2 terms).
CVXPY_MAX_D = 100
#: OSQP's absolute and relative tolerances used by :func:`prox` and :func:`isotonic` (its
#: solution polishing then recovers the exact active set, so results are far more accurate).
CVXPY_TOL = 1e-10


def _as_lam(lam: float, name: str = "lam") -> float:
    if isinstance(lam, bool) or not isinstance(lam, int | float | np.floating | np.integer):
        raise InputDTypeError(f"{name} must be a real number, got {type(lam).__name__}")
    return check_nonneg_finite(lam, name)


def ramp(d: int) -> NDArray[np.float64]:
    r"""The subgradient coefficients $c_k = (2k-d-1)/(d-1)$, $k = 1..d$ (zeros for d < 2)."""
    if d < 2:
        return np.zeros(d)
    k = np.arange(1, d + 1, dtype=np.float64)
    return (2.0 * k - d - 1.0) / (d - 1.0)


def collapse_clamp(x: NDArray[np.float64], lam: float) -> float:
    r"""``min(lam, max(x) - min(x))``: the same prox (PROX-5), without huge ramp terms.

    Every $\lambda \ge \max_i x_i - \min_i x_i \ge \lambda^*(x)$ collapses ``x`` to its mean, so
    clamping changes nothing in exact arithmetic; in floating point it keeps $\lambda c_k$ of the
    size of ``x``, so an enormous λ (up to the largest float) still returns the mean (PROX-21).
    """
    if x.size < 2:
        return lam
    return min(lam, float(x.max() - x.min()))


def pava(y: ArrayLike) -> NDArray[np.float64]:
    """Non-decreasing unit-weight isotonic regression by the textbook pool-adjacent-violators.

    Args:
        y: a 1-D float array.

    Returns:
        A new float64 array: the closest non-decreasing vector to ``y`` in the l2 norm.

    Raises:
        ValueError: for a non-float, non-1-D or non-finite input.
    """
    z = as_vector(y, "y")
    sums: list[float] = []
    sizes: list[int] = []
    for value in z:
        sums.append(float(value))
        sizes.append(1)
        # pool while the previous block's mean is >= the last block's mean
        while len(sums) > 1 and sums[-2] * sizes[-1] >= sums[-1] * sizes[-2]:
            s, n = sums.pop(), sizes.pop()
            sums[-1] += s
            sizes[-1] += n
    out = np.empty_like(z)
    start = 0
    for s, n in zip(sums, sizes, strict=True):
        out[start : start + n] = s / n
        start += n
    return out


def _solve(problem: cp.Problem, name: str) -> None:
    """Solve with OSQP (polished), or with Clarabel where OSQP does not reach "optimal".

    OSQP's polishing lands on the exact active set (Clarabel reported "optimal" ~3e-5 away from
    the solution on tied isotonic problems); on degenerate programs (e.g. all-equal input with a
    huge λ) OSQP may stop "inaccurate", and Clarabel is accurate there.
    """
    import cvxpy as cp

    attempts: tuple[tuple[str, dict[str, object]], ...] = (
        (
            cp.OSQP,
            {"eps_abs": CVXPY_TOL, "eps_rel": CVXPY_TOL, "polishing": True, "max_iter": 200_000},
        ),
        (cp.CLARABEL, {}),
    )
    for solver, options in attempts:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # judged by the status below
            problem.solve(solver=solver, **options)
        if problem.status == cp.OPTIMAL:
            return
    raise RuntimeError(f"{name}: CVXPY returned status {problem.status!r} (OSQP, then Clarabel)")


def _check_cvxpy_size(d: int, name: str) -> None:
    if d > CVXPY_MAX_D:
        raise ValueError(
            f"{name} solves a CVXPY program and accepts d <= {CVXPY_MAX_D}, got d = {d}; "
            "use prox_pava / pava for larger vectors"
        )


def isotonic(y: ArrayLike) -> NDArray[np.float64]:
    """Non-decreasing isotonic regression as a CVXPY quadratic program (OSQP).

    Args:
        y: a 1-D float array with at most ``CVXPY_MAX_D`` entries.

    Returns:
        A new float64 array, accurate to about ``1e-4`` relative to ``max(1, max|y|)`` (the
        solver's stopping rule).

    Raises:
        ValueError: for a non-float, non-1-D, non-finite or too long input.
    """
    z = as_vector(y, "y")
    d = z.size
    _check_cvxpy_size(d, "isotonic")
    if d < 2:
        return z
    import cvxpy as cp

    scale = max(1.0, float(np.abs(z).max()))
    u = cp.Variable(d)
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(u - z / scale)), [cp.diff(u) >= 0])
    _solve(problem, "isotonic")
    return np.asarray(u.value, dtype=np.float64) * scale


def prox(v: ArrayLike, lam: float) -> NDArray[np.float64]:
    r"""$\operatorname{prox}_{\lambda R}(v) = \arg\min_u \tfrac12\|u-v\|^2 + \lambda R(u)$ by CVXPY.

    The program keeps the pairwise absolute values of the definition; it is solved by OSQP
    (polished; Clarabel where OSQP stops short of "optimal") on the rescaled problem $v/s$,
    $\lambda/s$ with $s = \max(1, \max|v|, \lambda)$ (the prox is positively homogeneous), then
    scaled back.

    Args:
        v: a 1-D float array with at most ``CVXPY_MAX_D`` entries.
        lam: the strength λ ≥ 0.

    Returns:
        A new float64 array, accurate to about ``1e-4·s`` (the solver's stopping rule).

    Raises:
        ValueError: for a bad ``v`` (non-float, non-1-D, non-finite, too long) or a negative or
            non-finite ``lam``.
    """
    x = as_vector(v, "v")
    lam = _as_lam(lam)
    d = x.size
    _check_cvxpy_size(d, "prox")
    lam = collapse_clamp(x, lam)
    if d < 2 or lam == 0.0:
        return x
    import cvxpy as cp

    scale = max(1.0, float(np.abs(x).max()), lam)
    i, j = np.triu_indices(d, k=1)
    diffs = np.zeros((i.size, d))
    diffs[np.arange(i.size), i] = 1.0
    diffs[np.arange(i.size), j] = -1.0
    u = cp.Variable(d)
    objective = 0.5 * cp.sum_squares(u - x / scale) + (lam / scale / (d - 1)) * cp.norm1(diffs @ u)
    _solve(cp.Problem(cp.Minimize(objective)), "prox")
    return np.asarray(u.value, dtype=np.float64) * scale


def prox_pava(v: ArrayLike, lam: float) -> NDArray[np.float64]:
    r"""The prox by its closed form: isotonic regression of the sorted vector minus the ramp.

    Sort $v$ ascending into $x$ (stable), form $z_k = x_k - \lambda (2k-d-1)/(d-1)$, take
    :func:`pava` of $z$ and put the values back in the original order.

    Args:
        v: a 1-D float array.
        lam: the strength λ ≥ 0.

    Returns:
        A new float64 array.

    Raises:
        ValueError: for a bad ``v`` or a negative or non-finite ``lam``.
    """
    x = as_vector(v, "v")
    lam = collapse_clamp(x, _as_lam(lam))
    if lam == 0.0:
        return x
    order = np.argsort(x, kind="stable")
    z = x[order] - lam * ramp(x.size)
    out = np.empty_like(x)
    out[order] = pava(z)
    return out


def prox_particles(v: ArrayLike, lam: float) -> NDArray[np.float64]:
    r"""The prox as sticky particles run for unit time (event-driven, exact collision times).

    Particle $k$ (rank $k$ in ascending order) starts at $x_k$ with velocity
    $-\lambda(2k-d-1)/(d-1)$: the net pull of the others, each attracting with force
    $\lambda/(d-1)$. Particles that meet stick together, conserving mass and momentum, so a
    cluster's centre moves at its members' mean velocity and sits at
    $\bar x_0 + t\,\bar v$ (means of its members' starting points and velocities). Events are
    processed in time order (earliest collision of adjacent clusters first) until $t = 1$.

    Args:
        v: a 1-D float array.
        lam: the strength λ ≥ 0.

    Returns:
        A new float64 array: each particle's position at $t = 1$.

    Raises:
        ValueError: for a bad ``v`` or a negative or non-finite ``lam``.
    """
    x = as_vector(v, "v")
    lam = collapse_clamp(x, _as_lam(lam))
    d = x.size
    order = np.argsort(x, kind="stable")
    pos0 = x[order].tolist()
    vel = (-lam * ramp(d)).tolist()
    # one cluster per particle: [sum of start positions, sum of velocities, mass]
    sx, sv, mass = pos0[:], vel[:], [1] * d

    def meeting_time(a: int) -> float:
        """Time at which cluster a meets its right neighbour (inf if never)."""
        gap = sx[a + 1] / mass[a + 1] - sx[a] / mass[a]
        closing = sv[a] / mass[a] - sv[a + 1] / mass[a + 1]
        if gap <= 0.0:
            return 0.0
        return gap / closing if closing > 0.0 else math.inf

    times = [meeting_time(a) for a in range(len(mass) - 1)]
    while times:
        a = min(range(len(times)), key=times.__getitem__)
        if times[a] > 1.0:
            break
        sx[a] += sx.pop(a + 1)
        sv[a] += sv.pop(a + 1)
        mass[a] += mass.pop(a + 1)
        times.pop(a)
        if a < len(times):
            times[a] = meeting_time(a)
        if a > 0:
            times[a - 1] = meeting_time(a - 1)
    sorted_out = np.repeat([(p + s) / m for p, s, m in zip(sx, sv, mass, strict=True)], mass)
    out = np.empty(d)
    out[order] = sorted_out
    return out


def clusters(w: ArrayLike) -> NDArray[np.int64]:
    """Cluster labels: equal label ⇔ equal value, labels ``0..k-1`` in increasing value order.

    Args:
        w: a 1-D float array (``-0.0`` and ``0.0`` are equal).

    Returns:
        An int64 array of the same length.

    Raises:
        ValueError: for a non-float, non-1-D or non-finite input.
    """
    x = as_vector(w)
    _, labels = np.unique(x, return_inverse=True)
    return labels.astype(np.int64).reshape(x.shape)


def soft_threshold(w: ArrayLike, t: float) -> NDArray[np.float64]:
    r"""Elementwise soft-thresholding $\operatorname{sign}(w)\max(|w| - t, 0)$.

    It is the prox of $t\|\cdot\|_1$.

    Args:
        w: a 1-D float array.
        t: the threshold t ≥ 0.

    Returns:
        A new float64 array.

    Raises:
        ValueError: for a bad ``w`` or a negative or non-finite ``t``.
    """
    x = as_vector(w)
    t = _as_lam(t, "t")
    return np.sign(x) * np.maximum(np.abs(x) - t, 0.0)
