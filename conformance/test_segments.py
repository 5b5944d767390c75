"""Segments of a flat tensor sorted within their own spans (spec/algorithms.md, ALG-14)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from weightshare import _rows, _segments


def numpy_sort(values: np.ndarray, lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-segment stable NumPy sorts: (sorted values, flat permutation)."""
    perm = np.empty(values.size, dtype=np.int64)
    start = 0
    for d in lengths:
        perm[start : start + d] = start + np.argsort(values[start : start + d], kind="stable")
        start += d
    return values[perm], perm


def check_against_numpy(values: np.ndarray, lengths: list[int], device: str) -> None:
    x = torch.from_numpy(values).to(device)
    got, perm = _segments.sort_segments(x, lengths)
    assert perm.dtype == torch.int64 and perm.device == x.device and got.dtype == x.dtype
    want, want_perm = numpy_sort(values, lengths)
    # bit for bit (so -0.0 and 0.0 keep their own signs and stable order)
    np.testing.assert_array_equal(got.cpu().numpy().view(np.uint8), want.view(np.uint8))
    assert torch.equal(x[perm], got)
    if device == "cpu":  # CUDA's radix sort may order -0.0 and 0.0 either way
        np.testing.assert_array_equal(perm.cpu().numpy(), want_perm)


@pytest.mark.req("ALG-14")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_examples(dtype: type, device: str) -> None:
    rng = np.random.default_rng(0)
    cases: list[tuple[np.ndarray, list[int]]] = [
        (np.array([3.0, 1.0, 2.0]), [3]),  # one segment
        (np.array([2.0, 1.0, 0.5]), [1, 1, 1]),  # length-1 segments stay put
        (np.array([0.0, -0.0, 0.0, -0.0, 1.0, -1.0]), [4, 2]),  # +-0.0 ties keep their order
        (np.array([1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0]), [3, 4]),  # ties across segments
        # many short segments among long ones, and the reverse order of values
        (rng.standard_normal(501), [1, 300, *([2] * 50), 1, 3, 95, 1]),
        (np.arange(500, 0, -1, dtype=np.float64), [250, 1, 1, 248]),
        (rng.integers(-3, 4, 400).astype(np.float64), [7] * 40 + [120]),  # heavy ties
        (np.zeros(0), []),
    ]
    for values, lengths in cases:
        assert sum(lengths) == values.size
        check_against_numpy(values.astype(dtype), lengths, device)


@pytest.mark.req("ALG-14")
@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 40), min_size=1, max_size=30),
    st.integers(0, 2**32 - 1),
    st.booleans(),
)
def test_random_layouts(lengths: list[int], seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    values = rng.integers(-2, 3, n).astype(np.float64) if ties else rng.standard_normal(n)
    check_against_numpy(values, lengths, "cpu")


@pytest.mark.req("ALG-14")
def test_helpers_per_segment() -> None:
    lengths = [1, 4, 4, 2, 1, 5]
    seg = _segments.layout(_segments.runs_of(lengths), torch.device("cpu"))
    assert seg.runs == ((1, 1), (2, 4), (1, 2), (1, 1), (1, 5))
    assert (seg.count, seg.total) == (6, 17)
    ids = seg.ids()
    assert ids.tolist() == [i for i, d in enumerate(lengths) for _ in range(d)]
    pos = seg.positions(ids)
    assert pos.tolist() == [k for d in lengths for k in range(d)]
    ramp = seg.ramp(ids, pos)
    assert ramp.dtype == torch.float64
    want = torch.cat([_rows.ramp(d, torch.device("cpu")) for d in lengths])
    assert torch.equal(ramp, want)  # each segment's own length, the same float64 values
    lam = torch.arange(6, dtype=torch.float64)
    assert seg.spread(lam, ids).tolist() == [float(i) for i in ids.tolist()]
    values, _ = seg.sort(torch.arange(17.0).flip(0), ids)
    first, last = seg.first_last(values)
    starts = np.cumsum([0, *lengths[:-1]])
    assert first.tolist() == [float(16 - s - d + 1) for s, d in zip(starts, lengths, strict=True)]
    assert last.tolist() == [float(16 - s) for s in starts]
    assert _segments.layout(seg.runs, torch.device("cpu")) is seg  # cached per layout


@pytest.mark.req("ALG-14")
def test_errors() -> None:
    x = torch.zeros(5)
    with pytest.raises(ValueError, match="sum to 4 but values has 5"):
        _segments.sort_segments(x, [2, 2])
    with pytest.raises(ValueError, match="lengths >= 1"):
        _segments.sort_segments(x, [5, 0])
    with pytest.raises(ValueError, match="1-D tensor, got shape \\(5, 1\\)"):
        _segments.sort_segments(x[:, None], [5])


@pytest.mark.req("ALG-14")
def test_no_host_read_on_meta() -> None:
    # the meta device has no values: any host read would raise, and the shapes still come out
    x = torch.empty(12, device="meta")
    got, perm = _segments.sort_segments(x, [5, 1, 6])
    assert got.shape == (12,) and perm.shape == (12,) and perm.dtype == torch.int64
