"""Conformance of the hashing concept (spec page ``hashing``, ids HASH-n)."""

from __future__ import annotations

import inspect
import io
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import weightshare.reference.hashing as ref
from weightshare import hashing, nn

# ------------------------------------------------------------------------------------------------
# strategies and an independent, pure-Python SplitMix64 (the published algorithm)

MASK = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15


class SplitMix64:
    """Vigna's SplitMix64 generator on Python ints: state += gamma, then the finalizer."""

    def __init__(self, state: int) -> None:
        self.state = state & MASK

    def next(self) -> int:
        self.state = (self.state + GAMMA) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)


def spec_hash(seed: int, stream: int, n: int) -> list[int]:
    """h(s, t, i): output i+1 of SplitMix64 seeded with output t+1 of SplitMix64 seeded with s."""
    outer = SplitMix64(seed)
    for _ in range(stream):
        outer.next()
    inner = SplitMix64(outer.next())
    return [inner.next() for _ in range(n)]


shapes = st.lists(st.integers(1, 7), min_size=1, max_size=3).map(tuple)
seeds = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**63, 2**64 - 1]))
buckets = st.one_of(st.integers(1, 60), st.sampled_from([2**31 + 11, 2**62, 3**39]))


def _t(x: np.ndarray, device: str = "cpu", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=dtype)


# ------------------------------------------------------------------------------------------------
# HASH-2: the integer hash, determinism, bit-equality of the two implementations


@pytest.mark.req("HASH-2")
def test_splitmix64_known_answer() -> None:
    # first output of SplitMix64 seeded with 0, the generator's published test vector
    assert SplitMix64(0).next() == 0xE220A8397B1DCDAF


@pytest.mark.req("HASH-2", "HASH-3", "HASH-4")
@settings(max_examples=25)
@given(seed=seeds, k=buckets, n=st.integers(1, 30))
def test_tables_follow_the_specified_hash(seed: int, k: int, n: int) -> None:
    h_index, h_sign = spec_hash(seed, 1, n), spec_hash(seed, 2, n)
    np.testing.assert_array_equal(ref.uniform(n, k, seed=seed), [h % k for h in h_index])
    np.testing.assert_array_equal(ref.sign(n, seed=seed), [1 - 2 * (h >> 63) for h in h_sign])
    np.testing.assert_array_equal(
        hashing.uniform(n, k, seed=seed).numpy(), [h % k for h in h_index]
    )


@pytest.mark.req("HASH-2", "HASH-6")
@settings(max_examples=25)
@given(seed=seeds, k=st.integers(1, 40), r=st.integers(0, 50), n=st.integers(1, 30))
def test_neighborhood_follows_the_specified_hash(seed: int, k: int, r: int, n: int) -> None:
    deltas = [h % (2 * r + 1) - r for h in spec_hash(seed, 4, n)]
    expected = [(i % k + d) % k for i, d in enumerate(deltas)]
    np.testing.assert_array_equal(ref.neighborhood(n, k, radius=r, seed=seed), expected)


@pytest.mark.req("HASH-2", "HASH-3", "HASH-4", "HASH-5", "HASH-6", "HASH-7")
@settings(max_examples=30)
@given(
    shape=shapes,
    k=buckets,
    seed=seeds,
    alpha=st.sampled_from([1e-3, 0.1, 1.0, 7.5, 1e4]),
    r=st.integers(0, 70),
)
def test_torch_tables_equal_reference(
    shape: tuple[int, ...], k: int, seed: int, alpha: float, r: int
) -> None:
    pairs = [
        (hashing.uniform(shape, k, seed=seed), ref.uniform(shape, k, seed=seed)),
        (hashing.sign(shape, seed=seed), ref.sign(shape, seed=seed)),
        (
            hashing.neighborhood(shape, k, radius=r, seed=seed),
            ref.neighborhood(shape, k, radius=r, seed=seed),
        ),
        (hashing.dense(shape), ref.dense(shape)),
    ]
    kd = min(k, 500)  # the Dirichlet draw is O(K)
    pairs.append(
        (
            hashing.dirichlet(shape, kd, alpha=alpha, seed=seed),
            ref.dirichlet(shape, kd, alpha=alpha, seed=seed),
        )
    )
    for got, want in pairs:
        assert got.dtype in (torch.int64, torch.int8)
        assert got.numpy().dtype == want.dtype
        assert tuple(got.shape) == want.shape == shape
        np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.req("HASH-2")
