"""The bucket gradient of the hashed layers (spec page ``hashing``, HASH-10 and HASH-19).

Two summation paths exist: the serial ``index_add_`` on the CPU and the bucket rows everywhere
else (CUDA). The fixture ``path`` runs each test on both: ``"rows"`` empties ``SERIAL_DEVICES``
so that the CPU takes the path CUDA takes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import weightshare.reference.hashing as ref
from weightshare import _bucket_sum, hashing, nn

KINDS = [
    {},
    {"hash": "dirichlet", "alpha": 0.3},
    {"hash": "neighborhood", "radius": 2},
    {"hash": "dense"},
    {"hash": "callable"},
]


def _kw(kind: dict, numel: int, k: int) -> tuple[dict, int]:
    """Layer keywords for a hash kind, and its K (``"dense"`` needs K = numel)."""
    kw = dict(kind)
    if kw.get("hash") == "dense":
        return kw, numel
    if kw.get("hash") == "callable":  # a table that leaves buckets empty and fills one heavily
        kw["hash"] = lambda shape, k, *, seed, device: (
            hashing.uniform(shape, 3, seed=seed, device=device) * (k // 3)
        )
    return kw, k


@pytest.fixture(params=["default", "rows"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "rows":
        monkeypatch.setattr(_bucket_sum, "SERIAL_DEVICES", frozenset())
    yield request.param


@pytest.fixture
def deterministic() -> Iterator[None]:
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _structures(kind: dict, device: str) -> list[tuple[str, torch.nn.Module, torch.Tensor]]:
    """(name, module, its values parameter): a HashedLinear, a HashedConv2d, a ``hashed``."""
    f64 = torch.float64
    kw, k = _kw(kind, 6 * 9, 17)
    lin = nn.HashedLinear(9, 6, k, seed=3, device=device, dtype=f64, **kw)
    kw, k = _kw(kind, 4 * 2 * 3 * 3, 13)
    conv = nn.HashedConv2d(4, 4, 3, k, groups=2, seed=5, device=device, dtype=f64, **kw)
    kw, k = _kw(kind, 5 * 7, 11)
    par = hashing.hashed(torch.nn.Linear(7, 5, device=device, dtype=f64), num_buckets=k, **kw)
    original = par.parametrizations.weight.original  # type: ignore[union-attr]
    return [("linear", lin, lin.values), ("conv", conv, conv.values), ("hashed", par, original)]


def _tables(module: torch.nn.Module) -> torch.nn.Module:
    if isinstance(module, nn.HashedLinear | nn.HashedConv2d):
        return module
    return module.parametrizations.weight[0]  # type: ignore[index, union-attr]


@pytest.mark.req("HASH-10", "HASH-19")
@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.get("hash", "uniform"))
@pytest.mark.parametrize("signed", [True, False])
def test_bucket_gradient_equals_the_scatter_add(
    kind: dict, signed: bool, path: str, device: str
) -> None:
    torch.manual_seed(0)
    kind = {**kind, "signed": signed} if kind.get("hash") != "dense" else {**kind, "signed": False}
    for name, module, values in _structures(kind, device):
        weight = module.weight
        grad_w = torch.randn(weight.shape, dtype=weight.dtype, device=device)
        (weight * grad_w).sum().backward()
        tables = _tables(module)
        sign = None if tables.sign is None else tables.sign.cpu().numpy()
        want = ref.materialize_grad(
            grad_w.cpu().numpy(), tables.index.cpu().numpy(), values.numel(), sign
        )
        assert values.grad is not None
        np.testing.assert_allclose(values.grad.cpu().numpy(), want, rtol=1e-12, atol=1e-12)
        # autograd of the plain gather (the previous path) gives the same gradient
        v = values.detach().clone().requires_grad_(True)
        old = v[tables.index] * (1 if tables.sign is None else tables.sign.to(v.dtype))
        (old * grad_w).sum().backward()
        torch.testing.assert_close(values.grad, v.grad, rtol=1e-12, atol=1e-12, msg=name)
        # and so does the free function materialize_grad
        got = hashing.materialize_grad(grad_w, tables.index, values.numel(), tables.sign)
        torch.testing.assert_close(got, v.grad, rtol=1e-12, atol=1e-12, msg=name)


class _Ops(TorchDispatchMode):
    """Records the name of every aten op that runs."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


