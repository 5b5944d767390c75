r"""Reference weight symmetry (spec page *Symmetry*): free parameters in, symmetric weight out.

Every *linear* kind is an orbit table (a deterministic ArbNet hash): a set of index permutations
(the symmetry equations) generates a group, each orbit of tensor positions is one free parameter,
and the free parameters are ordered by the smallest row-major flat index in their orbit.
``build`` gathers, ``free`` averages over orbits (least squares), ``project`` is ``build(free)``.
The ``eigen`` kind is the low-rank form $W = V\operatorname{diag}(e)V^\top$ per tap.

Kinds combine with ``+`` (e.g. ``"channel+spatial"``); ``eigen`` stands alone. Kind parameters are
keywords: ``chunks`` and ``dim`` (``chunk``), ``rank`` (``eigen``). Plain NumPy and Python loops,
slow and obviously correct.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._args import KINDS as KINDS
from ._args import check_float_array, parse_kind

__all__ = ["KINDS", "build", "free", "num_free", "project", "table"]

Index = tuple[int, ...]


def _generators(
    parts: tuple[str, ...], shape: Index, kw: dict[str, Any]
) -> list[Callable[[Index], Index]]:
    """The symmetry equations ``W[p] = W[g(p)]`` as index maps ``g``."""
    n0 = shape[0]
    n1 = shape[1] if len(shape) > 1 else 1
    gens: list[Callable[[Index], Index]] = []

    def transpose(p: Index) -> Index:
        return (p[1], p[0], *p[2:])

    def anti_transpose(p: Index) -> Index:
        return (n0 - 1 - p[1], n0 - 1 - p[0], *p[2:])

    def flip_rows(p: Index) -> Index:
        return (n0 - 1 - p[0], *p[1:])

    def flip_cols(p: Index) -> Index:
        return (p[0], n1 - 1 - p[1], *p[2:])

    for part in parts:
        if part in ("symmetric", "channel"):
            gens.append(transpose)
        elif part == "quarter":
            gens += [transpose, anti_transpose]
        elif part == "eightfold":
            gens += [transpose, flip_rows, flip_cols]
        elif part == "block4":
            gens += [flip_rows, flip_cols]
        elif part == "spatial":
            gens.append(lambda p: (p[0], p[1], p[3], p[2]))
        elif part == "chunk":
            dim, size = kw["dim"], shape[kw["dim"]]
            step = size // kw["chunks"]

            def roll(p: Index, dim: int = dim, size: int = size, step: int = step) -> Index:
                q = list(p)
                q[dim] = (q[dim] + step) % size
                return tuple(q)

            gens.append(roll)
    return gens


def table(kind: str, shape: Sequence[int], **kind_kwargs: Any) -> NDArray[np.int64]:
    r"""The index table $H$ of a linear kind: $W = \text{free}[H]$.

    Args:
        kind: A linear kind or a ``+``-joined combination of them (not ``eigen``).
        shape: The weight shape.
        **kind_kwargs: ``chunks`` and ``dim`` for ``chunk``.

    Returns:
        An int64 array of ``shape``; slot ``k`` is the orbit with the ``k``-th smallest
        row-major flat index.
    """
    parts, kw = parse_kind(kind, shape, kind_kwargs)
    if parts == ("eigen",):
        raise ValueError("kind 'eigen' is not linear and has no index table")
    shape = tuple(int(s) for s in shape)
    parent = list(range(math.prod(shape)))

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    gens = _generators(parts, shape, kw)
    for p in np.ndindex(*shape):
        for g in gens:
            a = root(int(np.ravel_multi_index(p, shape)))
            b = root(int(np.ravel_multi_index(g(p), shape)))
            parent[max(a, b)] = min(a, b)  # the root of an orbit is its smallest flat index
    roots = [root(a) for a in range(len(parent))]
    slot = {r: k for k, r in enumerate(sorted(set(roots)))}
    return np.array([slot[r] for r in roots], dtype=np.int64).reshape(shape)


def num_free(kind: str, shape: Sequence[int], **kind_kwargs: Any) -> int:
    r"""The number of free parameters of ``kind`` for a weight of ``shape`` (the spec formulas).

    Args:
        kind: A kind, or a ``+``-joined combination of linear kinds.
        shape: The weight shape.
        **kind_kwargs: ``chunks``/``dim`` for ``chunk``, ``rank`` for ``eigen``.

    Returns:
        The count; for a combination, the number of orbits of the generated group.
    """
    parts, kw = parse_kind(kind, shape, kind_kwargs)
    shape = tuple(int(s) for s in shape)
    if len(parts) > 1:
        return int(table(kind, shape, **kind_kwargs).max()) + 1
    part = parts[0]
    taps = math.prod(shape[2:])
    n = shape[0]
    half = -(-n // 2)
    if part in ("symmetric", "channel"):
        return taps * n * (n + 1) // 2
    if part == "quarter":
        return taps * half * (n // 2 + 1)
    if part == "eightfold":
        return taps * half * (half + 1) // 2
    if part == "block4":
        return taps * half * (-(-shape[1] // 2))
    if part == "spatial":
        k = shape[2]
        return shape[0] * shape[1] * k * (k + 1) // 2
    if part == "chunk":
        chunks: int = kw["chunks"]
        return math.prod(shape) // chunks
    rank: int = kw["rank"]
    return taps * rank * (n + 1)  # eigen


def _taps_first(W: np.ndarray) -> np.ndarray:
    """(n, n, *taps) -> (T, n, n)."""
    n = W.shape[0]
    return W.reshape(n, n, -1).transpose(2, 0, 1)


def build(kind: str, free: ArrayLike, shape: Sequence[int], **kind_kwargs: Any) -> np.ndarray:
    r"""The weight built from its free parameters.

    Linear kinds: $W = \text{free}[H]$ with $H$ = ``table(kind, shape)``. ``eigen`` with rank $r$:
    ``free`` is $V$ of shape $(T, n, r)$ then $e$ of shape $(T, r)$, both row-major, and
    $W_{:,:,t} = V_t \operatorname{diag}(e_t) V_t^\top$ for each of the $T$ taps.

    Args:
        kind: The symmetry kind.
        free: The free-parameter vector, of length ``num_free(kind, shape)``.
        shape: The weight shape.
        **kind_kwargs: ``chunks``/``dim`` for ``chunk``, ``rank`` for ``eigen``.

    Returns:
        The weight, of ``shape`` and of the dtype of ``free``.
    """
    parts, kw = parse_kind(kind, shape, kind_kwargs)
    shape = tuple(int(s) for s in shape)
    free = check_float_array(free, "free")
    count = num_free(kind, shape, **kind_kwargs)
    if free.shape != (count,):
        raise ValueError(
            f"free must have shape ({count},) for kind {kind!r} and shape {shape}, "
            f"got shape {free.shape}"
        )
    if parts != ("eigen",):
        return free[table(kind, shape, **kind_kwargs)]
    n, r, taps = shape[0], kw["rank"], math.prod(shape[2:])
    V = free[: taps * n * r].reshape(taps, n, r)
    e = free[taps * n * r :].reshape(taps, r)
    W: np.ndarray = np.einsum("tik,tk,tjk->tij", V, e, V)
    return W.transpose(1, 2, 0).reshape(shape)


def free(kind: str, W: Any, **kind_kwargs: Any) -> np.ndarray:
    r"""The free parameters of the least-squares closest symmetric weight (inverse of ``build``).

    Linear kinds: the mean of ``W`` over each orbit. ``eigen``: per tap, the eigenpairs of
    $(W + W^\top)/2$ with the ``rank`` largest $|\lambda|$, in that order, as $V$ then $e$.

    Args:
        kind: The symmetry kind.
        W: The dense weight.
        **kind_kwargs: ``chunks``/``dim`` for ``chunk``, ``rank`` for ``eigen``.

    Returns:
        A vector of length ``num_free(kind, W.shape)``.
    """
    W = check_float_array(W, "W")
    parts, kw = parse_kind(kind, W.shape, kind_kwargs)
    if parts != ("eigen",):
        H = table(kind, W.shape, **kind_kwargs).ravel()
        sums = np.bincount(H, weights=W.ravel().astype(np.float64))
        return (sums / np.bincount(H)).astype(W.dtype)
    S = _taps_first(W)
    S = (S + S.transpose(0, 2, 1)) / 2
    evals, evecs = np.linalg.eigh(S.astype(np.float64))
    order = np.argsort(-np.abs(evals), axis=1, kind="stable")[:, : kw["rank"]]
    e = np.take_along_axis(evals, order, axis=1)
    V = np.take_along_axis(evecs, order[:, None, :], axis=2)
    return np.concatenate([V.ravel(), e.ravel()]).astype(W.dtype)


def project(kind: str, W: Any, **kind_kwargs: Any) -> np.ndarray:
    r"""The closest weight of ``kind`` to ``W`` in the Frobenius norm: ``build(kind, free(W))``.

    For linear kinds this is the orthogonal projection onto the symmetric subspace (the orbit
    average); for ``eigen`` it is the truncated eigendecomposition of the symmetric part.

    Args:
        kind: The symmetry kind.
        W: The dense weight.
        **kind_kwargs: ``chunks``/``dim`` for ``chunk``, ``rank`` for ``eigen``.

    Returns:
        An array of the shape and dtype of ``W``.
    """
    W = check_float_array(W, "W")
    return build(kind, free(kind, W, **kind_kwargs), W.shape, **kind_kwargs)