def test_tables_on_device_equal_reference(device: str) -> None:
    shape, k, seed = (33, 17), 29, 2**63 + 5
    cases = [
        (hashing.uniform(shape, k, seed=seed, device=device), ref.uniform(shape, k, seed=seed)),
        (hashing.sign(shape, seed=seed, device=device), ref.sign(shape, seed=seed)),
        (
            hashing.dirichlet(shape, k, alpha=0.5, seed=seed, device=device),
            ref.dirichlet(shape, k, alpha=0.5, seed=seed),
        ),
        (
            hashing.neighborhood(shape, k, radius=4, seed=seed, device=device),
            ref.neighborhood(shape, k, radius=4, seed=seed),
        ),
        (hashing.dense(shape, device=device), ref.dense(shape)),
        (
            hashing.conv2d(2, 3, 3, (6, 5), padding=1, device=device)[0],
            ref.conv2d(2, 3, 3, (6, 5), padding=1)[0],
        ),
    ]
    for got, want in cases:
        assert got.device.type == device
        np.testing.assert_array_equal(got.cpu().numpy(), want)


@pytest.mark.req("HASH-2")
def test_determinism_and_seed_dependence() -> None:
    shape, k = (40, 25), 37
    makers = [
        lambda s: ref.uniform(shape, k, seed=s),
        lambda s: ref.sign(shape, seed=s),
        lambda s: ref.dirichlet(shape, k, alpha=1.0, seed=s),
        lambda s: ref.neighborhood(shape, k, radius=3, seed=s),
    ]
    for make in makers:
        np.testing.assert_array_equal(make(7), make(7))
        assert not np.array_equal(make(7), make(8))
    # a table depends on the flat (C-order) index only, not on the shape
    np.testing.assert_array_equal(
        ref.uniform((4, 6), k, seed=3), ref.uniform(24, k, seed=3).reshape(4, 6)
    )
    # index and sign use independent streams of the same seed
    assert not np.array_equal(
        ref.uniform(1000, 2, seed=5), (ref.sign(1000, seed=5) < 0).astype(np.int64)
    )


# ------------------------------------------------------------------------------------------------
# HASH-5, HASH-6, HASH-9: hash definitions, balance


@pytest.mark.req("HASH-6")
@settings(max_examples=20)
@given(shape=shapes, k=st.integers(1, 30), seed=seeds)
def test_neighborhood_radius_zero_is_the_base_table(
    shape: tuple[int, ...], k: int, seed: int
) -> None:
    base = np.arange(math.prod(shape)).reshape(shape) % k
    np.testing.assert_array_equal(ref.neighborhood(shape, k, radius=0, seed=seed), base)
    np.testing.assert_array_equal(hashing.neighborhood(shape, k, radius=0, seed=seed).numpy(), base)


@pytest.mark.req("HASH-6")
@settings(max_examples=20)
@given(shape=shapes, k=st.integers(1, 30), r=st.integers(0, 40), seed=seeds)
def test_neighborhood_stays_within_radius(
    shape: tuple[int, ...], k: int, r: int, seed: int
) -> None:
    table = ref.neighborhood(shape, k, radius=r, seed=seed).ravel()
    base = np.arange(table.size) % k
    offset = (table - base) % k  # circular offset in [0, K)
    allowed = {d % k for d in range(-r, r + 1)}
    assert set(offset.tolist()) <= allowed


@pytest.mark.req("HASH-5")
def test_dirichlet_uses_the_specified_probabilities() -> None:
    shape, k, alpha, seed = (50, 40), 9, 0.7, 11
    rng = np.random.Generator(np.random.PCG64(seed))
    cdf = np.cumsum(rng.dirichlet(np.full(k, alpha)))
    cdf[-1] = 1.0
    u = np.array(spec_hash(seed, 3, math.prod(shape)), dtype=np.uint64) >> np.uint64(11)
    expected = np.searchsorted(cdf, u.astype(np.float64) * 2.0**-53, side="right")
    np.testing.assert_array_equal(ref.dirichlet(shape, k, alpha=alpha, seed=seed).ravel(), expected)
    # buckets with p = 0 (tiny alpha underflows) are never drawn
    p = np.random.Generator(np.random.PCG64(3)).dirichlet(np.full(k, 1e-3))
    used = np.unique(ref.dirichlet(2000, k, alpha=1e-3, seed=3))
    assert np.all(p[used] > 0)


