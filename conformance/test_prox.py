"""Conformance of the prox of the weight-sharing penalty (spec/prox.md, PROX-n)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import weightshare
from conformance.strategies import batches, chain, lams, vectors
from weightshare import _checks as checks
from weightshare import _methods, _prox, reference

ALL_METHODS = ("pava", "rounds", "search", "hull", "triton", "auto")
FLOATS = (torch.float64, torch.float32)
#: the ``device`` fixture is a constant string, safe to share between hypothesis examples
with_device = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


#: CVXPY oracles stop on a duality-gap tolerance tau, which bounds the solution error only by
#: O(sqrt(tau)) (spec PROX-1): they are trusted to 1e-4 of the scale; exactness comes from the
#: PAVA and particle oracles, which agree to 1e-9.
CVXPY_ATOL = 1e-4


def need(method: str, device: str = "cpu") -> None:
    """Skip a method whose module is missing, or "triton" on CPU tensors without its interpreter."""
    if method not in ("pava", "auto") and not _methods.available(method):
        pytest.skip(f"method {method!r}: module weightshare._isotonic.{method} is not importable")
    if method == "triton" and device == "cpu":
        from weightshare._isotonic import triton_hull

        if not triton_hull.INTERPRET:
            pytest.skip("Triton kernels run on CPU tensors only under TRITON_INTERPRET=1")


def scale(v: np.ndarray, lam: float) -> float:
    return float(np.abs(v).max(initial=0.0)) + lam


def r_sorted(u: np.ndarray) -> float:
    d = u.size
    if d < 2:
        return 0.0
    k = np.arange(1, d + 1)
    return float(np.sort(u) @ ((2 * k - d - 1) / (d - 1)))


def objective(u: np.ndarray, v: np.ndarray, lam: float, mu: float = 0.0) -> float:
    return 0.5 * float(np.sum((u - v) ** 2)) + lam * r_sorted(u) + mu * float(np.abs(u).sum())


def assert_prox_close(got: torch.Tensor, v: np.ndarray, lam: float) -> None:
    """PROX-10: ``got`` vs the float64 reference of the (already rounded) input ``v``."""
    want = reference.prox_pava(v, lam)
    g = got.detach().double().cpu().numpy().reshape(-1)
    s = scale(v, lam)
    tol = np.full(v.shape, 1e-9 * s)
    if got.dtype != torch.float64:
        info = torch.finfo(got.dtype)
        tol = tol + info.eps * np.abs(want) + info.smallest_normal * info.eps
    assert np.all(np.abs(g - want) <= tol), float(np.max(np.abs(g - want) - tol))


def perturbation_check(u: np.ndarray, v: np.ndarray, lam: float, mu: float, seed: int) -> None:
    """No random or coordinate perturbation of ``u`` lowers the objective (beyond rounding)."""
    rng = np.random.default_rng(seed)
    base = objective(u, v, lam, mu)
    slack = 1e-9 * (scale(v, lam) + mu + 1.0) ** 2 * max(u.size, 1)
    directions = [rng.standard_normal(u.size) for _ in range(30)] + list(np.eye(u.size))
    for h in directions:
        for step in (1e-3, 1e-1):
            assert objective(u + step * h, v, lam, mu) >= base - slack


# ---------------------------------------------------------------------------------------------
# The reference oracles and the theorem.


@pytest.mark.req("PROX-1", "PROX-3")
@settings(max_examples=6, deadline=None)
@given(v=vectors(max_size=10), lam=lams())
def test_cvxpy_definition_agrees_with_pava(v: np.ndarray, lam: float) -> None:
    got = reference.prox(v, lam)
    s = max(1.0, float(np.abs(v).max(initial=0.0)), lam)
    np.testing.assert_allclose(got, reference.prox_pava(v, lam), rtol=0, atol=CVXPY_ATOL * s)


@pytest.mark.req("PROX-3")
@settings(max_examples=6, deadline=None)
@given(y=vectors(max_size=12))
def test_pava_agrees_with_cvxpy_isotonic(y: np.ndarray) -> None:
    s = max(1.0, float(np.abs(y).max(initial=0.0)))
    np.testing.assert_allclose(
        reference.pava(y), reference.isotonic(y), rtol=0, atol=CVXPY_ATOL * s
    )
    assert np.all(np.diff(reference.pava(y)) >= 0)


@pytest.mark.req("PROX-1")
@given(v=vectors(max_size=15), lam=lams(), seed=st.integers(0, 2**32 - 1))
def test_pava_result_is_optimal(v: np.ndarray, lam: float, seed: int) -> None:
    assume(scale(v, lam) < 1e5)
    perturbation_check(reference.prox_pava(v, lam), v, lam, 0.0, seed)


@pytest.mark.req("PROX-8", "PROX-3")
@given(v=vectors(), lam=lams())
def test_particles_agree_with_pava(v: np.ndarray, lam: float) -> None:
    np.testing.assert_allclose(
        reference.prox_particles(v, lam),
        reference.prox_pava(v, lam),
        rtol=0,
        atol=1e-9 * scale(v, lam),
    )


@pytest.mark.req("PROX-8")
@pytest.mark.parametrize("d", [2, 5, 40])
def test_particles_on_the_chain(d: int) -> None:
    v = chain(d, 1.0)
    np.testing.assert_allclose(
        reference.prox_particles(v, 1.0), reference.prox_pava(v, 1.0), rtol=0, atol=1e-9 * (d + 1)
    )


@pytest.mark.req("PROX-2", "PROX-4")
@given(v=vectors(), lam=lams())
def test_order_and_mean_preserved(v: np.ndarray, lam: float) -> None:
    for u in (reference.prox_pava(v, lam), weightshare.prox(torch.from_numpy(v), lam).numpy()):
        order = np.argsort(v, kind="stable")
        assert np.all(np.diff(u[order]) >= 0)
        s = scale(v, lam)
        for value in np.unique(v):  # ties stay tied (up to float64 rounding of the pooling)
            assert np.all(np.abs(u[v == value] - u[v == value][0]) <= 1e-12 * s)
        assert abs(u.sum() - v.sum()) <= 1e-9 * s * max(v.size, 1)


def collapse_threshold(v: np.ndarray) -> float:
    x = np.sort(v)
    d = x.size
    k = np.arange(1, d)
    low = np.cumsum(x)[:-1] / k
    high = (x.sum() - np.cumsum(x)[:-1]) / (d - k)
    return float((d - 1) / d * np.max(high - low))


@pytest.mark.req("PROX-5")
@given(v=vectors(min_size=2))
def test_collapse_threshold(v: np.ndarray) -> None:
    s = float(np.abs(v).max())
    star = collapse_threshold(v)
    bound = (v.size - 1) / v.size * float(v.max() - v.min())
    assert star <= bound + 1e-12 * s
    for lam in (star * (1 + 1e-9) + 1e-12 * s, bound, float(v.max() - v.min()), 1e6 * (s + 1)):
        u = reference.prox_pava(v, lam)
        np.testing.assert_allclose(u, np.full(v.size, v.mean()), rtol=0, atol=1e-9 * (s + lam))
        t = weightshare.prox(torch.from_numpy(v), lam).numpy()
        np.testing.assert_allclose(t, np.full(v.size, v.mean()), rtol=0, atol=1e-9 * (s + lam))
    if star > 1e-6 * s:
        u = reference.prox_pava(v, star * (1 - 1e-6))
        assert u.max() > u.min()


@pytest.mark.req("PROX-21")
@pytest.mark.parametrize("method", ALL_METHODS)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    v=vectors(min_size=2, max_size=24),
    over=st.floats(1.0, 1e300),
    dtype=st.sampled_from([torch.float64, torch.float32]),
)
def test_extreme_strengths_return_the_mean(
    method: str, v: np.ndarray, over: float, dtype: torch.dtype
) -> None:
    """λ from the collapse threshold up to 1e300: the mean, in every method and the reference."""
    need(method)
    lam = min(max(collapse_threshold(v), 1e-300) * over, 1e300)
    s = float(np.abs(v).max())
    mean = np.full(v.size, v.mean())
    for got in (reference.prox_pava(v, lam), reference.prox_particles(v, lam)):
        np.testing.assert_allclose(got, mean, rtol=0, atol=1e-9 * s)
    x = torch.from_numpy(v).to(dtype)
    tol = {"rtol": 0, "atol": 1e-9 * s if dtype == torch.float64 else 1e-6 * s + 1e-30}
    want = torch.full_like(x, float(x.double().mean()))
    torch.testing.assert_close(weightshare.prox(x, lam, method=method), want, **tol)
    rows = torch.stack([x, x.flip(0)])  # per-row strengths, and the fused pass of prox_many
    torch.testing.assert_close(
        weightshare.prox(rows, torch.tensor([lam, 0.0], dtype=torch.float64), dim=1, method=method)[
            0
        ],
        want,
        **tol,
    )
    fused = weightshare.prox_many([x, rows[:, :-1]], lam, dim=-1, method=method)
    torch.testing.assert_close(fused[0], want, **tol)


@pytest.mark.req("PROX-21")
def test_huge_strength_examples() -> None:
    three = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    assert torch.equal(weightshare.prox(three, 1e17), torch.full((3,), 2.0, dtype=torch.float64))
    assert reference.prox_pava(three.numpy(), 1e17).tolist() == [2.0, 2.0, 2.0]
    v = torch.randn(100, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(weightshare.prox(v, 1e30), v.mean().expand(100), rtol=0, atol=1e-15)
    np.testing.assert_allclose(reference.prox(v[:10].numpy(), 1e300), v[:10].mean(), atol=1e-6)


@pytest.mark.req("PROX-6", "PROX-19")
@given(
    v=vectors(max_size=15),
    lam=st.floats(0, 5),
    mu=st.floats(0, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_l1_composition_is_optimal(v: np.ndarray, lam: float, mu: float, seed: int) -> None:
    assume(scale(v, lam) < 1e5)
    u = reference.soft_threshold(reference.prox_pava(v, lam), mu)
    perturbation_check(u, v, lam, mu, seed)
    t = weightshare.soft_threshold(weightshare.prox(torch.from_numpy(v), lam), mu)
    np.testing.assert_allclose(t.numpy(), u, rtol=0, atol=1e-9 * (scale(v, lam) + mu))


@pytest.mark.req("PROX-7")
@given(data=st.data(), d=st.integers(0, 30), lam=lams())
def test_nonexpansive(data: st.DataObject, d: int, lam: float) -> None:
    a = data.draw(vectors(min_size=d, max_size=d))
    b = data.draw(vectors(min_size=d, max_size=d))
    gap = np.linalg.norm(reference.prox_pava(a, lam) - reference.prox_pava(b, lam))
    assert gap <= np.linalg.norm(a - b) + 1e-9 * (scale(a, lam) + scale(b, lam))
    ta = weightshare.prox(torch.from_numpy(a), lam)
    tb = weightshare.prox(torch.from_numpy(b), lam)
    assert torch.linalg.norm(ta - tb).item() <= np.linalg.norm(a - b) + 1e-9 * (
        scale(a, lam) + scale(b, lam)
    )


# ---------------------------------------------------------------------------------------------
# The torch implementation against the reference.


@pytest.mark.req("PROX-10", "PROX-16")
@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("dtype", FLOATS)
@given(v=vectors(), lam=lams())
@with_device
def test_torch_matches_reference(
    v: np.ndarray, lam: float, dtype: torch.dtype, method: str, device: str
) -> None:
    need(method, device)
    x = torch.from_numpy(v).to(dtype=dtype, device=device)
    before = x.clone()
    got = weightshare.prox(x, lam, method=method)
    assert got.shape == x.shape and got.dtype == dtype and got.device == x.device
    assert torch.equal(x, before)
    assert_prox_close(got, x.double().cpu().numpy(), lam)


@pytest.mark.req("PROX-10")
@pytest.mark.parametrize("method", ("pava", "auto", "hull", "triton"))
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@given(v=vectors(kind="random"), lam=lams())
@with_device
def test_half_precision(
    v: np.ndarray, lam: float, dtype: torch.dtype, method: str, device: str
) -> None:
    need(method, device)
    x = torch.from_numpy(v).to(dtype=dtype, device=device)
    got = weightshare.prox(x, lam, method=method)
    assert got.dtype == dtype
    assert_prox_close(got, x.double().cpu().numpy(), lam)


@pytest.mark.req("PROX-10")
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("d", [1000, 300_000])
def test_long_vectors(d: int, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    from weightshare._isotonic import host as _prox_host

    rng = np.random.default_rng(d)
    v = rng.standard_normal(d) * 0.05
    v[: d // 10] = v[d // 10 : 2 * (d // 10)]  # exact ties
    v[-5:] = 1.0 + np.arange(5) * np.finfo(np.float64).eps  # near-ties (packed-key re-sort)
    x = torch.from_numpy(v).to(dtype)
    for lam in (1e-4, 1e-2):
        results = []
        for idle in (1.0, -1.0):  # host path with and without the split over threads
            monkeypatch.setattr(_prox_host, "_idle_cores", lambda idle=idle: idle)
            results.append(weightshare.prox(x, lam))
            assert_prox_close(results[-1], x.double().numpy(), lam)
        assert torch.equal(results[0], results[1])


@pytest.mark.req("PROX-11")
@pytest.mark.parametrize("method", ALL_METHODS)
def test_small_d_and_zero_lambda(method: str) -> None:
    need(method)
    p = lambda v, lam: weightshare.prox(torch.tensor(v, dtype=torch.float64), lam, method=method)  # noqa: E731
    assert p([], 1.0).shape == (0,)
    torch.testing.assert_close(p([3.0], 5.0), torch.tensor([3.0], dtype=torch.float64))
    torch.testing.assert_close(p([0.0, 1.0], 0.5), torch.tensor([0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(p([0.0, 1.0], 0.25), torch.tensor([0.25, 0.75], dtype=torch.float64))
    torch.testing.assert_close(p([1.0, 0.0], 2.0), torch.tensor([0.5, 0.5], dtype=torch.float64))
    v = [0.3, -1.0, 2.0, 0.3]
    torch.testing.assert_close(p(v, 0.0), torch.tensor(v, dtype=torch.float64), rtol=0, atol=0)
    zeros = p([-0.0, 0.0, 1.0], 0.1)
    assert zeros[0] == zeros[1]
    scalar = weightshare.prox(torch.tensor(2.0), 1.0)
    assert scalar.shape == () and scalar.item() == 2.0


@pytest.mark.req("PROX-12")
@pytest.mark.parametrize("method", ("pava", "auto", "hull", "triton"))
@pytest.mark.parametrize("dim", [0, 1, -1, None])
@given(b=batches(), lam=lams(), per_row=st.booleans())
@with_device
def test_batched_dim(
    b: np.ndarray, lam: float, per_row: bool, dim: int | None, method: str, device: str
) -> None:
    need(method, device)
    x = torch.from_numpy(b).to(device)
    if dim is None:
        got = weightshare.prox(x, lam, method=method)
        assert_prox_close(got, b.reshape(-1), lam)
        return
    moved = np.moveaxis(b, dim, -1)
    rows = moved.reshape(int(np.prod(moved.shape[:-1])), moved.shape[-1])
    lam_rows = np.linspace(0.0, lam, rows.shape[0]) if per_row else np.full(rows.shape[0], lam)
    lam_arg = torch.from_numpy(lam_rows).to(device) if per_row else lam
    got = weightshare.prox(x, lam_arg, dim=dim, method=method)
    assert got.shape == x.shape
    got_rows = got.movedim(dim, -1).reshape(rows.shape)
    for row, lam_row, out in zip(rows, lam_rows, got_rows, strict=True):
        assert_prox_close(out, row, float(lam_row))


@pytest.mark.req("PROX-12")
def test_lam_broadcasts_to_the_batch_shape() -> None:
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    lam = torch.tensor([[0.1], [2.0]], dtype=torch.float64)  # (2, 1) -> batch shape (2, 4)
    got = weightshare.prox(x, lam, dim=1)
    for i in range(2):
        for j in range(4):
            assert_prox_close(got[i, :, j], x[i, :, j].numpy(), float(lam[i, 0]))
    with pytest.raises(ValueError, match=r"\(3,\).*\(2, 4\)"):
        weightshare.prox(x, torch.ones(3), dim=1)


@pytest.mark.req("PROX-13")
@pytest.mark.parametrize("method", ("pava", "auto", "hull", "search", "rounds", "triton"))
@pytest.mark.parametrize("dim", [None, 1])
def test_prox_many(method: str, dim: int | None, device: str) -> None:
    need(method, device)
    g = torch.Generator().manual_seed(0)
    tensors = [
        torch.randn(6, 5, generator=g, dtype=torch.float64),
        torch.randn(3, 5, generator=g).to(torch.float32),
        torch.randn(4, 7, generator=g, dtype=torch.float64),
        torch.randn(1, 300_000, generator=g, dtype=torch.float64),
        torch.randn(2, 3, generator=g, dtype=torch.float64),
        torch.zeros(0, 3, dtype=torch.float64),
    ]
    if method not in ("pava", "auto") or device == "cuda":
        tensors[3] = tensors[3][:, :5000].contiguous()
    tensors = [t.to(device) for t in tensors]
    lams = [0.1, 0.5, torch.tensor(0.2, dtype=torch.float64, device=device), 1e-3, 0.0, 1.0]
    if dim == 1:
        lams[2] = torch.linspace(0, 1, 4, dtype=torch.float64, device=device)
    got = weightshare.prox_many(tensors, lams, dim, method=method)
    assert len(got) == len(tensors)
    for t, lam, out in zip(tensors, lams, got, strict=True):
        want = weightshare.prox(t, lam, dim, method="pava")
        assert out.shape == t.shape and out.dtype == t.dtype and out.device == t.device
        tol = 1e-9 * (t.abs().max().item() + float(torch.as_tensor(lam).max())) if t.numel() else 0
        if t.dtype == torch.float32:
            tol += 2e-7 * t.abs().max().item()
        torch.testing.assert_close(out, want, rtol=0, atol=tol)
    single = weightshare.prox_many(tensors[:3], 0.3, dim, method=method)
    for t, out in zip(tensors[:3], single, strict=True):
        tol = 1e-9 * (t.abs().max().item() + 0.3) + 2e-7 * (t.dtype == torch.float32)
        torch.testing.assert_close(out, weightshare.prox(t, 0.3, dim), rtol=0, atol=tol)


@pytest.mark.req("PROX-13", "PROX-9")
def test_prox_many_differentiable() -> None:
    a = torch.randn(5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    outs = weightshare.prox_many([a, b], [0.3, 0.1])
    (outs[0].sum() + (outs[1] ** 2).sum()).backward()
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    (weightshare.prox(a2, 0.3).sum() + (weightshare.prox(b2, 0.1) ** 2).sum()).backward()
    torch.testing.assert_close(a.grad, a2.grad)
    torch.testing.assert_close(b.grad, b2.grad)


@pytest.mark.req("PROX-14")
@pytest.mark.parametrize("dim", [None, 0])
def test_prox_in_place(dim: int | None, device: str) -> None:
    lin = torch.nn.Linear(7, 3, device=device)
    w = lin.weight
    before = w.detach().clone()
    ptr = w.data_ptr()
    assert weightshare.prox_(w, 0.05, dim) is w
    assert w.data_ptr() == ptr and not w.grad
    torch.testing.assert_close(w.detach(), weightshare.prox(before, 0.05, dim))
    strided = torch.randn(4, 6, dtype=torch.float64, device=device).t()
    want = weightshare.prox(strided, 0.2, 1)
    weightshare.prox_(strided, 0.2, 1)
    torch.testing.assert_close(strided, want)


@pytest.mark.req("PROX-14", "PROX-18")
def test_nothing_modified_on_error() -> None:
    w = torch.tensor([1.0, float("nan"), 3.0])
    snapshot = w.clone()
    with pytest.raises(ValueError, match="1 non-finite"):
        weightshare.prox_(w, 0.1)
    assert torch.equal(w.isnan(), snapshot.isnan()) and w[0] == 1.0 and w[2] == 3.0
    good = torch.tensor([1.0, 2.0, 3.0])
    for bad_call in (
        lambda: weightshare.prox_(good, -1.0),
        lambda: weightshare.prox_(good, 0.1, dim=3),
        lambda: weightshare.prox_(good, 0.1, method="nope"),
        lambda: weightshare.prox_many([good, w], 0.1),
    ):
        with pytest.raises((ValueError, IndexError)):
            bad_call()
        assert torch.equal(good, torch.tensor([1.0, 2.0, 3.0]))


def margin(v: np.ndarray, lam: float) -> float:
    """Distance from the non-smooth set: adjacent clusters about to merge or a cluster about to
    split (a proper prefix of its z with mean equal to the cluster mean)."""
    d = v.size
    if d < 2:
        return np.inf
    z = np.sort(v) - lam * (2 * np.arange(1, d + 1) - d - 1) / (d - 1)
    u = reference.pava(z)
    gaps = [np.inf, *np.diff(u)[np.diff(u) > 0]]
    starts = np.flatnonzero(np.concatenate([[True], np.diff(u) > 0]))
    for a, b in zip(starts, [*starts[1:], d], strict=True):
        prefix_means = np.cumsum(z[a:b])[:-1] / np.arange(1, b - a)
        gaps.extend(prefix_means - u[a])
    return float(min(gaps))


@pytest.mark.req("PROX-9")
@pytest.mark.parametrize("method", ("pava", "auto", "hull", "triton"))
@settings(max_examples=10, deadline=None)
@given(v=vectors(min_size=1, max_size=12, kind="random"), lam=st.floats(0.01, 3.0))
def test_gradcheck(v: np.ndarray, lam: float, method: str) -> None:
    need(method)
    assume(margin(v, lam) > 1e-4)  # finite differences must not cross a kink
    x = torch.from_numpy(v).requires_grad_(True)
    lam_t = torch.tensor(lam, dtype=torch.float64, requires_grad=True)
    f = lambda x, lam_t: weightshare.prox(x, lam_t, method=method)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, lam_t), eps=1e-7, atol=1e-5)


@pytest.mark.req("PROX-9")
@given(v=vectors(min_size=1, max_size=20), lam=lams())
def test_jacobian_averages_within_clusters(v: np.ndarray, lam: float) -> None:
    x = torch.from_numpy(v)
    jac = torch.autograd.functional.jacobian(lambda t: weightshare.prox(t, lam), x).numpy()
    labels = reference.clusters(reference.prox_pava(v, lam)) if lam > 0 else np.arange(v.size)
    same = labels[:, None] == labels[None, :]
    want = same / same.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(jac, want, rtol=0, atol=1e-12)


@pytest.mark.req("PROX-15")
@pytest.mark.parametrize("dim", [None, 0, 1])
@given(b=batches())
@with_device
def test_clusters(b: np.ndarray, dim: int | None, device: str) -> None:
    x = torch.from_numpy(b).to(device)
    got = weightshare.clusters(x, dim)
    assert got.dtype == torch.int64 and got.shape == x.shape
    if dim is None:
        np.testing.assert_array_equal(
            got.cpu().numpy().reshape(-1), reference.clusters(b.reshape(-1))
        )
        return
    moved = np.moveaxis(b, dim, -1)
    shape = (int(np.prod(moved.shape[:-1])), moved.shape[-1])
    got_rows = got.movedim(dim, -1).cpu().numpy().reshape(shape)
    for row, labels in zip(moved.reshape(shape), got_rows, strict=True):
        np.testing.assert_array_equal(labels, reference.clusters(row))


@pytest.mark.req("PROX-15")
def test_clusters_convention() -> None:
    np.testing.assert_array_equal(
        reference.clusters([0.5, -1.0, 0.5, 2.0, -0.0, 0.0]), [2, 0, 2, 3, 1, 1]
    )
    got = weightshare.clusters(torch.tensor([0.5, -1.0, 0.5, 2.0, -0.0, 0.0]))
    assert got.tolist() == [2, 0, 2, 3, 1, 1]


@pytest.mark.req("PROX-16")
def test_auto_rule_and_method_names() -> None:
    cpu = torch.zeros(3)
    assert _methods.resolve_method("auto", cpu) == "pava"
    assert _methods.resolve_method("search", cpu) == "search"
    seen: list[str] = []

    def record(x: torch.Tensor) -> torch.Tensor:
        seen.append(_methods.resolve_method("auto", x))
        return x

    torch.func.vmap(record)(torch.zeros(2, 3))
    fallback = next((m for m in ("hull", "search", "rounds") if _methods.available(m)), "pava")
    assert seen == [fallback]
    with pytest.raises(ValueError, match="pava, rounds, search, hull, triton, auto"):
        weightshare.prox(cpu, 0.1, method="fast")


@pytest.mark.req("PROX-16")
def test_auto_rule_on_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    x = torch.zeros(2, 3, device="cuda")
    want = "triton" if _methods.available("triton") else "search"
    assert _methods.resolve_method("auto", x) == want
    seen: list[str] = []

    def record(row: torch.Tensor) -> torch.Tensor:
        seen.append(_methods.resolve_method("auto", row))
        return row

    torch.func.vmap(record)(x)  # the Triton custom ops have no batching rule
    assert seen == ["search"]
    mapped = torch.func.vmap(lambda row: weightshare.prox(row, 0.3))(x + torch.rand_like(x))
    assert mapped.shape == x.shape


@pytest.mark.req("PROX-17")
def test_validation_then_unchecked() -> None:
    bad = torch.tensor([1.0, float("inf"), float("nan"), 0.0])
    with pytest.raises(ValueError, match="2 non-finite"):
        weightshare.prox(bad, 0.1)
    assert _prox.prox_unchecked(torch.tensor([0.0, 1.0]), 0.25, None, "pava").tolist() == [
        0.25,
        0.75,
    ]
    lam = torch.tensor([0.1, float("nan"), -1.0])
    with pytest.raises(ValueError, match="lam has 1 non-finite"):
        weightshare.prox(torch.zeros(3, 2), lam, dim=1)
    with pytest.raises(ValueError, match="lam has 1 negative"):
        weightshare.prox(torch.zeros(3, 2), lam.nan_to_num(0.0), dim=1)


@pytest.mark.req("PROX-17")
def test_validation_skipped_in_transforms() -> None:
    flags: list[bool] = []

    def record(x: torch.Tensor) -> torch.Tensor:
        flags.append(checks.should_validate(x))
        return x

    torch.func.vmap(record)(torch.zeros(2, 3))
    assert flags == [False]
    assert checks.should_validate(torch.zeros(3))

    def compiled(x: torch.Tensor) -> torch.Tensor:
        return x + 1 if checks.should_validate(x) else x - 1

    out = torch.compile(compiled, backend="eager", fullgraph=True)(torch.zeros(2))
    assert out.tolist() == [-1.0, -1.0]


@pytest.mark.req("PROX-17")
@pytest.mark.parametrize("method", ("search", "hull", "triton"))
def test_unchecked_pipeline_has_no_host_sync(method: str) -> None:
    need(method)
    from torch.utils._python_dispatch import TorchDispatchMode

    syncs = {"_local_scalar_dense", "item", "nonzero", "is_nonzero", "equal"}
    seen: list[str] = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            name = func.__name__.split(".")[0]
            if name in syncs:
                seen.append(name)
            return func(*args, **(kwargs or {}))

    x = torch.from_numpy(chain(64, 1.0))
    with Spy():
        _prox.prox_unchecked(x, 1.0, None, method)
    assert seen == []


@pytest.mark.req("PROX-18")
def test_torch_errors() -> None:
    x = torch.ones(3)
    for fn in (
        lambda t: weightshare.prox(t, 0.1),
        lambda t: weightshare.prox_(t, 0.1),
        lambda t: weightshare.prox_many([t], 0.1),
        lambda t: weightshare.clusters(t),
        lambda t: weightshare.soft_threshold(t, 0.1),
    ):
        for bad in (
            torch.arange(3),
            torch.ones(3, dtype=torch.bool),
            torch.ones(3, dtype=torch.complex64),
        ):
            with pytest.raises(TypeError, match="floating"):
                fn(bad)
        with pytest.raises(ValueError, match="1 non-finite"):
            fn(torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match=">= 0"):
        weightshare.prox(x, -0.5)
    with pytest.raises(ValueError, match="finite"):
        weightshare.prox(x, float("nan"))
    with pytest.raises(ValueError, match="finite"):
        weightshare.prox(x, float("inf"))
    with pytest.raises(TypeError, match="float or a tensor"):
        weightshare.prox(x, "0.1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="real"):
        weightshare.prox(x, torch.tensor(1j))
    with pytest.raises(ValueError, match="does not broadcast"):
        weightshare.prox(x, torch.ones(3))
    with pytest.raises(IndexError, match=r"dim -3 .*shape \(3,\)"):
        weightshare.prox(x, 0.1, dim=-3)
    with pytest.raises(IndexError, match="dim 1"):
        weightshare.clusters(x, 1)
    with pytest.raises(ValueError, match="2 entries for 3 tensors"):
        weightshare.prox_many([x, x, x], [0.1, 0.2])
    with pytest.raises(ValueError, match="unknown method"):
        weightshare.prox_many([x], 0.1, method="auto2")
    with pytest.raises(ValueError, match=">= 0"):
        weightshare.soft_threshold(x, -1.0)
    with pytest.raises(ValueError, match="negative"):
        weightshare.soft_threshold(x, torch.tensor([-1.0, 0.0, 0.0]))


@pytest.mark.req("PROX-18")
def test_reference_errors() -> None:
    for fn in (
        lambda v: reference.prox_pava(v, 0.1),
        lambda v: reference.prox_particles(v, 0.1),
        lambda v: reference.prox(v, 0.1),
        reference.pava,
        reference.isotonic,
        reference.clusters,
        lambda v: reference.soft_threshold(v, 0.1),
    ):
        with pytest.raises(ValueError, match="1 non-finite"):
            fn(np.array([1.0, np.inf]))
        with pytest.raises(ValueError, match="1-D"):
            fn(np.ones((2, 2)))
        with pytest.raises((TypeError, ValueError), match="float"):
            fn(np.arange(3))
    for lam in (-1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="lam"):
            reference.prox_pava(np.ones(3), lam)
    with pytest.raises(ValueError, match="d <= 100"):
        reference.prox(np.zeros(101), 0.1)


@pytest.mark.req("PROX-19")
@given(v=vectors(), t=st.floats(0, 20))
def test_soft_threshold(v: np.ndarray, t: float) -> None:
    want = np.sign(v) * np.maximum(np.abs(v) - t, 0.0)
    np.testing.assert_array_equal(reference.soft_threshold(v, t), want)
    x = torch.from_numpy(v).requires_grad_(True)
    got = weightshare.soft_threshold(x, t)
    np.testing.assert_array_equal(got.detach().numpy(), want)
    got.sum().backward()
    smooth = np.abs(v) != t  # at |w| = t any value in [0, 1] is a subgradient
    np.testing.assert_array_equal(x.grad.numpy()[smooth], (np.abs(v) > t)[smooth].astype(float))
    per_entry = weightshare.soft_threshold(x.detach().float(), torch.full(v.shape, t))
    assert per_entry.dtype == torch.float32


@pytest.mark.req("PROX-13", "PROX-24", "ALG-15", "ALG-18")
@pytest.mark.parametrize("method", ("hull", "search", "rounds", "triton"))
def test_prox_many_is_one_pass_per_dtype(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    need(method)
    from weightshare import _isotonic

    g = torch.Generator().manual_seed(1)
    tensors = [
        torch.randn(*shape, generator=g, dtype=torch.float64)
        for shape in [(4, 9), (17,), (2, 3), (1,), (40,), (3,)]
    ]
    tensors.append(torch.randn(5, generator=g))  # a second dtype: a second pass
    lams = [0.4, 3.0, 0.0, 1.0, 0.2, 0.5, 0.2]
    found = _isotonic.backend(method)
    real, shapes = found.isotonic, []

    def counting(y: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(y.shape))
        return real(y)

    monkeypatch.setattr(found, "isotonic", counting)
    with _OpNames() as mode:
        got = weightshare.prox_many(tensors, lams, method=method)
    names = mode.names
    # float64: one flat sort and its stable partition (two sorts) for the lengths 36, 17, 40, 3
    # (length 1 and strength 0 are copies); float32: one sort, or one fused op ("triton")
    passes = [n for n in names if n in ("aten.sort", "weightshare.prox_rows_triton")]
    assert len(passes) == 3, names
    # the kernel once per group of length classes, never padded to the longest: 36 and 40 share a
    # class, 17 joins them (3 x 40 padded values for 93 real ones: within 1.5x), 3 does not
    # (4 x 40 for 96); float32 once more (inside the fused op for "triton")
    if method == "triton":  # one tiled pass over the concatenated segments (ALG-18)
        assert shapes == []
    else:
        assert sorted(shapes) == [(1, 3), (1, 5), (3, 40)]
    for t, lam, out in zip(tensors, lams, got, strict=True):
        tol = 1e-9 * (t.abs().max().item() + lam) + 2e-7 * (t.dtype == torch.float32)
        torch.testing.assert_close(out, weightshare.prox(t, lam, method="pava"), rtol=0, atol=tol)


class _OpNames(TorchDispatchMode):
    """Records the name of every op dispatched inside the block (custom ops stay opaque)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.names.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def _ragged_close(got: torch.Tensor, t: torch.Tensor, lam: checks.Lam, dim: int | None) -> None:
    """``got`` is the prox of ``t`` (PROX-10 scale, the host reference)."""
    want = weightshare.prox(t, lam, dim, method="pava")
    assert got.shape == t.shape and got.dtype == t.dtype and got.device == t.device
    lam_max = float(torch.as_tensor(lam).max()) if t.numel() else 0.0
    tol = 1e-9 * (t.abs().max().item() + lam_max) if t.numel() else 0.0
    if t.dtype == torch.float32:
        tol += 4e-7 * (t.abs().max().item() + lam_max)
    torch.testing.assert_close(got, want, rtol=0, atol=tol)


