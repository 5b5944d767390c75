"""Hypothesis strategies and named input families shared by every conformance test.

Data is drawn once as float64 NumPy arrays; the reference consumes them as they are and the torch
implementation gets ``torch.from_numpy(x).to(dtype, device)``, so both sides see the same input.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

KINDS = ("random", "ties", "all_equal", "sorted", "descending", "chain", "large")


def chain(d: int, lam: float) -> np.ndarray:
    """The worst case of parallel PAV rounds (spec ALG page): d - 1 rounds.

    Sorted weights whose two smallest are equal and whose other gaps are just above the closing
    distance 2λ/(d-1) of neighbours, so the left cluster absorbs one particle per round.
    """
    if d < 2:
        return np.zeros(d)
    gap = (2.0 * lam / (d - 1)) * (1.0 + 2.0 / (d * (d + 3)))
    x = np.concatenate([[0.0], np.arange(d - 1) * gap])
    return x


def _finite(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False)


@st.composite
def vectors(draw: st.DrawFn, min_size: int = 0, max_size: int = 40, kind: str | None = None):
    """A float64 vector of one of the named kinds (``KINDS``); the kind itself is drawn too."""
    kind = draw(st.sampled_from(KINDS)) if kind is None else kind
    d = draw(st.integers(min_size, max_size))
    if kind == "random":
        return draw(hnp.arrays(np.float64, d, elements=_finite(-10.0, 10.0)))
    if kind == "ties":
        ints = draw(hnp.arrays(np.int64, d, elements=st.integers(-3, 3)))
        return ints.astype(np.float64) * draw(st.sampled_from([0.25, 1.0, 3.0]))
    if kind == "all_equal":
        return np.full(d, draw(_finite(-10.0, 10.0)))
    if kind in ("sorted", "descending"):
        x = np.sort(draw(hnp.arrays(np.float64, d, elements=_finite(-10.0, 10.0))))
        return x if kind == "sorted" else x[::-1].copy()
    if kind == "chain":
        lam = draw(st.sampled_from([0.1, 1.0, 5.0]))
        return chain(d, lam)[draw(st.permutations(range(d)))] if d else np.zeros(0)
    if kind == "large":
        return draw(hnp.arrays(np.float64, d, elements=_finite(-1e6, 1e6)))
    raise ValueError(f"unknown kind {kind!r}")


def lams() -> st.SearchStrategy[float]:
    """Prox strengths: zero, tiny, ordinary and huge (everything collapses to the mean)."""
    return st.one_of(
        st.sampled_from([0.0, 1e-12, 1e-6, 1e6]),
        _finite(0.0, 20.0),
    )


@st.composite
def batches(draw: st.DrawFn, max_rows: int = 5, max_size: int = 20):
    """A (rows, d) float64 array whose rows are drawn from ``vectors`` with a common length."""
    rows = draw(st.integers(1, max_rows))
    d = draw(st.integers(0, max_size))
    return np.stack([draw(vectors(min_size=d, max_size=d)) for _ in range(rows)]).reshape(rows, d)