@pytest.mark.req("HASH-9")
@settings(max_examples=30)
@given(
    index=hnp.arrays(np.int64, st.integers(1, 60), elements=st.integers(0, 9)),
    k=st.integers(10, 15),
)
def test_entropy_equals_reference_and_definition(index: np.ndarray, k: int) -> None:
    counts = np.bincount(index, minlength=k)
    want = -sum(c / index.size * math.log(c / index.size) for c in counts if c)
    assert ref.entropy(index, k) == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert ref.entropy(index, k, normalized=True) == pytest.approx(want / math.log(k), abs=1e-15)
    got = hashing.entropy(torch.from_numpy(index), k)
    assert got.dtype == torch.float64 and got.ndim == 0
    torch.testing.assert_close(got.item(), want, rtol=1e-12, atol=1e-15)
    got_n = hashing.entropy(torch.from_numpy(index), k, normalized=True).item()
    torch.testing.assert_close(got_n, want / math.log(k), rtol=1e-12, atol=1e-15)


@pytest.mark.req("HASH-9")
def test_entropy_extremes() -> None:
    assert ref.entropy(np.zeros(10, dtype=np.int64), 4) == 0.0
    assert ref.entropy(np.arange(12) % 4, 4) == pytest.approx(math.log(4), rel=1e-15)
    assert ref.entropy(np.arange(12) % 4, 4, normalized=True) == pytest.approx(1.0, rel=1e-15)
    assert ref.entropy(np.zeros(3, dtype=np.int64), 1, normalized=True) == 1.0
    assert hashing.entropy(torch.zeros(3, dtype=torch.int64), 1, normalized=True).item() == 1.0


@pytest.mark.req("HASH-18")
def test_uniform_and_neighborhood_are_balanced() -> None:
    shape, k = (256, 400), 64  # 1600 entries per bucket on average
    for seed in range(3):
        assert ref.entropy(ref.uniform(shape, k, seed=seed), k, normalized=True) > 0.999
        for r in (1, 5, 100):
            table = ref.neighborhood(shape, k, radius=r, seed=seed)
            assert ref.entropy(table, k, normalized=True) > 0.999
    assert ref.entropy(ref.neighborhood(shape, k, radius=0), k) == pytest.approx(math.log(k))


@pytest.mark.req("HASH-18")
def test_dirichlet_balance_increases_with_alpha() -> None:
    shape, k = (256, 400), 64
    alphas = (0.01, 0.1, 1.0, 10.0, 100.0)
    for seed in range(3):
        ents = [
            ref.entropy(ref.dirichlet(shape, k, alpha=a, seed=seed), k, normalized=True)
            for a in alphas
        ]
        # each decade of alpha at least divides the entropy deficit 1 - ent by 1.5
        assert all(1 - b < (1 - a) / 1.5 for a, b in itertools.pairwise(ents)), ents
        assert ents[0] < 0.4 and ents[-1] > 0.99, ents


# ------------------------------------------------------------------------------------------------
# HASH-1, HASH-10: the weight map and its gradient


@st.composite
def tables(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    shape = draw(shapes)
    k = draw(st.integers(1, 12))
    values = draw(hnp.arrays(np.float64, k, elements=st.floats(-10, 10, allow_subnormal=False)))
    index = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, k - 1)))
    sign = draw(st.none() | hnp.arrays(np.int8, shape, elements=st.sampled_from([-1, 1])))
    return values, index, sign


@pytest.mark.req("HASH-1")
@settings(max_examples=30)
@given(case=tables())
def test_materialize_equals_reference(
    case: tuple[np.ndarray, np.ndarray, np.ndarray | None],
) -> None:
    values, index, sign = case
    want = values[index] * (1 if sign is None else sign)
    np.testing.assert_array_equal(ref.materialize(values, index, sign), want)
    got = hashing.materialize(
        torch.from_numpy(values),
        torch.from_numpy(index),
        None if sign is None else torch.from_numpy(sign),
    )
    assert got.dtype == torch.float64
    np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.req("HASH-1")
def test_reference_and_torch_share_signatures() -> None:
    for name in ref.__all__:
        want = list(inspect.signature(getattr(ref, name)).parameters)
        got = list(inspect.signature(getattr(hashing, name)).parameters)
        assert got in (want, [*want, "device"]), name