@pytest.mark.req("PROX-13", "PROX-24")
@pytest.mark.parametrize("method", ("pava", "rounds", "search", "hull", "triton", "auto"))
def test_ragged_batches(method: str, device: str) -> None:
    """A length-1 tensor among long ones, many short rows, mixed dims and strengths, one pass."""
    need(method, device)
    g = torch.Generator().manual_seed(5)

    def randn(*shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device, dtype)

    ties = torch.randint(-2, 3, (3, 40), generator=g).to(device, torch.float64)
    cases: list[tuple[torch.Tensor, checks.Lam, int | None]] = [
        (randn(1), 0.3, None),  # a length-1 tensor among long ones
        (randn(700), 0.05, None),
        (randn(60, 3), torch.linspace(0, 2, 60, dtype=torch.float64, device=device), 1),
        (randn(5, 2), 0.7, 1),  # many short rows
        (randn(4, 33), 0.0, None),  # the identity, exactly (PROX-11)
        (randn(2, 100), 1e9, 1),  # huge strength: each row's mean (PROX-21)
        (ties, torch.tensor([0.5, 0.0, 3.0], dtype=torch.float64, device=device), 1),
        (randn(3, 1, 5), 0.2, 0),  # a dim of length 3
        (randn(1, 1), torch.tensor(2.0, dtype=torch.float64, device=device), None),
        (-randn(2, 64).abs() * 0.0, 0.4, None),  # all -0.0 and 0.0
    ]
    tensors = [t for t, _, _ in cases]
    lams = [lam for _, lam, _ in cases]
    dims = [dim for _, _, dim in cases]
    got = _prox.prox_many_unchecked(tensors, lams, dims, method)
    for (t, lam, dim), out in zip(cases, got, strict=True):
        _ragged_close(out, t, lam, dim)
    assert torch.equal(got[4], tensors[4])  # strength 0
    assert torch.equal(got[0], tensors[0])  # d = 1
    # float32 in the same call: a second group of its own
    halves = [randn(300, dtype=torch.float32), randn(7, 9, dtype=torch.float32), randn(1)]
    got = _prox.prox_many_unchecked(halves, [0.1, 0.2, 0.3], [None, 1, None], method)
    for t, lam, dim, out in zip(halves, [0.1, 0.2, 0.3], [None, 1, None], got, strict=True):
        _ragged_close(out, t, lam, dim)


