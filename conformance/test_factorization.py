"""Conformance of deep weight factorization (spec page factorization.md, ids DWF-n)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import optimize

import weightshare as ws
from weightshare import factorization as acc
from weightshare.reference import factorization as ref


def _floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False)


@st.composite
def factor_lists(draw: st.DrawFn, max_depth: int = 4) -> list[np.ndarray]:
    depth = draw(st.integers(1, max_depth))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=5))
    return [draw(hnp.arrays(np.float64, shape, elements=_floats(-3, 3))) for _ in range(depth)]


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


def _factorized_vector(values: np.ndarray, depth: int) -> torch.nn.Module:
    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(_t(values.copy()))
    return ws.factorize(module, depth=depth, init="balanced")


@pytest.mark.req("DWF-1")
@settings(max_examples=30)
@given(factors=factor_lists(), threshold=st.sampled_from([0.0, 0.1, 1.0]))
def test_collapse_is_the_thresholded_product(factors, threshold) -> None:
    w = ref.product(factors)
    expect = np.prod(np.stack(factors), axis=0)
    np.testing.assert_allclose(w, expect, rtol=1e-12, atol=0)
    np.testing.assert_allclose(acc.product([_t(u) for u in factors]).numpy(), w, rtol=1e-12)
    c = ref.collapse(factors, threshold=threshold)
    np.testing.assert_array_equal(c, np.where(np.abs(w) < threshold, 0.0, w))
    # the torch verb: same module back, plain parameter, weight = reference collapse of factors
    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(torch.zeros(factors[0].shape, dtype=torch.float64))
    ws.factorize(module, depth=len(factors), init="balanced")
    with torch.no_grad():
        for original, u in zip(acc.factors(module), factors, strict=True):
            original.copy_(_t(u))
    out = ws.collapse(module, threshold=threshold)
    assert out is module and type(module) is torch.nn.Module
    assert isinstance(module.weight, torch.nn.Parameter)
    assert set(module.state_dict()) == {"weight"}
    np.testing.assert_allclose(module.weight.detach().numpy(), c, rtol=1e-12, atol=0)


@pytest.mark.req("DWF-2", "DWF-4")
@pytest.mark.parametrize("depth", [2, 3, 4])
@settings(max_examples=5)
@given(
    w=hnp.arrays(np.float64, 5, elements=_floats(0.05, 5.0) | _floats(-5.0, -0.05)),
    mu=_floats(0.01, 3.0),
    seed=st.integers(0, 2**16),
)
def test_theorem_minimum_over_factorizations(depth, w, mu, seed) -> None:
    """min over u with prod u = w of mu * sum_d |u_d|^2, by BFGS on the log-magnitudes."""
    rng = np.random.default_rng(seed)
    total = 0.0
    for wj in w:

        def objective(t: np.ndarray, wj: float = wj) -> float:
            last = abs(wj) * np.exp(-t.sum())
            return mu * (np.sum(np.exp(2 * t)) + last**2)

        t0 = np.log(abs(wj)) / depth + rng.normal(0.0, 1.0, depth - 1)
        res = optimize.minimize(objective, t0, method="BFGS", options={"gtol": 1e-10})
        total += res.fun
        # the minimizer is balanced: every |u_d| = |w|^(1/D)
        np.testing.assert_allclose(np.exp(res.x), abs(wj) ** (1 / depth), rtol=1e-4)
    expect = ref.equivalent_penalty(w, mu, depth)
    np.testing.assert_allclose(total, expect, rtol=1e-7)
    np.testing.assert_allclose(float(acc.equivalent_penalty(_t(w), mu, depth)), expect, rtol=1e-12)
    np.testing.assert_allclose(expect, depth * mu * np.sum(np.abs(w) ** (2 / depth)), rtol=1e-12)


@pytest.mark.req("DWF-2")
@settings(max_examples=30)
@given(factors=factor_lists(), mu=_floats(0.0, 3.0))
def test_factor_penalty_bounds_the_equivalent_penalty(factors, mu) -> None:
    """AM-GM: mu * sum_d |u_d|^2 >= D mu sum |w|^(2/D), equal for balanced factors."""
    depth, w = len(factors), ref.product(factors)
    value = ref.factor_penalty(factors, mu)
    np.testing.assert_allclose(float(acc.factor_penalty([_t(u) for u in factors], mu)), value)
    assert value >= ref.equivalent_penalty(w, mu, depth) * (1 - 1e-12) - 1e-300
    balanced = [np.abs(w) ** (1 / depth) for _ in range(depth)]
    np.testing.assert_allclose(
        ref.factor_penalty(balanced, mu), ref.equivalent_penalty(w, mu, depth), rtol=1e-9
    )


@pytest.mark.req("DWF-3")
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_weight_decay_for_realizes_the_factor_penalty(depth, momentum) -> None:
    lam, lr = 0.3, 0.1
    assert ref.weight_decay_for(lam, depth) == acc.weight_decay_for(lam, depth) == 2 * lam / depth
    rng = np.random.default_rng(depth)
    start, target = rng.normal(size=6), rng.normal(size=6)
    a = _factorized_vector(start, depth)
    b = _factorized_vector(start, depth)
    wd = acc.weight_decay_for(lam, depth)
    opt_a = torch.optim.SGD(a.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    opt_b = torch.optim.SGD(b.parameters(), lr=lr, momentum=momentum)
    for _ in range(3):
        for module, opt, mu in ((a, opt_a, 0.0), (b, opt_b, lam / depth)):
            opt.zero_grad()
            loss = 0.5 * (module.weight - _t(target)).square().sum()
            (loss + acc.factor_penalty(acc.factors(module), mu)).backward()
            opt.step()
    for ua, ub in zip(acc.factors(a), acc.factors(b), strict=True):
        torch.testing.assert_close(ua, ub, rtol=1e-12, atol=1e-14)


@pytest.mark.req("DWF-5")
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_untruncated_init_matches_the_variance(depth) -> None:
    sigma, n = 0.08, 40_000
    # sample variance of w has relative standard error sqrt((3^D - 1) / n)
    tol = 5 * math.sqrt((3**depth - 1) / n)
    ref_factors = ref.init((n,), depth, np.random.default_rng(depth), std=sigma, truncate=False)
    gen = torch.Generator().manual_seed(depth)
    acc_factors = acc.init((n,), depth, gen, std=sigma, truncate=False, dtype=torch.float64)
    for factors in (ref_factors, [u.numpy() for u in acc_factors]):
        assert len(factors) == depth
        for u in factors:
            np.testing.assert_allclose(u.std(), sigma ** (1 / depth), rtol=5 * math.sqrt(0.5 / n))
        w = np.prod(np.stack(factors), axis=0)
        np.testing.assert_allclose(np.mean(w**2), sigma**2, rtol=tol)


@pytest.mark.req("DWF-5")
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize(("sigma", "eps"), [(0.05, None), (0.3, 1e-4), (2.0, 0.5)])
def test_truncated_init_respects_the_bounds(depth, sigma, eps) -> None:
    lo = (sigma / 4 if eps is None else eps) ** (1 / depth)
    hi = min(1.0, (2 * sigma) ** (1 / depth))
    ref_factors = ref.init((50, 40), depth, np.random.default_rng(0), std=sigma, eps=eps)
    acc_factors = acc.init((50, 40), depth, torch.Generator().manual_seed(0), std=sigma, eps=eps)
    for factors in (ref_factors, [u.numpy() for u in acc_factors]):
        for u in factors:
            assert u.shape == (50, 40)
            assert np.all((np.abs(u) > lo) & (np.abs(u) < hi))
            assert 0.3 < np.mean(u > 0) < 0.7  # symmetric signs
        w = np.abs(np.prod(np.stack(factors), axis=0))
        assert np.all(w > lo**depth * (1 - 1e-12)) and np.all(w < hi**depth)


@pytest.mark.req("DWF-6")
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_factorize_module(depth) -> None:
    torch.manual_seed(depth)
    conv = torch.nn.Conv2d(3, 4, 3, dtype=torch.float64)
    bias = conv.bias.detach().clone()
    out = ws.factorize(conv, depth=depth, generator=torch.Generator().manual_seed(1))
    assert out is conv
    keys = {f"parametrizations.weight.original{d}" for d in range(depth)} | {"bias"}
    assert set(conv.state_dict()) == keys
    factors = acc.factors(conv)
    assert len(factors) == depth and all(u.shape == (4, 3, 3, 3) for u in factors)
    torch.testing.assert_close(conv.weight, acc.product(list(factors)), rtol=0, atol=0)
    torch.testing.assert_close(conv.bias, bias, rtol=0, atol=0)
    sigma = acc.default_std(conv)
    assert sigma == pytest.approx(1 / math.sqrt(3 * 27))
    hi = min(1.0, (2 * sigma) ** (1 / depth))
    assert all(bool((u.abs() < hi).all()) for u in factors)
    # state_dict round trip into a fresh factorized module
    other = ws.factorize(torch.nn.Conv2d(3, 4, 3, dtype=torch.float64), depth=depth)
    other.load_state_dict(conv.state_dict())
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(other(x), conv(x), rtol=0, atol=0)
    # balanced init is the exact balanced split of the current weight
    lin = torch.nn.Linear(5, 4, dtype=torch.float64)
    dense = lin.weight.detach().clone()
    ws.factorize(lin, depth=depth, init="balanced")
    torch.testing.assert_close(lin.weight, dense, rtol=1e-12, atol=1e-15)
    for u in acc.factors(lin):
        torch.testing.assert_close(u.abs(), dense.abs() ** (1 / depth), rtol=1e-12, atol=0)
    # assignment goes through right_inverse: the balanced split of the new weight
    new = -2.0 * dense
    lin.weight = new
    torch.testing.assert_close(lin.weight, new, rtol=1e-12, atol=1e-15)
    for u in acc.factors(lin)[1:]:
        torch.testing.assert_close(u, new.abs() ** (1 / depth), rtol=1e-12, atol=0)


@pytest.mark.req("DWF-6")
def test_default_std_is_the_std_of_torch_default_init() -> None:
    torch.manual_seed(0)
    for make in (lambda: torch.nn.Linear(300, 200), lambda: torch.nn.Conv2d(16, 64, 3)):
        module = make()
        fan_in = module.weight[0].numel()
        assert acc.default_std(module) == pytest.approx(1 / math.sqrt(3 * fan_in), rel=1e-12)
        assert float(module.weight.detach().std()) == pytest.approx(
            acc.default_std(module), rel=0.02
        )
    emb = torch.nn.Embedding(500, 40)  # not kaiming-uniform: the empirical std
    assert acc.default_std(emb) == pytest.approx(float(emb.weight.detach().std()), rel=1e-12)


def _prox_power(a: float, lam: float, depth: int) -> tuple[float, bool]:
    """argmin_w 1/2 (w - a)^2 + lam |w|^(2/D) in closed form (D = 1, 2) or by root finding.

    Returns the minimizer and whether a non-global local minimum exists (then GD may stop there).
    """
    p, s, x = 2 / depth, np.sign(a), abs(a)
    if depth == 1:
        return a / (1 + 2 * lam), False
    if depth == 2:
        return s * max(x - lam, 0.0), False

    def h(w: float) -> float:
        return 0.5 * (w - x) ** 2 + lam * w**p

    def dh(w: float) -> float:
        return w - x + lam * p * w ** (p - 1)

    w_star = (lam * p * (1 - p)) ** (1 / (2 - p))  # the minimum of h'
    if w_star >= x or dh(w_star) >= 0:
        return 0.0, False
    root = optimize.brentq(dh, w_star, x, xtol=1e-15)
    if h(root) < h(0.0):
        return s * root, False
    return 0.0, True


@pytest.mark.req("DWF-7")
@pytest.mark.parametrize("depth", [2, 3, 4])
def test_factorized_gd_reaches_the_power_prox_with_exact_zeros(depth) -> None:
    lam, lr, steps = 0.2, 0.1, 2000
    a = np.array([0.3, -0.25, 0.8, -1.5])
    closed = []
    for aj in a:
        wj, ambiguous = _prox_power(aj, lam, depth)
        assert not ambiguous
        closed.append(wj)
    closed = np.array(closed)
    module = _factorized_vector(a, depth)
    opt = torch.optim.SGD(module.parameters(), lr=lr, weight_decay=acc.weight_decay_for(lam, depth))
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * (module.weight - _t(a)).square().sum()).backward()
        opt.step()
    ws.collapse(module, threshold=1e-8)
    w = module.weight.detach().numpy()
    np.testing.assert_allclose(w, closed, atol=1e-6)
    if depth == 2:  # soft thresholding: the two small entries survive, shrunk by lam
        np.testing.assert_allclose(closed[:2], [0.1, -0.05], atol=1e-12)
        assert np.all(w != 0)
    else:  # exact zeros where L1 would keep them
        assert np.all(closed[:2] == 0) and np.all(w[:2] == 0) and np.all(w[2:] != 0)


@pytest.mark.req("DWF-8")
@pytest.mark.parametrize("depth", [2, 3])
def test_trained_factors_are_balanced(depth) -> None:
    torch.manual_seed(depth)
    X = torch.randn(64, 8, dtype=torch.float64)
    w_true = torch.tensor([[2.0, -1.5, 0, 0, 1.0, 0, 0, 0]], dtype=torch.float64)
    y = X @ w_true.T + 0.01 * torch.randn(64, 1, dtype=torch.float64)
    model = torch.nn.Linear(8, 1, bias=False, dtype=torch.float64)
    ws.factorize(model, depth=depth, generator=torch.Generator().manual_seed(0))
    lam = 0.2
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=acc.weight_decay_for(lam, depth))
    for _ in range(400):
        opt.zero_grad()
        (0.5 * (model(X) - y).square().mean()).backward()
        opt.step()
    mu = lam / depth
    factors = [u.detach() for u in acc.factors(model)]
    w = model.weight.detach()
    induced = float(acc.equivalent_penalty(w, mu, depth))
    value = float(acc.factor_penalty(factors, mu))
    assert value >= induced * (1 - 1e-12)
    assert value == pytest.approx(induced, rel=1e-4)
    # balance itself: every |u_d| equals |w|^(1/D) on the surviving entries
    big = w.abs() > 0.1
    for u in factors:
        torch.testing.assert_close(u.abs()[big], w.abs()[big] ** (1 / depth), rtol=1e-3, atol=0)


@pytest.mark.req("DWF-11")
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_balanced_dynamics_rescale_the_gradient(depth) -> None:
    """One small SGD step on balanced factors moves w by -lr * D |w|^(2-2/D) dL/dw + O(lr^2)."""
    w0 = np.array([0.01, -0.2, 0.5, -1.0, 3.0])
    target = np.zeros_like(w0)
    module = _factorized_vector(w0, depth)
    lr = 1e-6
    loss = 0.5 * (module.weight - _t(target)).square().sum()
    loss.backward()
    with torch.no_grad():
        for u in acc.factors(module):
            u -= lr * u.grad
    rate = (module.weight.detach().numpy() - w0) / lr
    grad = w0 - target
    expect = -depth * np.abs(w0) ** (2 - 2 / depth) * grad
    np.testing.assert_allclose(rate, expect, rtol=1e-4, atol=1e-9)


@pytest.mark.req("DWF-9")
def test_compression_ratio() -> None:
    w = np.array([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]])
    assert ref.compression_ratio(w) == 3.0 == acc.compression_ratio(_t(w))
    assert ref.compression_ratio(np.zeros(4)) == math.inf == acc.compression_ratio(torch.zeros(4))
    assert (
        ref.compression_ratio([w, np.ones(2)])
        == 2.0
        == acc.compression_ratio([_t(w), torch.ones(2)])
    )
    # a module counts parametrized tensors by value (not factors) and its biases
    lin = torch.nn.Linear(3, 2, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(_t(w))
        lin.bias.copy_(torch.tensor([0.0, 5.0]))
    assert acc.compression_ratio(lin) == 8 / 3
    ws.factorize(lin, depth=3, init="balanced")
    assert acc.compression_ratio(lin) == 8 / 3
    model = torch.nn.Sequential(lin, torch.nn.ReLU(), torch.nn.Linear(2, 2, bias=False))
    assert acc.compression_ratio(model) == 12 / 7
    ws.collapse(lin, threshold=1.5)
    assert acc.compression_ratio(lin) == 8 / 2


@pytest.mark.req("DWF-10")
def test_errors() -> None:
    lin = torch.nn.Linear(3, 2)
    for depth, error in ((0, ValueError), (-1, ValueError), (2.0, TypeError), (True, TypeError)):
        with pytest.raises(error, match="depth"):
            ws.factorize(lin, depth=depth)
        with pytest.raises(error, match="depth"):
            ref.weight_decay_for(0.1, depth)
        with pytest.raises(error, match="depth"):
            acc.weight_decay_for(0.1, depth)
    with pytest.raises(ValueError, match="init"):
        ws.factorize(lin, init="kaiming")
    with pytest.raises(ValueError, match="no tensor"):
        ws.factorize(lin, name="kernel")
    with pytest.raises(ValueError, match="empty truncation"):
        ws.factorize(lin, std=0.01, eps=0.5)
    assert not hasattr(lin, "parametrizations")  # nothing mutated
    with pytest.raises(ValueError, match="not factorized"):
        ws.collapse(lin, threshold=0.0)
    ws.factorize(lin, depth=2)
    with pytest.raises(ValueError, match="already parametrized"):
        ws.factorize(lin, depth=2)
    for bad in (-1e-3, math.nan):
        with pytest.raises(ValueError, match="threshold"):
            ws.collapse(lin, threshold=bad)
        with pytest.raises(ValueError, match="threshold"):
            ref.collapse([np.ones(2)], threshold=bad)
    assert len(acc.factors(lin)) == 2  # still factorized
    for fn in (ref.weight_decay_for, acc.weight_decay_for):
        with pytest.raises(ValueError, match="lam"):
            fn(-0.1, 2)
    with pytest.raises(ValueError, match="mu"):
        ref.equivalent_penalty(np.ones(2), -1.0, 2)
    with pytest.raises(ValueError, match="shape"):
        ref.product([np.ones(2), np.ones(3)])
    with pytest.raises(ValueError, match="shape"):
        acc.product([torch.ones(2), torch.ones(3)])
    with pytest.raises(ValueError, match="2 non-finite"):
        ref.equivalent_penalty(np.array([np.nan, np.inf, 1.0]), 1.0, 2)
    with pytest.raises(ValueError, match="2 non-finite"):
        acc.equivalent_penalty(torch.tensor([np.nan, np.inf, 1.0]), 1.0, 2)
    with pytest.raises(TypeError):
        acc.equivalent_penalty(torch.ones(2, dtype=torch.int64), 1.0, 2)
    with pytest.raises(TypeError):
        ref.product([np.ones(2, dtype=np.int64)])
    with pytest.raises(ValueError, match="std"):
        ref.init((2,), 2, np.random.default_rng(0), std=0.0)
    int_module = torch.nn.Module()
    int_module.weight = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    int_module.register_buffer("counts", torch.ones(2, dtype=torch.int64))
    with pytest.raises(TypeError):
        ws.factorize(int_module, name="counts", init="balanced")


@pytest.mark.req("DWF-12")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_follow_the_module(device, dtype) -> None:
    lin = torch.nn.Linear(4, 3, device=device, dtype=dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    ws.factorize(lin, depth=3, generator=gen)
    for u in acc.factors(lin):
        assert u.dtype == dtype and u.device == lin.bias.device
    x = torch.randn(2, 4, device=device, dtype=dtype)
    assert lin(x).dtype == dtype
    ws.collapse(lin, threshold=0.05)
    assert lin.weight.dtype == dtype and lin.weight.device == lin.bias.device


@pytest.mark.req("DWF-13")
# torch 2.13's dynamo itself warns when it traces any autograd.Function (not our code; the hashed
# layer's weight map is one, HASH-19)
@pytest.mark.filterwarnings(
    "ignore:<class 'torch.autograd.function.Function'> should not be instantiated"
    ":DeprecationWarning"
)
def test_model_with_every_structure_compiles_to_one_graph() -> None:
    from torch._dynamo.testing import CompileCounterWithBackend

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        ws.nn.HashedLinear(12, 16, 40, seed=3),
        torch.nn.Tanh(),
        ws.symmetric(torch.nn.Linear(16, 16), kind="symmetric"),
        torch.nn.Tanh(),
        ws.factorize(torch.nn.Linear(16, 5), depth=3),
    ).double()
    x = torch.randn(7, 12, dtype=torch.float64)
    eager_out = model(x)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), list(model.parameters()))
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    out = compiled(x)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    assert counter.frame_count == 1
    torch.testing.assert_close(out, eager_out)
    for g, e in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(g, e)