@pytest.mark.req("HASH-10")
@settings(max_examples=30)
@given(case=tables(), data=st.data())
def test_gradient_is_the_scatter_add(
    case: tuple[np.ndarray, np.ndarray, np.ndarray | None], data: st.DataObject
) -> None:
    values, index, sign = case
    k = values.size
    grad_w = data.draw(hnp.arrays(np.float64, index.shape, elements=st.floats(-10, 10)))
    want = ref.materialize_grad(grad_w, index, k, sign)
    # the oracle: a loop over the entries (np.add.at is the same sum)
    loop = np.zeros(k)
    for pos in np.ndindex(index.shape):
        loop[index[pos]] += grad_w[pos] * (1 if sign is None else sign[pos])
    np.testing.assert_allclose(want, loop, rtol=1e-12, atol=1e-12)
    v = torch.from_numpy(values).requires_grad_(True)
    xi = None if sign is None else torch.from_numpy(sign)
    (
        hashing.materialize(v, torch.from_numpy(index), xi) * torch.from_numpy(grad_w)
    ).sum().backward()
    torch.testing.assert_close(v.grad, torch.from_numpy(want), rtol=1e-12, atol=1e-12)
    got = hashing.materialize_grad(torch.from_numpy(grad_w), torch.from_numpy(index), k, xi)
    torch.testing.assert_close(got, torch.from_numpy(want), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# HASH-7, HASH-8: common layers as hash tables


@pytest.mark.req("HASH-7")
def test_dense_table_is_the_dense_weight() -> None:
    w = np.random.default_rng(0).standard_normal((3, 5))
    index = ref.dense(w.shape)
    np.testing.assert_array_equal(ref.materialize(w.ravel(), index), w)
    assert ref.entropy(index, w.size, normalized=True) == pytest.approx(1.0)


CONV_CASES = [
    dict(cin=1, cout=1, kernel=2, size=3),
    dict(cin=2, cout=3, kernel=3, size=(5, 4), stride=1, padding=1),
    dict(cin=3, cout=2, kernel=(2, 3), size=(6, 7), stride=(2, 1), padding=(0, 2), dilation=(2, 1)),
    dict(cin=2, cout=2, kernel=3, size=5, stride=2, padding=2, dilation=2),
]


@pytest.mark.req("HASH-8")
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_as_hash_equals_conv2d(case: dict, device: str) -> None:
    cin, cout, kernel, size = case["cin"], case["cout"], case["kernel"], case["size"]
    kw = {k: case[k] for k in ("stride", "padding", "dilation") if k in case}
    index, k = ref.conv2d(cin, cout, kernel, size, **kw)
    rng = np.random.default_rng(1)
    kh, kw_ = (kernel, kernel) if isinstance(kernel, int) else kernel
    h, w = (size, size) if isinstance(size, int) else size
    weight = rng.standard_normal((cout, cin, kh, kw_))
    x = rng.standard_normal((cin, h, w))
    assert k == weight.size + 1
    matrix = ref.materialize(np.append(weight.ravel(), 0.0), index)
    conv = F.conv2d(_t(x[None], device), _t(weight, device), **kw)[0]
    assert matrix.shape == (conv.numel(), x.size)
    torch.testing.assert_close(
        _t(matrix @ x.ravel()), conv.reshape(-1).cpu(), rtol=1e-12, atol=1e-12
    )
    t_index, t_k = hashing.conv2d(cin, cout, kernel, size, **kw, device=device)
    assert t_k == k
    np.testing.assert_array_equal(t_index.cpu().numpy(), index)
    t_matrix = hashing.materialize(
        torch.cat([_t(weight, device).reshape(-1), conv.new_zeros(1)]), t_index
    )
    torch.testing.assert_close(
        t_matrix @ _t(x, device).reshape(-1), conv.reshape(-1), rtol=1e-12, atol=1e-12
    )


# ------------------------------------------------------------------------------------------------
# HASH-11 .. HASH-16: layers and the parametrization


@pytest.mark.req("HASH-11")
@pytest.mark.parametrize(
    "hash_kw", [{}, {"hash": "dirichlet", "alpha": 0.5}, {"hash": "neighborhood", "radius": 2}]
)
@pytest.mark.parametrize("signed", [True, False])
def test_hashed_linear_forward_and_tables(hash_kw: dict, signed: bool, device: str) -> None:
    torch.manual_seed(0)
    layer = nn.HashedLinear(
        7, 5, 11, seed=3, signed=signed, device=device, dtype=torch.float64, **hash_kw
    )
    name = hash_kw.get("hash", "uniform")
    extra = {k: v for k, v in hash_kw.items() if k != "hash"}
    want_index = getattr(ref, name)((5, 7), 11, seed=3, **extra)
    np.testing.assert_array_equal(layer.index.cpu().numpy(), want_index)
    if signed:
        np.testing.assert_array_equal(layer.sign.cpu().numpy(), ref.sign((5, 7), seed=3))
    else:
        assert layer.sign is None
    values = layer.values.detach().cpu().numpy()
    want_w = ref.materialize(values, want_index, ref.sign((5, 7), seed=3) if signed else None)
    np.testing.assert_array_equal(layer.weight.detach().cpu().numpy(), want_w)
    x = torch.randn(4, 7, dtype=torch.float64, device=device)
    torch.testing.assert_close(
        layer(x), F.linear(x, _t(want_w, device), layer.bias), rtol=0, atol=0
    )
    assert layer.entropy().item() == pytest.approx(ref.entropy(want_index, 11), rel=1e-12)
    # parameter accounting: K values plus the bias, never the virtual weight
    assert sum(p.numel() for p in layer.parameters()) == 11 + 5
    assert [n for n, _ in layer.named_parameters()] == ["values", "bias"]


@pytest.mark.req("HASH-11", "HASH-10")
def test_hashed_linear_backward_is_scatter_add() -> None:
    torch.manual_seed(1)
    layer = nn.HashedLinear(6, 4, 5, dtype=torch.float64)
    x = torch.randn(3, 6, dtype=torch.float64)
    layer(x).square().sum().backward()
    w = layer.weight.detach().requires_grad_(True)
    F.linear(x, w, layer.bias.detach()).square().sum().backward()
    want = ref.materialize_grad(w.grad.numpy(), layer.index.numpy(), 5, layer.sign.numpy())
    torch.testing.assert_close(layer.values.grad, _t(want), rtol=1e-12, atol=1e-12)


@pytest.mark.req("HASH-7", "HASH-11")
def test_dense_hash_is_a_plain_linear_layer() -> None:
    layer = nn.HashedLinear(4, 3, 12, hash="dense", signed=False, bias=False)
    torch.testing.assert_close(layer.weight, layer.values.reshape(3, 4), rtol=0, atol=0)
    assert layer.entropy(normalized=True).item() == pytest.approx(1.0)
    # a callable hash builds the same table
    calls = []

    def my_hash(shape, k, *, seed, device):
        calls.append((shape, k, seed))
        return hashing.dense(shape, device=device)

    same = nn.HashedLinear(4, 3, 12, hash=my_hash, seed=4, signed=False)
    assert calls == [((3, 4), 12, 4)]
    assert torch.equal(same.index, layer.index)
    assert "hash='my_hash'" in repr(same)


@pytest.mark.req("HASH-12")
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"stride": 2, "padding": 1},
        {"padding": "same", "dilation": 2, "groups": 2, "hash": "neighborhood", "radius": 1},
        {"groups": 2, "signed": False, "bias": False, "hash": "dirichlet", "alpha": 2.0},
    ],
)
def test_hashed_conv2d_forward(kw: dict, device: str) -> None:
    torch.manual_seed(2)
    layer = nn.HashedConv2d(4, 6, 3, 13, seed=9, device=device, dtype=torch.float64, **kw)
    groups = kw.get("groups", 1)
    shape = (6, 4 // groups, 3, 3)
    name = kw.get("hash", "uniform")
    extra = {k: kw[k] for k in ("alpha", "radius") if k in kw}
    index = getattr(ref, name)(shape, 13, seed=9, **extra)
    np.testing.assert_array_equal(layer.index.cpu().numpy(), index)
    sign = ref.sign(shape, seed=9) if kw.get("signed", True) else None
    w = _t(ref.materialize(layer.values.detach().cpu().numpy(), index, sign), device)
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64, device=device)
    want = F.conv2d(
        x, w, layer.bias, kw.get("stride", 1), kw.get("padding", 0), kw.get("dilation", 1), groups
    )
    torch.testing.assert_close(layer(x), want, rtol=0, atol=0)
    assert sum(p.numel() for p in layer.parameters()) == 13 + (6 if kw.get("bias", True) else 0)