class _Work(TorchDispatchMode):
    """Counts the elements every dispatched op writes (a machine-independent measure of work)."""

    def __init__(self) -> None:
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor) and func.overloadpacket not in _VIEWS:
                self.elements += t.numel()
        return out


_VIEWS = {
    torch.ops.aten.view,
    torch.ops.aten._unsafe_view,
    torch.ops.aten.reshape,
    torch.ops.aten.expand,
    torch.ops.aten.slice,
    torch.ops.aten.select,
    torch.ops.aten.split,
    torch.ops.aten.split_with_sizes,
    torch.ops.aten.unsqueeze,
    torch.ops.aten.squeeze,
    torch.ops.aten.t,
    torch.ops.aten.permute,
    torch.ops.aten.transpose,
    torch.ops.aten.as_strided,
    torch.ops.aten.alias,
    torch.ops.aten.detach,
    torch.ops.aten.unbind,
}


@pytest.mark.req("PROX-24", "ALG-15")
@pytest.mark.parametrize("method", ("hull", "search"))
def test_ragged_work_bound(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``prox_many`` of ResNet-50's weight shapes (scaled down 16x) costs at most 2.5x one prox of
    their concatenation: in values given to the isotonic kernel and in elements written by ops."""
    from conformance.benchmarks import gpu
    from weightshare import _isotonic

    g = torch.Generator().manual_seed(0)
    shapes = gpu.resnet50_weight_shapes(scale=16)
    tensors = [torch.randn(s, generator=g) for s in shapes]
    concatenation = torch.cat([t.reshape(-1) for t in tensors])
    found = _isotonic.backend(method)
    real = found.isotonic
    given: list[int] = []

    def counting(y: torch.Tensor) -> torch.Tensor:
        given.append(y.numel())
        return real(y)

    monkeypatch.setattr(found, "isotonic", counting)
    measured = []
    for batch in (tensors, [concatenation]):
        given.clear()
        with _Work() as work:
            weightshare.prox_many(batch, 1e-3, method=method)
        measured.append((sum(given), work.elements))
    (ragged, ragged_ops), (one, one_ops) = measured
    assert one == concatenation.numel()
    assert ragged <= 2.5 * one, (ragged, one)
    assert ragged_ops <= 2.5 * one_ops, (ragged_ops, one_ops)
    got = weightshare.prox_many(tensors[:6], 1e-3, method=method)
    for t, out in zip(tensors[:6], got, strict=True):
        _ragged_close(out, t, 1e-3, None)


@pytest.mark.req("PROX-20")
def test_one_vocabulary_for_non_finite_values() -> None:
    bad = torch.tensor([[1.0, float("nan")], [float("inf"), 0.0]])
    lin = torch.nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(bad)
    calls = {
        "prox": lambda: weightshare.prox(bad, 0.1),
        "prox_many": lambda: weightshare.prox_many([bad], 0.1),
        "penalty": lambda: weightshare.penalty(bad),
        "clusters": lambda: weightshare.clusters(bad),
        "soft_threshold": lambda: weightshare.soft_threshold(bad, 0.1),
        "num_distinct": lambda: weightshare.num_distinct(bad),
        "tie": lambda: weightshare.tie(lin),
        "symmetry.project": lambda: weightshare.symmetry.project("symmetric", bad),
        "factorization.product": lambda: weightshare.factorization.product([bad, bad]),
        "reference.prox": lambda: reference.prox(bad.numpy().ravel(), 0.1),
        "reference.penalty": lambda: reference.penalty(bad.numpy().ravel()),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=r"has 2 non-finite value\(s\) \(NaN or inf\)"):
            call()
        assert torch.equal(lin.weight.detach().isnan(), bad.isnan()), name  # nothing changed


@pytest.mark.req("PROX-20")
def test_one_vocabulary_for_strengths_and_dtypes() -> None:
    v = torch.tensor([0.0, 1.0, 3.0])
    for call in (
        lambda lam: weightshare.prox(v, lam),
        lambda lam: weightshare.prox_many([v], lam),
        lambda lam: reference.prox(v.numpy(), lam),
    ):
        with pytest.raises(ValueError, match=r"lam.* must be >= 0, got -1\.0"):
            call(-1.0)
        with pytest.raises(ValueError, match="must be finite, got nan"):
            call(float("nan"))
    with pytest.raises(ValueError, match=r"lam has 1 negative value\(s\); need >= 0"):
        weightshare.prox(torch.ones(2, 3), torch.tensor([1.0, -1.0]), dim=1)
    for call in (
        lambda: weightshare.prox(torch.arange(3), 0.1),
        lambda: weightshare.penalty(torch.arange(3)),
        lambda: weightshare.num_distinct(torch.arange(3)),
        lambda: reference.penalty(np.arange(3)),
    ):
        with pytest.raises(TypeError, match="must have a real floating dtype, got"):
            call()


@pytest.mark.req("PROX-20")
def test_numpy_strengths_and_the_sequence_arguments_of_prox_many() -> None:
    v = torch.tensor([0.0, 0.1, 1.0])
    want = weightshare.prox(v, 0.2)
    for lam in (np.float32(0.2), np.float64(0.2), np.array(0.2)[()]):
        assert torch.equal(weightshare.prox(v, lam), want)
        assert torch.equal(weightshare.prox_many([v], lam)[0], want)
        assert torch.equal(weightshare.prox_many([v, v], [lam, 0.2])[0], want)
    with pytest.raises(TypeError, match="lams must be a float, a tensor or a sequence"):
        weightshare.prox_many([v], None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="lams must be a float, a tensor or a sequence"):
        weightshare.prox_many([v], "0.1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="lam must be a float or a tensor"):
        weightshare.prox(v, True)
    with pytest.raises(TypeError, match=r"one tensor of shape \(2, 3\); wrap it in a list"):
        weightshare.prox_many(torch.ones(2, 3), 0.1)


@pytest.mark.req("PROX-20")
def test_one_dim_rule() -> None:
    scalar = torch.tensor(2.0)
    for dim in (0, -1, None):
        assert torch.equal(weightshare.prox(scalar, 0.5, dim=dim), scalar)
    p = torch.nn.Parameter(torch.tensor(2.0))
    opt = torch.optim.SGD([p], lr=0.1)
    handle = weightshare.attach(opt, 0.5, params=[p], dim=-1)  # the same rule as prox
    handle.remove()
    for call in (
        lambda: weightshare.prox(torch.ones(3), 0.1, dim=1),
        lambda: weightshare.attach(opt, 0.5, params=[p], dim=1),
    ):
        with pytest.raises(IndexError, match=r"dim 1 is out of range .*shape \(\)|shape \(3,\)"):
            call()


@pytest.mark.req("PROX-22")
@pytest.mark.parametrize("method", ALL_METHODS)
def test_negative_bit_views_are_their_values(method: str) -> None:
    need(method)
    x = torch.randn(3, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    neg = torch._neg_view(x)
    assert neg.is_neg()
    for dim in (None, 1):
        want = weightshare.prox(-x, 0.2, dim, method=method)
        assert torch.equal(weightshare.prox(neg, 0.2, dim, method=method), want)
        assert torch.equal(weightshare.prox_many([neg], 0.2, dim, method=method)[0], want)
    assert torch.equal(weightshare.clusters(neg), weightshare.clusters(-x))


@pytest.mark.req("PROX-22")
def test_meta_vmap_and_compile_with_pava() -> None:
    meta = torch.empty(4, 6, device="meta")
    out = weightshare.prox(meta, 0.2, dim=1)  # "auto": "hull", no validation
    assert out.device.type == "meta" and out.shape == meta.shape
    for call in (
        lambda: weightshare.prox(meta, 0.2, method="pava"),
        lambda: weightshare.prox_many([meta], 0.2, method="pava"),
    ):
        with pytest.raises(TypeError, match=r"method='pava'.*meta tensor.*method='hull'"):
            call()
    x = torch.randn(3, 6)
    want = weightshare.prox(x, 0.2, dim=1)
    with pytest.raises(ValueError, match=r"method='pava'.*vmap.*method='auto'"):
        torch.func.vmap(lambda t: weightshare.prox(t, 0.2, method="pava"))(x)
    torch.testing.assert_close(torch.func.vmap(lambda t: weightshare.prox(t, 0.2))(x), want)
    grad = torch.func.grad(lambda t: weightshare.prox(t, 0.2, method="pava").sum())(x[0])
    torch.testing.assert_close(grad, torch.ones(6))
    torch._dynamo.reset()
    compiled = torch.compile(lambda t: weightshare.prox(t, 0.2, method="pava"), fullgraph=True)
    with pytest.raises(RuntimeError, match=r"method='pava' runs in NumPy, which torch\.compile"):
        compiled(x[0])
