"""Conformance of the weight-sharing penalty (spec/penalty.md, PEN-n)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import weightshare
from conformance.strategies import batches, vectors
from weightshare import reference

FLOATS = (torch.float64, torch.float32)
#: the ``device`` fixture is a constant string, safe to share between hypothesis examples
with_device = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


def sorted_form(w: np.ndarray) -> float:
    d = w.size
    if d < 2:
        return 0.0
    k = np.arange(1, d + 1)
    return float(np.sort(w) @ ((2 * k - d - 1) / (d - 1)))


def tie_averaged_coefficients(w: np.ndarray) -> np.ndarray:
    """Coefficient of each entry: the mean of c_k over the ranks its value occupies."""
    d = w.size
    if d < 2:
        return np.zeros(d)
    out = np.empty(d)
    xs = np.sort(w)
    for i, value in enumerate(w):
        ranks = np.flatnonzero(xs == value) + 1
        out[i] = np.mean((2 * ranks - d - 1) / (d - 1))
    return out


def scale(w: np.ndarray) -> float:
    return float(np.abs(w).sum()) / max(w.size - 1, 1) + 1e-300


@pytest.mark.req("PEN-1", "PEN-2")
@given(vectors())
def test_double_sum_equals_sorted_form(w: np.ndarray) -> None:
    value = reference.penalty(w)
    assert isinstance(value, float)
    assert value == pytest.approx(sorted_form(w), rel=0, abs=1e-12 * scale(w))
    if w.size < 2:
        assert value == 0.0


@pytest.mark.req("PEN-1", "PEN-2", "PEN-6")
@pytest.mark.parametrize("dtype", FLOATS)
@given(w=vectors())
@with_device
def test_torch_equals_reference(w: np.ndarray, dtype: torch.dtype, device: str) -> None:
    x = torch.from_numpy(w).to(dtype=dtype, device=device)
    got = weightshare.penalty(x)
    assert got.shape == () and got.dtype == dtype and got.device.type == device
    want = reference.penalty(x.double().cpu().numpy())
    tol = 1e-12 if dtype == torch.float64 else 4e-7
    assert got.item() == pytest.approx(want, rel=tol, abs=tol * scale(w))


@pytest.mark.req("PEN-3", "PEN-4")
@given(w=vectors(max_size=25), t=st.floats(-100, 100), alpha=st.floats(0, 100))
def test_shift_homogeneity_symmetry(w: np.ndarray, t: float, alpha: float) -> None:
    base = reference.penalty(w)
    tol = 1e-9 * (scale(w) * (1 + alpha) + abs(t))
    assert reference.penalty(w + t) == pytest.approx(base, abs=tol)
    assert reference.penalty(alpha * w) == pytest.approx(alpha * base, abs=tol)
    assert reference.penalty(-w) == pytest.approx(base, abs=tol)
    assert reference.penalty(w[::-1].copy()) == pytest.approx(base, abs=tol)
    assert base >= 0.0
    assert (base == 0.0) == (w.size < 2 or bool(np.all(w == w[0])))
    x = torch.from_numpy(w)
    assert weightshare.penalty(x + t).item() == pytest.approx(base, abs=tol)
    assert weightshare.penalty(alpha * x).item() == pytest.approx(alpha * base, abs=tol)


@pytest.mark.req("PEN-5")
@pytest.mark.parametrize("dtype", FLOATS)
@given(w=vectors(min_size=1, max_size=30))
@with_device
def test_gradient_is_tie_averaged_subgradient(
    w: np.ndarray, dtype: torch.dtype, device: str
) -> None:
    x = torch.from_numpy(w).to(dtype=dtype, device=device).requires_grad_(True)
    weightshare.penalty(x).backward()
    want = tie_averaged_coefficients(x.detach().double().cpu().numpy())
    np.testing.assert_allclose(x.grad.double().cpu().numpy(), want, rtol=0, atol=1e-6)
    assert np.all(np.abs(want) <= 1.0)


@pytest.mark.req("PEN-5")
@given(w=vectors(min_size=2, max_size=20), seed=st.integers(0, 2**32 - 1))
def test_gradient_satisfies_subgradient_inequality(w: np.ndarray, seed: int) -> None:
    x = torch.from_numpy(w).requires_grad_(True)
    weightshare.penalty(x).backward()
    g = x.grad.numpy()
    base = reference.penalty(w)
    rng = np.random.default_rng(seed)
    for _ in range(20):
        h = rng.standard_normal(w.size) * rng.choice([1e-6, 1e-2, 1.0])
        assert reference.penalty(w + h) >= base + g @ h - 1e-9 * (scale(w) + 1)


@pytest.mark.req("PEN-5")
def test_tie_rule_example() -> None:
    x = torch.tensor([0.0, 0.0, 1.0], requires_grad=True)
    weightshare.penalty(x).backward()
    torch.testing.assert_close(x.grad, torch.tensor([-0.5, -0.5, 1.0]))


@pytest.mark.req("PEN-6")
@pytest.mark.parametrize("dim", [0, 1, -1])
@given(b=batches(max_rows=4, max_size=12))
@with_device
def test_dim_gives_one_value_per_slice(b: np.ndarray, dim: int, device: str) -> None:
    x = torch.from_numpy(b).to(device)
    got = weightshare.penalty(x, dim=dim)
    moved = np.moveaxis(b, dim, -1)
    assert tuple(got.shape) == moved.shape[:-1]
    flat_rows = moved.reshape(int(np.prod(moved.shape[:-1])), moved.shape[-1])
    want = np.array([reference.penalty(row) for row in flat_rows])
    # PEN-2's tolerance: 1e-12 (d-1)^-1 sum_i |w_i - min w| per row
    d = flat_rows.shape[1]
    low = flat_rows.min(axis=1, keepdims=True) if d else 0.0
    spread = (flat_rows - low).sum(axis=1)
    err = np.abs(got.cpu().numpy().reshape(-1) - want)
    assert np.all(err <= 1e-12 * spread / max(d - 1, 1)), (err, spread)
    whole = weightshare.penalty(x)
    assert whole.shape == ()
    assert whole.item() == pytest.approx(reference.penalty(b.reshape(-1)), rel=1e-12, abs=1e-12)


@pytest.mark.req("PEN-6")
def test_dim_on_3d_and_short_vectors() -> None:
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    got = weightshare.penalty(x, dim=1)
    assert got.shape == (2, 4)
    want = reference.penalty(x[1, :, 2].numpy())
    assert got[1, 2].item() == pytest.approx(want, rel=1e-12)
    assert weightshare.penalty(torch.zeros(0)).item() == 0.0
    assert weightshare.penalty(torch.tensor(3.0)).item() == 0.0
    torch.testing.assert_close(weightshare.penalty(torch.ones(3, 1), dim=1), torch.zeros(3))


@pytest.mark.req("PEN-6")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_dtypes(dtype: torch.dtype) -> None:
    w = torch.linspace(-2, 3, 37).to(dtype)
    got = weightshare.penalty(w)
    assert got.dtype == dtype
    want = reference.penalty(w.double().numpy())
    assert got.double().item() == pytest.approx(want, rel=torch.finfo(dtype).eps)


@pytest.mark.req("PEN-7")
def test_torch_errors() -> None:
    with pytest.raises(TypeError, match="floating"):
        weightshare.penalty(torch.arange(4))
    with pytest.raises(TypeError, match="floating"):
        weightshare.penalty(torch.ones(3, dtype=torch.complex64))
    with pytest.raises(TypeError, match="floating"):
        weightshare.penalty(torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="2 non-finite"):
        weightshare.penalty(torch.tensor([1.0, float("nan"), float("inf")]))
    with pytest.raises(IndexError, match=r"dim 2 .*shape \(2, 2\)"):
        weightshare.penalty(torch.ones(2, 2), dim=2)


@pytest.mark.req("PEN-7")
def test_reference_errors() -> None:
    with pytest.raises(ValueError, match="1 non-finite"):
        reference.penalty(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="1-D"):
        reference.penalty(np.ones((2, 2)))
    with pytest.raises(TypeError, match="float"):
        reference.penalty(np.arange(3))
    with pytest.raises(ValueError, match="float"):
        reference.penalty(np.arange(3))


@pytest.mark.req("PEN-2")
@settings(max_examples=5)
@given(seed=st.integers(0, 2**32 - 1))
def test_sorted_form_at_scale(seed: int) -> None:
    w = np.random.default_rng(seed).standard_normal(3000)
    got = weightshare.penalty(torch.from_numpy(w)).item()
    assert got == pytest.approx(reference.penalty(w), rel=1e-12)