@pytest.mark.req("HASH-13")
def test_init_matches_dense_layer_law() -> None:
    torch.manual_seed(3)
    lin = nn.HashedLinear(100, 300, 20000)
    b = 1 / math.sqrt(100)
    for t in (lin.values, lin.weight, lin.bias):
        assert t.abs().max().item() <= b
    # U(-b, b) has variance b^2/3; 20000 values give a standard error of about 0.6%
    assert lin.values.var().item() == pytest.approx(b * b / 3, rel=0.05)
    assert lin.weight.var().item() == pytest.approx(b * b / 3, rel=0.05)
    conv = nn.HashedConv2d(8, 16, 3, 20000, groups=2)
    fan_in = 8 // 2 * 9
    assert conv.values.abs().max().item() <= 1 / math.sqrt(fan_in)
    assert conv.values.var().item() == pytest.approx(1 / (3 * fan_in), rel=0.05)
    dense = torch.nn.Linear(100, 300)
    assert dense.weight.var().item() == pytest.approx(b * b / 3, rel=0.05)


@pytest.mark.req("HASH-14")
def test_state_dict_round_trip(device: str) -> None:
    a = nn.HashedConv2d(3, 4, 3, 17, seed=1, hash="dirichlet", alpha=0.2, device=device)
    b = nn.HashedConv2d(3, 4, 3, 17, seed=2, hash="dirichlet", alpha=0.2, device=device)
    assert not torch.equal(a.index, b.index)
    state = a.state_dict()
    # the tables are not saved: the recipe (extra state) regenerates them
    assert set(state) == {"values", "bias", "_extra_state"}
    assert state["_extra_state"]["seed"] == 1 and "index" not in state["_extra_state"]
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(1, 3, 6, 6, device=device)
    torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)
    assert torch.equal(b.index, a.index) and torch.equal(b.sign, a.sign)
    assert b.seed == 1 and a.index.dtype == torch.int32
    c = nn.HashedLinear(3, 2, 4, signed=False, bias=False)
    assert set(c.state_dict()) == {"values", "_extra_state"}
    # a callable hash cannot be rebuilt from its name: its table is saved, bit-packed
    table = torch.tensor([[0, 3, 3], [1, 2, 0]])
    d = nn.HashedLinear(3, 2, 4, hash=lambda shape, k, *, seed, device: table, bias=False)
    e = nn.HashedLinear(3, 2, 4, bias=False)
    packed = d.state_dict()["_extra_state"]["index"]
    assert packed.dtype == torch.uint8 and packed.numel() == 2  # 6 labels of 2 bits
    e.load_state_dict(d.state_dict())
    assert torch.equal(e.index, table.int()) and torch.equal(e.weight, d.weight)
    # another shape or K is refused, the layer unchanged
    f = nn.HashedLinear(3, 2, 5, bias=False)
    before = f.index.clone()
    with pytest.raises(ValueError, match=r"\(2, 3\) with 4 buckets.*\(2, 3\) with 5 buckets"):
        f.set_extra_state(c.state_dict()["_extra_state"])
    assert torch.equal(f.index, before)