SCATTERS = ("index_add", "index_put", "scatter", "put", "index_reduce", "_index_put")


@pytest.mark.req("HASH-19")
def test_row_path_has_no_scatter_and_no_sort(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bucket-row path (the one off the CPU) neither scatters nor sorts nor scans in a step."""
    monkeypatch.setattr(_bucket_sum, "SERIAL_DEVICES", frozenset())
    torch.manual_seed(1)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        layer = nn.HashedLinear(30, 20, 50, dtype=dtype)
        conv = nn.HashedConv2d(3, 4, 3, 20, dtype=dtype, hash="dirichlet", alpha=0.1)
        x, img = torch.randn(8, 30, dtype=dtype), torch.randn(2, 3, 6, 6, dtype=dtype)
        with _Ops() as ops:
            (layer(x).sum() + conv(img).sum()).backward()
        names = [n.split(".")[0] for n in ops.names]
        assert "index_select" in names and "sum" in names
        bad = [n for n in names if n.startswith(SCATTERS) or "sort" in n or "cumsum" in n]
        assert not bad, bad


def _weight_grad(make: Callable[[], torch.nn.Module], device: str) -> list[torch.Tensor]:
    """The values' gradient of two fresh builds and backward passes of a float32 layer."""
    out = []
    for _ in range(2):
        torch.manual_seed(2)
        layer = make()
        weight = layer.weight
        g = torch.randn(weight.shape, generator=torch.Generator().manual_seed(3)).to(device)
        (weight * g).sum().backward()
        out.append(layer.values.grad.clone())  # type: ignore[attr-defined, union-attr]
    return out


@pytest.mark.req("HASH-19")
@pytest.mark.usefixtures("deterministic")
@pytest.mark.parametrize("kind", KINDS[:3], ids=lambda k: k.get("hash", "uniform"))
def test_bucket_gradient_is_deterministic(kind: dict, path: str, device: str) -> None:
    """Under ``torch.use_deterministic_algorithms(True)``: runs, bitwise equal across runs, and
    equal to the previous gradient (autograd of the gather) within float32 rounding."""
    for make in (
        lambda: nn.HashedLinear(400, 300, 1000, device=device, **kind),
        lambda: nn.HashedConv2d(32, 64, 3, 700, device=device, **kind),
    ):
        a, b = _weight_grad(make, device)
        assert torch.equal(a, b)
        torch.manual_seed(2)
        layer = make()
        assert isinstance(layer, nn.HashedLinear | nn.HashedConv2d)
        g = torch.randn(layer.weight.shape, generator=torch.Generator().manual_seed(3)).to(device)
        exact = hashing.materialize_grad(
            g.double(), layer.index, layer.num_buckets, layer.sign
        ).float()
        torch.testing.assert_close(a, exact, rtol=1e-5, atol=1e-5)


@pytest.mark.req("HASH-19")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_sum_numerics(dtype: torch.dtype) -> None:
    """Within the bound of any order of summation (in float32 for bfloat16, then rounded), and
    never worse than the serial sum in that dtype."""
    n, k = 1 << 18, 1 << 10
    gen = torch.Generator().manual_seed(4)
    index = torch.randint(0, k, (n,), generator=gen, dtype=torch.int32)
    index[: n // 4] = 7  # one heavy bucket
    index[index == 9] = 8  # one empty bucket
    grad = (torch.randn(n, generator=gen) * torch.rand(n, generator=gen) ** 4).to(dtype)
    sign = (1 - 2 * torch.randint(0, 2, (n,), generator=gen)).to(torch.int8)
    layout, levels = _bucket_sum.bucket_rows(index, k)
    assert len(levels) >= 3 and levels[-1] == (k, 1)
    got = _bucket_sum.row_sum(grad, sign, layout, levels).double().numpy()
    contrib = grad.double().numpy() * sign.numpy()
    exact, mass = np.zeros(k), np.zeros(k)
    np.add.at(exact, index.numpy(), contrib)
    np.add.at(mass, index.numpy(), np.abs(contrib))
    counts = np.bincount(index.numpy(), minlength=k)
    u = torch.finfo(torch.float32).eps / 2
    bound = np.maximum(counts - 1, 0) * u * mass + torch.finfo(dtype).eps / 2 * np.abs(exact)
    assert np.all(np.abs(got - exact) <= bound * (1 + 1e-9))
    assert got[9] == 0
    serial = _bucket_sum.serial_sum(grad, index, sign, k).double().numpy()
    assert np.abs(got - exact).max() <= np.abs(serial - exact).max()


@pytest.mark.req("HASH-19")
@pytest.mark.parametrize("signed", [True, False])
def test_gradcheck_float64(signed: bool, path: str) -> None:
    """First and second derivatives of a tiny layer in float64 (the backward is differentiable)."""
    torch.manual_seed(6)
    layer = nn.HashedLinear(3, 4, 5, signed=signed, dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64)
    v = layer.values.detach().clone().requires_grad_(True)

    def f(values: torch.Tensor) -> torch.Tensor:
        return F.linear(x, layer._weight_map(values)) ** 2

    assert torch.autograd.gradcheck(f, (v,))
    assert torch.autograd.gradgradcheck(f, (v,))


@pytest.mark.req("HASH-19")
def test_bucket_row_buffers(device: str) -> None:
    """Built with the tables, int32, non-persistent, rebuilt when a state is loaded, moved by
    ``.to``; the state dict does not change; each row reads one bucket, every entry once."""
    a = nn.HashedLinear(40, 30, 50, seed=1, device=device)
    b = nn.HashedLinear(40, 30, 50, seed=2, device=device, hash="dirichlet", alpha=0.05)
    for m in (a, b):
        flat = m.index.reshape(-1).long()
        n = flat.numel()
        assert m.bucket_layout.dtype == torch.int32
        assert m.bucket_levels[-1] == (50, 1)
        assert m.bucket_layout.numel() == sum(r * w for r, w in m.bucket_levels)
        rows, width = m.bucket_levels[0]
        level0 = m.bucket_layout[: rows * width].long().view(rows, width)
        real = level0[level0 < n]
        assert torch.equal(torch.sort(real).values, torch.arange(n, device=device))
        ext = torch.cat([flat, flat.new_full((1,), -1)])[level0]  # -1: padding
        first = ext[:, :1]
        assert bool(((ext == first) | (ext == -1)).all()) and bool((first >= 0).all())
    assert set(a.state_dict()) == {"values", "bias", "_extra_state"}
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.bucket_layout, a.bucket_layout) and b.bucket_levels == a.bucket_levels
    moved = a.to(torch.float64)
    assert moved.bucket_layout.dtype == torch.int32


@pytest.mark.req("HASH-16", "HASH-19")
# torch 2.13's dynamo itself warns when it traces any autograd.Function (not our code)
@pytest.mark.filterwarnings(
    "ignore:<class 'torch.autograd.function.Function'> should not be instantiated"
    ":DeprecationWarning"
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compile_fullgraph_on_both_paths(dtype: torch.dtype, path: str) -> None:
    torch.manual_seed(7)
    model = torch.nn.Sequential(
        nn.HashedLinear(8, 16, 20, dtype=dtype, hash="dirichlet", alpha=0.2),
        torch.nn.ReLU(),
        nn.HashedLinear(16, 3, 10, dtype=dtype),
    )
    x = torch.randn(4, 8, dtype=dtype)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    compiled(x).sum().backward()
    got = [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]
    model.zero_grad()
    model(x).sum().backward()
    for g, p in zip(got, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=0, atol=0)
