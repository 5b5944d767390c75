"""Conformance of weight symmetry (spec page symmetry.md, ids SYM-n)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import weightshare as ws
from weightshare import symmetry as acc
from weightshare.reference import symmetry as ref

# (kind, shape, kind keywords): odd and even sizes, matrices and conv weights
CASES = [
    ("symmetric", (4, 4), {}),
    ("symmetric", (5, 5, 2), {}),
    ("channel", (3, 3, 3, 3), {}),
    ("channel", (4, 4, 2), {}),
    ("spatial", (2, 3, 3, 3), {}),
    ("spatial", (1, 2, 4, 4), {}),
    ("quarter", (4, 4), {}),
    ("quarter", (5, 5, 2, 1), {}),
    ("eightfold", (6, 6), {}),
    ("eightfold", (5, 5), {}),
    ("block4", (4, 4), {}),
    ("block4", (5, 3, 2), {}),
    ("chunk", (6, 3), {"chunks": 3}),
    ("chunk", (2, 3, 4, 4), {"chunks": 2, "dim": -1}),
    ("channel+spatial", (3, 3, 3, 3), {}),
    ("quarter+chunk", (4, 4, 2), {"chunks": 2, "dim": 2}),
    ("chunk", (8, 3), {"chunks": 8}),
    ("eightfold+chunk", (6, 6), {"chunks": 3, "dim": 1}),
]
LINEAR_IDS = [f"{k}-{'x'.join(map(str, s))}" for k, s, _ in CASES]
EIGEN = [((4, 4), 2), ((5, 5, 2), 1), ((3, 3, 2, 2), 3)]


def _flip(W: np.ndarray, axis: int) -> np.ndarray:
    return np.flip(W, axis=axis)


def _equations(kind: str, W: np.ndarray, kw: dict) -> list[np.ndarray]:
    """Each symmetry equation of the spec as (left - right), independent of the tables."""
    T = W.swapaxes(0, 1)
    out = []
    for part in kind.split("+"):
        if part in ("symmetric", "channel"):
            out.append(W - T)
        elif part == "quarter":
            out += [W - T, W - _flip(_flip(T, 0), 1)]
        elif part == "eightfold":
            out += [W - T, W - _flip(W, 0), W - _flip(W, 1)]
        elif part == "block4":
            out += [W - _flip(W, 0), W - _flip(W, 1)]
        elif part == "spatial":
            out.append(W - W.swapaxes(2, 3))
        elif part == "chunk":
            dim, c = kw.get("dim", 0) % W.ndim, kw["chunks"]
            first = np.take(W, range(W.shape[dim] // c), axis=dim)
            out.append(W - np.concatenate([first] * c, axis=dim))
    return out


def _data(shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    elements = st.floats(-10, 10, allow_nan=False, allow_infinity=False, allow_subnormal=False)
    return hnp.arrays(np.float64, shape, elements=elements)


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


@pytest.mark.req("SYM-3", "SYM-6")
@pytest.mark.parametrize(("kind", "shape", "kw"), CASES, ids=LINEAR_IDS)
def test_tables_match_and_follow_the_slot_convention(kind, shape, kw) -> None:
    H = ref.table(kind, shape, **kw)
    np.testing.assert_array_equal(acc.table(kind, shape, **kw).numpy(), H)
    slots, first = np.unique(H.ravel(), return_index=True)
    np.testing.assert_array_equal(slots, np.arange(ref.num_free(kind, shape, **kw)))
    assert np.all(np.diff(first) > 0), "slots must be ordered by their smallest flat index"


@pytest.mark.req("SYM-1")
@pytest.mark.parametrize(("kind", "shape", "kw"), CASES, ids=LINEAR_IDS)
@settings(max_examples=5)
@given(data=st.data())
def test_built_weights_satisfy_the_symmetry_equations(kind, shape, kw, data) -> None:
    f = data.draw(_data((ref.num_free(kind, shape, **kw),)))
    for W in (ref.build(kind, f, shape, **kw), acc.build(kind, _t(f), shape, **kw).numpy()):
        assert W.shape == shape
        for residual in _equations(kind, W, kw):
            assert np.array_equal(residual, np.zeros_like(residual))


def _build_matrix(kind: str, shape: tuple[int, ...], kw: dict) -> np.ndarray:
    F = ref.num_free(kind, shape, **kw)
    return np.stack([ref.build(kind, np.eye(F)[k], shape, **kw).ravel() for k in range(F)], 1)


@pytest.mark.req("SYM-2")
@pytest.mark.parametrize("kind", ["symmetric", "quarter", "eightfold", "block4"])
@pytest.mark.parametrize("n", range(1, 8))
def test_num_free_is_the_rank_of_the_build_map(kind, n) -> None:
    for shape in ((n, n), (n, n, 2)):
        F = ref.num_free(kind, shape)
        assert F == acc.num_free(kind, shape)
        assert F == int(ref.table(kind, shape).max()) + 1
        assert np.linalg.matrix_rank(_build_matrix(kind, shape, {})) == F
    # the closed forms of the spec, written out here independently
    h = (n + 1) // 2
    expect = {
        "symmetric": n * (n + 1) // 2,
        "quarter": n * (n + 2) // 4 if n % 2 == 0 else (n + 1) ** 2 // 4,
        "eightfold": (n // 2) * (n // 2 + 1) // 2 if n % 2 == 0 else (n + 1) * (n + 3) // 8,
        "block4": h * h,
    }[kind]
    assert ref.num_free(kind, (n, n)) == expect
    assert ref.num_free(kind, (n, n, 3)) == 3 * expect


@pytest.mark.req("SYM-2", "SYM-12")
@pytest.mark.parametrize(("kind", "shape", "kw"), CASES, ids=LINEAR_IDS)
def test_num_free_is_the_rank_for_every_case(kind, shape, kw) -> None:
    F = ref.num_free(kind, shape, **kw)
    assert F == acc.num_free(kind, shape, **kw)
    assert np.linalg.matrix_rank(_build_matrix(kind, shape, kw)) == F


@pytest.mark.req("SYM-12")
def test_combined_kinds_generate_the_joint_group() -> None:
    n, k = 4, 3
    assert ref.num_free("channel+spatial", (n, n, k, k)) == n * (n + 1) // 2 * k * (k + 1) // 2
    for n in (4, 5):
        np.testing.assert_array_equal(
            ref.table("symmetric+block4", (n, n)), ref.table("eightfold", (n, n))
        )


@pytest.mark.req("SYM-4")
@pytest.mark.parametrize(("kind", "shape", "kw"), CASES, ids=LINEAR_IDS)
@settings(max_examples=5)
@given(data=st.data())
def test_project_is_an_orthogonal_projection(kind, shape, kw, data) -> None:
    W, X = data.draw(_data(shape)), data.draw(_data(shape))
    P = ref.project(kind, W, **kw)
    np.testing.assert_allclose(ref.project(kind, P, **kw), P, rtol=1e-12, atol=1e-12)
    inner = np.vdot(W - P, ref.project(kind, X, **kw))
    assert abs(inner) <= 1e-9 * (1 + np.abs(W).sum() * np.abs(X).sum())
    f = data.draw(_data((ref.num_free(kind, shape, **kw),)))
    np.testing.assert_allclose(ref.free(kind, ref.build(kind, f, shape, **kw), **kw), f, atol=1e-12)
    # the projector equals the least-squares map B B^+ of the build matrix
    B = _build_matrix(kind, shape, kw)
    np.testing.assert_allclose(P.ravel(), B @ np.linalg.lstsq(B, W.ravel())[0], atol=1e-9)


@pytest.mark.req("SYM-6")
@pytest.mark.parametrize(("kind", "shape", "kw"), CASES, ids=LINEAR_IDS)
@settings(max_examples=5)
@given(data=st.data())
def test_reference_and_torch_agree(kind, shape, kw, data) -> None:
    W = data.draw(_data(shape))
    f = data.draw(_data((ref.num_free(kind, shape, **kw),)))
    tol = {"rtol": 1e-12, "atol": 1e-12}
    np.testing.assert_allclose(acc.free(kind, _t(W), **kw).numpy(), ref.free(kind, W, **kw), **tol)
    np.testing.assert_allclose(
        acc.project(kind, _t(W), **kw).numpy(), ref.project(kind, W, **kw), **tol
    )
    np.testing.assert_array_equal(
        acc.build(kind, _t(f), shape, **kw).numpy(), ref.build(kind, f, shape, **kw)
    )


@pytest.mark.req("SYM-5", "SYM-6")
@pytest.mark.parametrize(("shape", "rank"), EIGEN)
@settings(max_examples=5)
@given(data=st.data())
def test_eigen_is_the_best_low_rank_symmetric_weight(shape, rank, data) -> None:
    n, taps = shape[0], math.prod(shape[2:])
    assert ref.num_free("eigen", shape, rank=rank) == taps * rank * (n + 1)
    assert acc.num_free("eigen", shape, rank=rank) == taps * rank * (n + 1)
    W = data.draw(_data(shape))
    P = ref.project("eigen", W, rank=rank)
    Pt = acc.project("eigen", _t(W), rank=rank).numpy()
    np.testing.assert_allclose(ref.project("eigen", P, rank=rank), P, atol=1e-8)
    S = W.reshape(n, n, -1).transpose(2, 0, 1)
    S = (S + S.transpose(0, 2, 1)) / 2
    # the best rank-r weight is unique only when the r-th and (r+1)-th largest |eigenvalue|
    # differ; on a tie (e.g. +1.25 and -1.25) either choice is optimal, so compare errors
    mags = np.sort(np.abs(np.linalg.eigvalsh(S)), axis=1)
    unique = rank == n or bool(np.all(mags[:, n - rank] - mags[:, n - rank - 1] > 1e-9))
    if unique:
        np.testing.assert_allclose(Pt, P, rtol=1e-9, atol=1e-9)
    taps_ref, taps_acc = (A.reshape(n, n, -1).transpose(2, 0, 1) for A in (P, Pt))
    for t, (P_, Q_) in enumerate(zip(taps_ref, taps_acc, strict=True)):
        np.testing.assert_allclose(np.linalg.norm(S[t] - Q_), np.linalg.norm(S[t] - P_), atol=1e-8)
    for t, Pt_ in enumerate(P.reshape(n, n, -1).transpose(2, 0, 1)):
        np.testing.assert_allclose(Pt_, Pt_.T, atol=1e-12)
        assert np.linalg.matrix_rank(Pt_, tol=1e-8) <= rank
        # Eckart-Young: the error is the norm of the dropped eigenvalues
        lam = np.sort(np.abs(np.linalg.eigvalsh(S[t])))
        np.testing.assert_allclose(
            np.linalg.norm(S[t] - Pt_), np.linalg.norm(lam[: n - rank]), atol=1e-8
        )
    f = data.draw(_data((taps * rank * (n + 1),)))
    np.testing.assert_allclose(
        acc.build("eigen", _t(f), shape, rank=rank).numpy(),
        ref.build("eigen", f, shape, rank=rank),
        rtol=1e-12,
        atol=1e-9,
    )


@pytest.mark.req("SYM-5")
@pytest.mark.parametrize(("n", "rank"), [(4, 1), (4, 2), (5, 3), (3, 3)])
def test_eigen_jacobian_rank_is_the_manifold_dimension(n, rank) -> None:
    gen = torch.Generator().manual_seed(n * 10 + rank)
    f = torch.randn(rank * (n + 1), dtype=torch.float64, generator=gen)
    J = torch.autograd.functional.jacobian(lambda v: acc.build("eigen", v, (n, n), rank=rank), f)
    J = J.reshape(n * n, -1).numpy()
    assert np.linalg.matrix_rank(J, tol=1e-9) == rank * n - rank * (rank - 1) // 2


def _linear(n: int, dtype=torch.float64) -> torch.nn.Module:
    torch.manual_seed(n)
    return torch.nn.Linear(n, n, dtype=dtype)


@pytest.mark.req("SYM-7")
@pytest.mark.parametrize(
    ("make", "kind", "kw"),
    [
        (lambda: _linear(5), "symmetric", {}),
        (lambda: _linear(4), "eigen", {"rank": 2}),
        (lambda: torch.nn.Conv2d(4, 4, 3, dtype=torch.float64), "channel", {}),
        (lambda: torch.nn.Conv2d(2, 3, 3, dtype=torch.float64), "spatial", {}),
        (lambda: torch.nn.Conv2d(5, 5, 3, dtype=torch.float64), "eightfold+spatial", {}),
        (lambda: torch.nn.Conv1d(2, 6, 2, dtype=torch.float64), "chunk", {"chunks": 3}),
    ],
)
def test_symmetric_module_stores_only_free_parameters(make, kind, kw) -> None:
    module = make()
    dense = module.weight.detach().clone()
    bias = module.bias.numel()
    out = ws.symmetric(module, kind=kind, **kw)
    assert out is module
    F = acc.num_free(kind, dense.shape, **kw)
    assert sum(p.numel() for p in module.parameters()) == F + bias
    assert tuple(module.parametrizations.weight.original.shape) == (F,)
    assert set(module.state_dict()) == {"bias", "parametrizations.weight.original"}
    expect = ref.project(kind, dense.numpy(), **kw)
    np.testing.assert_allclose(module.weight.detach().numpy(), expect, rtol=1e-9, atol=1e-9)
    # state_dict round trip into a freshly parametrized module
    with torch.no_grad():
        module.parametrizations.weight.original.normal_()
    other = ws.symmetric(make(), kind=kind, **kw)
    other.load_state_dict(module.state_dict())
    torch.testing.assert_close(other.weight, module.weight, rtol=0, atol=0)
    x = torch.randn(2, dense.shape[1], *(6,) * (dense.ndim - 2), dtype=torch.float64)
    torch.testing.assert_close(other(x), module(x), rtol=0, atol=0)
    # assignment projects through right_inverse
    X = torch.randn_like(dense)
    other.weight = X
    expect = ref.project(kind, X.numpy(), **kw)
    np.testing.assert_allclose(other.weight.detach().numpy(), expect, rtol=1e-9, atol=1e-9)


@pytest.mark.req("SYM-8")
@settings(max_examples=10)
@given(data=st.data())
def test_symmetric_gradient_is_the_chain_rule(data) -> None:
    n = data.draw(st.integers(1, 6))
    G = data.draw(_data((n, n)))
    f = torch.zeros(n * (n + 1) // 2, dtype=torch.float64, requires_grad=True)
    (acc.build("symmetric", f, (n, n)) * _t(G)).sum().backward()
    rows, cols = np.triu_indices(n)  # the slot order of the spec
    expect = np.where(rows == cols, G[rows, cols], G[rows, cols] + G[cols, rows])
    np.testing.assert_allclose(f.grad.numpy(), expect, rtol=1e-12, atol=1e-12)


@pytest.mark.req("SYM-8")
@pytest.mark.parametrize(("kind", "shape", "kw"), CASES, ids=LINEAR_IDS)
def test_gradient_is_the_scatter_add_through_the_table(kind, shape, kw) -> None:
    G = np.random.default_rng(len(shape)).standard_normal(shape)
    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(torch.zeros(shape, dtype=torch.float64))
    ws.symmetric(module, kind=kind, **kw)
    (module.weight * _t(G)).sum().backward()
    H = ref.table(kind, shape, **kw).ravel()
    expect = np.bincount(H, weights=G.ravel())
    grad = module.parametrizations.weight.original.grad.numpy()
    np.testing.assert_allclose(grad, expect, rtol=1e-12, atol=1e-12)


@pytest.mark.req("SYM-9")
def test_compiles_fullgraph() -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        ws.symmetric(torch.nn.Linear(6, 6), kind="quarter"), torch.nn.Tanh(), torch.nn.Linear(6, 2)
    )
    x = torch.randn(3, 6)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), model(x))
    compiled(x).sum().backward()
    assert model[0].parametrizations.weight.original.grad is not None


BAD = [
    ("symmetric", (3, 4), {}, ValueError),
    ("symmetric", (4,), {}, ValueError),
    ("channel", (4, 4), {}, ValueError),
    ("channel", (4, 3, 3, 3), {}, ValueError),
    ("spatial", (2, 2, 3, 2), {}, ValueError),
    ("spatial", (2, 2, 3), {}, ValueError),
    ("block4", (3,), {}, ValueError),
    ("eigen", (4, 4), {"rank": 0}, ValueError),
    ("eigen", (4, 4), {"rank": 5}, ValueError),
    ("eigen", (4, 4), {"rank": 1.5}, TypeError),
    ("eigen", (4, 4), {}, TypeError),
    ("chunk", (6, 4), {"chunks": 4}, ValueError),
    ("chunk", (6, 4), {"chunks": 2, "dim": 2}, IndexError),
    ("chunk", (6, 4), {}, TypeError),
    ("symmetric", (4, 4), {"rank": 2}, TypeError),
    ("hexagonal", (4, 4), {}, ValueError),
    ("eigen+symmetric", (4, 4), {"rank": 2}, ValueError),
    ("symmetric", (0, 0), {}, ValueError),
    ("symmetric+symmetric", (3, 3), {}, ValueError),
]


@pytest.mark.req("SYM-10")
@pytest.mark.parametrize(("kind", "shape", "kw", "error"), BAD)
def test_bad_kinds_and_shapes_raise(kind, shape, kw, error) -> None:
    with pytest.raises(error):
        ref.num_free(kind, shape, **kw)
    with pytest.raises(error):
        acc.num_free(kind, shape, **kw)
    with pytest.raises(error):
        ref.project(kind, np.ones(shape), **kw)
    with pytest.raises(error):
        acc.project(kind, torch.ones(shape), **kw)
    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(torch.ones(shape))
    before = module.weight
    with pytest.raises(error):
        ws.symmetric(module, kind=kind, **kw)
    assert module.weight is before and not hasattr(module, "parametrizations")


@pytest.mark.req("SYM-10")
def test_bad_values_raise() -> None:
    W = np.eye(3)
    W[0, 1] = np.nan
    W[2, 2] = np.inf
    for call in (lambda: ref.project("symmetric", W), lambda: acc.project("symmetric", _t(W))):
        with pytest.raises(ValueError, match="2 non-finite"):
            call()
    with pytest.raises(TypeError):
        ref.project("symmetric", np.eye(3, dtype=np.int64))
    for dtype in (torch.int64, torch.bool, torch.complex64):
        with pytest.raises(TypeError):
            acc.project("symmetric", torch.ones(3, 3, dtype=dtype))
    with pytest.raises(ValueError, match=r"\(6,\)"):
        ref.build("symmetric", np.ones(5), (3, 3))
    with pytest.raises(ValueError, match=r"\(6,\)"):
        acc.build("symmetric", torch.ones(5), (3, 3))
    module = ws.symmetric(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="already parametrized"):
        ws.symmetric(module)
    with pytest.raises(ValueError, match="no tensor"):
        ws.symmetric(torch.nn.Linear(3, 3), name="kernel")


@pytest.mark.req("SYM-11")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_follow_the_input(device, dtype) -> None:
    W = torch.randn(4, 4, 3, 3, dtype=dtype, device=device)
    for kind, kw in (("channel+spatial", {}), ("eigen", {"rank": 2})):
        P = acc.project(kind, W, **kw)
        assert P.dtype == dtype and P.device == W.device
        f = acc.free(kind, W, **kw)
        assert f.dtype == dtype and f.device == W.device
    conv = torch.nn.Conv2d(4, 4, 3, device=device, dtype=dtype)
    ws.symmetric(conv, kind="channel")
    assert conv.weight.dtype == dtype and conv.weight.device == W.device
    conv.to(torch.float64)
    assert conv.weight.dtype == torch.float64
    assert conv.parametrizations.weight[0].index.dtype == torch.int64


class _Work(TorchDispatchMode):
    """Counts the entries of every tensor each torch op returns: the work and allocation done."""

    def __init__(self) -> None:
        super().__init__()
        self.entries = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        self.entries += sum(t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        return out


@pytest.mark.req("SYM-13")
@pytest.mark.parametrize(
    "kind, shape, kw",
    [
        ("chunk", (512, 8), {"chunks": 512}),
        ("chunk", (8, 512), {"chunks": 512, "dim": 1}),
        ("chunk", (512, 8), {"chunks": 1}),
        ("symmetric+chunk", (64, 64), {"chunks": 64}),
        ("quarter+chunk", (64, 64, 2), {"chunks": 32, "dim": 1}),
    ],
)
def test_table_work_is_linear_in_numel_whatever_chunks(kind, shape, kw) -> None:
    acc.clear_cache()  # build the table, not a cache hit
    with _Work() as work:
        H = acc.table(kind, shape, **kw)
    # every op's outputs together: a few dozen passes over the table, not one per chunk
    assert work.entries <= 48 * H.numel(), work.entries / H.numel()
    np.testing.assert_array_equal(H.numpy(), ref.table(kind, shape, **kw))


def _cached_keys() -> list[tuple]:
    from weightshare import _symmetry

    return [key[1] for key in _symmetry._cache]


@pytest.mark.req("SYM-14")
def test_table_cache_is_bounded_in_bytes_least_recently_used_out(monkeypatch) -> None:
    from weightshare import _symmetry

    assert acc.TABLE_CACHE_BYTES == 64 * 2**20 and acc.TABLE_CACHE_ENTRIES == 1024
    acc.clear_cache()
    assert acc.cache_bytes() == 0
    monkeypatch.setattr(_symmetry, "TABLE_CACHE_BYTES", 3 * 100 * 8)  # three 10x10 tables
    a, b, c, d = (10, 10), (10, 10, 1), (10, 10, 1, 1), (10, 10, 1, 1, 1)
    for shape in (a, b, c):
        acc.table("symmetric", shape)
    assert acc.cache_bytes() == 2400 and _cached_keys() == [a, b, c]
    acc.table("symmetric", a)  # a hit: a is now the most recently used
    acc.table("symmetric", d)
    assert acc.cache_bytes() == 2400 and _cached_keys() == [c, a, d]
    big = acc.table("symmetric", (20, 20))  # larger than the whole cache: returned, not kept
    assert big.shape == (20, 20) and _cached_keys() == [c, a, d]
    monkeypatch.setattr(_symmetry, "TABLE_CACHE_ENTRIES", 2)
    acc.table("symmetric", b)
    assert _cached_keys() == [d, b] and acc.cache_bytes() == 1600
    acc.clear_cache()
    assert acc.cache_bytes() == 0 and _cached_keys() == []


@pytest.mark.req("SYM-14")
def test_storage_counts_the_cached_tables_once() -> None:
    acc.clear_cache()
    m = torch.nn.Sequential(
        ws.symmetric(torch.nn.Linear(16, 16)),
        ws.symmetric(torch.nn.Linear(16, 16)),  # the same table
        ws.symmetric(torch.nn.Linear(16, 16), kind="eigen", rank=2),  # no table
    )
    table_bytes = 16 * 16 * 8
    s = ws.storage(m)
    rows = sum(r.memory_bytes or 0 for r in s.tensors)
    assert s.cache_bytes == table_bytes == acc.cache_bytes()
    assert s.memory_bytes == rows + table_bytes
    assert f"| (cached tables) | | | | {table_bytes:,} | | |" in str(s)
    acc.clear_cache()
    s = ws.storage(m)
    assert s.cache_bytes == 0 and s.memory_bytes == rows and "cached tables" not in str(s)