@pytest.mark.req("HASH-15")
def test_hashed_parametrization(device: str) -> None:
    torch.manual_seed(4)
    lin = torch.nn.Linear(9, 6, device=device, dtype=torch.float64)
    dense_w = lin.weight.detach().clone()
    out = hashing.hashed(lin, num_buckets=10, seed=5)
    assert out is lin
    original = lin.parametrizations.weight.original
    assert original.shape == (10,)
    assert set(lin.state_dict()) == {
        "bias",
        "parametrizations.weight.original",
        "parametrizations.weight.0._extra_state",
    }
    index, sign = ref.uniform((6, 9), 10, seed=5), ref.sign((6, 9), seed=5)
    want = ref.materialize(original.detach().cpu().numpy(), index, sign)
    np.testing.assert_array_equal(lin.weight.detach().cpu().numpy(), want)
    # initial values: each bucket's first member (C order) keeps its dense initial value
    flat_index = index.ravel()
    first = [int(np.flatnonzero(flat_index == k)[0]) for k in np.unique(flat_index)]
    torch.testing.assert_close(
        lin.weight.reshape(-1)[first], dense_w.reshape(-1)[first], rtol=0, atol=0
    )
    # assignment stores the least-squares values: the bucket means of sign * W
    target = torch.randn(6, 9, dtype=torch.float64, device=device)
    lin.weight = target
    flat = (target.cpu().numpy() * sign).ravel()
    counts = np.bincount(flat_index, minlength=10)
    means = np.bincount(flat_index, weights=flat, minlength=10) / np.maximum(counts, 1)
    torch.testing.assert_close(original.detach().cpu(), _t(means), rtol=1e-12, atol=1e-12)
    x = torch.randn(2, 9, dtype=torch.float64, device=device)
    torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias))
    assert sum(p.numel() for p in lin.parameters()) == 10 + 6


@pytest.mark.req("HASH-16")
# torch 2.13's dynamo itself warns when it traces any autograd.Function (not our code)
@pytest.mark.filterwarnings(
    "ignore:<class 'torch.autograd.function.Function'> should not be instantiated"
    ":DeprecationWarning"
)
def test_compile_fullgraph() -> None:
    torch.manual_seed(5)
    model = torch.nn.Sequential(
        nn.HashedLinear(8, 16, 20),
        torch.nn.ReLU(),
        nn.HashedLinear(16, 3, 10, hash="neighborhood", radius=1),
    )
    x = torch.randn(4, 8)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    torch.testing.assert_close(y, model(x))
    y.sum().backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).sum().backward()
    for g, p in zip(got, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)


# ------------------------------------------------------------------------------------------------
# HASH-17: bad input


def _both(call_ref, call_torch, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        call_ref()
    with pytest.raises(exc, match=match):
        call_torch()


@pytest.mark.req("HASH-17")
@pytest.mark.parametrize(
    ("fn", "args", "kwargs", "exc", "match"),
    [
        ("uniform", ((3, 0), 4), {}, ValueError, r"positive ints, got \(3, 0\)"),
        ("uniform", ((), 4), {}, ValueError, "at least one dimension"),
        ("uniform", ((3, 2.0), 4), {}, TypeError, "dimension of shape must be an int"),
        ("uniform", ((3,), 0), {}, ValueError, "num_buckets must be in"),
        ("uniform", ((3,), 4.0), {}, TypeError, "num_buckets must be an int"),
        ("uniform", ((3,), True), {}, TypeError, "num_buckets must be an int"),
        ("uniform", ((3,), 4), {"seed": -1}, ValueError, "seed must be in"),
        ("uniform", ((3,), 4), {"seed": 2**64}, ValueError, "seed must be in"),
        ("sign", ((3,),), {"seed": 1.5}, TypeError, "seed must be an int"),
        ("dirichlet", ((3,), 4), {"alpha": 0.0}, ValueError, "alpha must be finite and > 0"),
        ("dirichlet", ((3,), 4), {"alpha": float("nan")}, ValueError, "alpha must be finite"),
        ("dirichlet", ((3,), 4), {"alpha": "1"}, TypeError, "alpha must be a real"),
        ("neighborhood", ((3,), 4), {"radius": -1}, ValueError, "radius must be in"),
        ("neighborhood", ((3,), 4), {"radius": 1.0}, TypeError, "radius must be an int"),
        ("dense", ((2, -1),), {}, ValueError, "positive ints"),
        ("conv2d", (1, 1, 5, 3), {}, ValueError, r"does not fit the padded input \(3, 3\)"),
        ("conv2d", (1, 1, 2, 3), {"stride": 0}, ValueError, "stride must be >= 1"),
        ("conv2d", (0, 1, 2, 3), {}, ValueError, "in_channels and out_channels"),
        ("conv2d", (1, 1, (2, 2, 2), 3), {}, ValueError, "kernel_size must be an int or a pair"),
    ],
)
def test_bad_table_arguments(fn: str, args: tuple, kwargs: dict, exc: type, match: str) -> None:
    _both(
        lambda: getattr(ref, fn)(*args, **kwargs),
        lambda: getattr(hashing, fn)(*args, **kwargs),
        exc,
        match,
    )


@pytest.mark.req("HASH-17")
def test_bad_weight_map_arguments() -> None:
    v, idx, sg = np.array([1.0, 2.0]), np.array([[0, 1], [1, 0]]), np.array([[1, -1], [1, 1]])
    cases = [
        ((np.array([1, 2]), idx, None), TypeError, "values must have a real floating dtype"),
        ((np.array([1.0, np.nan]), idx, None), ValueError, "values has 1 non-finite"),
        ((v.reshape(1, 2), idx, None), ValueError, r"shape \(K,\), got shape \(1, 2\)"),
        ((v, idx.astype(np.float64), None), TypeError, "index must be an integer"),
        ((v, idx + 1, None), ValueError, r"index has 2 entries outside \[0, 2\)"),
        ((v, idx, sg[:1]), ValueError, r"sign has shape \(1, 2\), the index has shape \(2, 2\)"),
        ((v, idx, sg * 2), ValueError, "sign has 4 entries that are not -1 or \\+1"),
    ]
    for (values, index, sign), exc, match in cases:
        _both(
            lambda values=values, index=index, sign=sign: ref.materialize(values, index, sign),
            lambda values=values, index=index, sign=sign: hashing.materialize(
                torch.from_numpy(values),
                torch.from_numpy(index),
                None if sign is None else torch.from_numpy(sign),
            ),
            exc,
            match,
        )
    _both(
        lambda: ref.materialize_grad(np.ones((2, 3)), idx, 2),
        lambda: hashing.materialize_grad(torch.ones(2, 3), torch.from_numpy(idx), 2),
        ValueError,
        r"grad_weight has shape \(2, 3\), the index has shape \(2, 2\)",
    )
    _both(
        lambda: ref.entropy(np.array([0, 5]), 3),
        lambda: hashing.entropy(torch.tensor([0, 5]), 3),
        ValueError,
        r"1 entries outside \[0, 3\)",
    )
    _both(
        lambda: ref.entropy(np.zeros(0, dtype=np.int64), 3),
        lambda: hashing.entropy(torch.zeros(0, dtype=torch.int64), 3),
        ValueError,
        r"must not be empty, got shape \(0,\)",
    )


@pytest.mark.req("HASH-17")
def test_bad_layer_arguments() -> None:
    with pytest.raises(ValueError, match=r"weight shape \(3, 0\)"):
        nn.HashedLinear(0, 3, 4)
    with pytest.raises(ValueError, match="hash must be one of"):
        nn.HashedLinear(2, 3, 4, hash="murmur")
    with pytest.raises(ValueError, match=r"num_buckets == numel of the weight shape \(3, 2\)"):
        nn.HashedLinear(2, 3, 4, hash="dense")
    with pytest.raises(TypeError, match="alpha"):
        nn.HashedLinear(2, 3, 4, hash="dirichlet")
    with pytest.raises(TypeError, match="dtype must be a floating dtype"):
        nn.HashedLinear(2, 3, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"divisible by groups \(2\)"):
        nn.HashedConv2d(3, 4, 3, 5, groups=2)
    with pytest.raises(ValueError, match=r"must return a tensor of shape \(3, 2\)"):
        nn.HashedLinear(2, 3, 4, hash=lambda shape, k, **kw: torch.zeros(5, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"1 entries outside \[0, 4\)"):
        nn.HashedLinear(1, 1, 4, hash=lambda shape, k, **kw: torch.full(shape, 4))
    lin = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match="no parameter named 'kernel'"):
        hashing.hashed(lin, "kernel", num_buckets=3)
    hashing.hashed(lin, num_buckets=3)
    with pytest.raises(ValueError, match="already parametrized"):
        hashing.hashed(lin, num_buckets=3)
    with pytest.raises(ValueError, match=r"assigned weight has shape \(3, 2\), expected \(2, 3\)"):
        lin.weight = torch.zeros(3, 2)


@pytest.mark.req("HASH-12")
@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding", [1, (2, 1), "same", "valid"])
def test_hashed_conv2d_padding_modes_equal_conv2d(mode: str, padding: object) -> None:
    layer = nn.HashedConv2d(3, 4, 3, 10, padding=padding, padding_mode=mode, dilation=2,
                            dtype=torch.float64)  # fmt: skip
    conv = torch.nn.Conv2d(3, 4, 3, padding=padding, padding_mode=mode, dilation=2,
                           dtype=torch.float64)  # fmt: skip
    with torch.no_grad():
        conv.weight.copy_(layer.weight)
        conv.bias.copy_(layer.bias)
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-12, atol=1e-12)
    assert f"padding_mode={mode!r}" in repr(layer)
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        nn.HashedConv2d(3, 4, 3, 10, padding_mode="mirror")
