"""Conformance of the training concept (spec/training.md): attach, tie/untie, metrics, DDP."""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import weightshare as ws
from conformance.distributed.spawn import run_world
from conformance.strategies import vectors
from weightshare import _step_graph as step_graph
from weightshare import reference as ref
from weightshare._isotonic import host

FIXTURE_OK = [HealthCheck.function_scoped_fixture]  # the device fixture is the same per example
TOL = {torch.float64: {"rtol": 1e-9, "atol": 1e-9}, torch.float32: {"rtol": 1e-5, "atol": 1e-5}}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def ref_prox(w: np.ndarray, tau: float, dim: int | None) -> np.ndarray:
    """The reference prox over the whole tensor (dim=None) or over every 1-D slice along dim."""
    if dim is None:
        return ref.prox_pava(w.ravel(), tau).reshape(w.shape)
    moved = np.moveaxis(w, dim, -1)
    rows = moved.reshape(-1, moved.shape[-1])
    out = np.stack([ref.prox_pava(r, tau) for r in rows]).reshape(moved.shape)
    return np.moveaxis(out, -1, dim)


def ref_update(w: np.ndarray, tau: float, thresh: float, dim: int | None) -> np.ndarray:
    """TRAIN-1 in float64: soft(prox_{tau R}(w), thresh)."""
    p = ref_prox(w, tau, dim)
    return ref.soft_threshold(p.ravel(), thresh).reshape(w.shape)


def mlp(dtype: torch.dtype = torch.float64, device: str = "cpu", seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3)).to(device, dtype)


def data(dtype: torch.dtype = torch.float64, device: str = "cpu") -> tuple[Any, Any]:
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(16, 6, generator=g), torch.randn(16, 3, generator=g)
    return x.to(device, dtype), y.to(device, dtype)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: Any, y: Any) -> None:
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()


class Snapshot:
    """A post-step hook registered *before* attach: it sees every step's plain optimizer result."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        self.params: dict[int, np.ndarray] = {}
        self.state: dict[int, dict[str, Any]] = {}
        self.lrs: list[float] = []
        opt.register_step_post_hook(self)

    def __call__(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.lrs.append(float(opt.param_groups[0]["lr"]))
        for group in opt.param_groups:
            for p in group["params"]:
                self.params[id(p)] = p.detach().cpu().double().numpy().copy()
                self.state[id(p)] = copy.deepcopy(opt.state[p])


def assert_prox_applied(
    opt: torch.optim.Optimizer, snap: Snapshot, lam: float, l1: float, dim: int | None
) -> None:
    """Every attached parameter is TRAIN-1's update of its plain-step value; the rest untouched."""
    for group in opt.param_groups:
        lr = float(group["lr"])
        mask = group.get("wsr_mask") or [False] * len(group["params"])
        for p, on in zip(group["params"], mask, strict=True):
            before = snap.params[id(p)]
            got = p.detach().cpu().double().numpy()
            if on:
                want = ref_update(before, lr * lam, lr * l1, dim)
                scale = max(1.0, float(np.abs(before).max(initial=0.0)), lr * lam)
                tol = TOL[p.dtype]
                np.testing.assert_allclose(got, want, rtol=tol["rtol"], atol=tol["atol"] * scale)
            else:
                np.testing.assert_array_equal(got, before)


def state_equal(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
        else:
            assert a[k] == b[k]


OPTIMIZERS = {
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.3, momentum=0.9),
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.05),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.1),
}


def wsr_keys(opt: torch.optim.Optimizer) -> list[dict[str, Any]]:
    return [{k: v for k, v in g.items() if k.startswith("wsr_")} for g in opt.param_groups]


# ---------------------------------------------------------------------------------------------
# attach
# ---------------------------------------------------------------------------------------------


@pytest.mark.req("TRAIN-1", "TRAIN-7")
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dim", [None, 1])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(max_examples=8, suppress_health_check=FIXTURE_OK)
@given(
    w=vectors(min_size=24, max_size=24),
    lam=st.sampled_from([0.0, 0.01, 0.3, 5.0]),
    l1=st.sampled_from([0.0, 0.05]),
)
def test_attach_equals_reference(
    device: str, name: str, dim: int | None, dtype: torch.dtype, w, lam, l1
) -> None:
    model = mlp(dtype, device)
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(w.reshape(4, 6)))
    opt = OPTIMIZERS[name](model.parameters())
    snap = Snapshot(opt)
    ws.attach(opt, lam, dim=dim, l1=l1)
    ids = [id(p) for p in model.parameters()]
    x, y = data(dtype, device)
    for _ in range(3):  # momentum / moments accumulate over the steps
        train_step(model, opt, x, y)
        assert_prox_applied(opt, snap, lam, l1, dim)
        for p in model.parameters():  # TRAIN-7: same objects, leaf, state as the plain step left it
            assert p.requires_grad and p.grad_fn is None and p.dtype == dtype
            state_equal(opt.state[p], snap.state[id(p)])
        assert [id(p) for p in model.parameters()] == ids


@pytest.mark.req("TRAIN-1")
def test_attach_without_gradient_and_3d_dim() -> None:
    conv = nn.Conv1d(2, 3, 4, dtype=torch.float64)
    extra = nn.Parameter(torch.randn(3, 5, dtype=torch.float64))  # never gets a gradient
    opt = torch.optim.SGD([*conv.parameters(), extra], lr=0.5)
    snap = Snapshot(opt)
    ws.attach(opt, 4.0, dim=-1)
    x = torch.randn(2, 2, 9, dtype=torch.float64)
    opt.zero_grad()
    conv(x).square().mean().backward()
    opt.step()
    assert extra.grad is None
    assert_prox_applied(opt, snap, 4.0, 0.0, -1)
    assert ws.num_distinct(extra[0]) < 5  # the prox acted on the gradient-free parameter


@pytest.mark.req("TRAIN-2")
@pytest.mark.parametrize("dim", [None, 1])
def test_scheduler_changes_eta(dim: int | None) -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    factors = [1.0, 4.0, 0.25, 0.0]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: factors[min(e, 3)])
    snap = Snapshot(opt)
    ws.attach(opt, 0.5, dim=dim, l1=0.1)
    x, y = data()
    for _ in range(4):
        train_step(model, opt, x, y)
        assert_prox_applied(opt, snap, 0.5, 0.1, dim)
        sched.step()
    assert snap.lrs == pytest.approx([0.2, 0.8, 0.05, 0.0])
    # with lr = 0 the last step is the identity: nothing moved at all
    np.testing.assert_array_equal(
        model[0].weight.detach().numpy(), snap.params[id(model[0].weight)]
    )


@pytest.mark.req("TRAIN-3")
def test_default_selection_is_ndim_ge_2() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.LayerNorm(8), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    handle = ws.attach(opt, 1e6)  # huge: every attached tensor collapses to its mean
    params = list(model.parameters())
    assert opt.param_groups[0]["wsr_mask"] == [p.ndim >= 2 for p in params]
    before = [p.detach().clone() for p in params]
    opt.zero_grad()
    model(torch.randn(4, 1, 4, 4)).sum().backward()
    opt.step()
    for p, b in zip(params, before, strict=True):
        plain = b - p.grad
        if p.ndim >= 2:
            assert ws.num_distinct(p) == 1
            torch.testing.assert_close(p.mean(), plain.mean())
        else:
            torch.testing.assert_close(p.detach(), plain, rtol=0, atol=0)
    handle.remove()
    # explicit params attach exactly those tensors, 1-D included
    ws.attach(opt, 1e6, params=[model[3].bias])
    assert opt.param_groups[0]["wsr_mask"] == [p is model[3].bias for p in params]
    opt.zero_grad()
    model(torch.randn(4, 1, 4, 4)).sum().backward()
    opt.step()
    assert ws.num_distinct(model[3].bias) == 1
    assert ws.num_distinct(model[3].weight) > 1


@pytest.mark.req("TRAIN-4")
def test_keys_round_trip_and_are_read_each_step() -> None:
    model = mlp()
    opt = torch.optim.Adam(
        [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.01}],
        lr=0.05,
    )
    snap = Snapshot(opt)
    ws.attach(opt, 0.3, params=[model[0].weight, model[2].weight], dim=1, l1=0.02)
    want = {"wsr_lam": 0.3, "wsr_l1": 0.02, "wsr_dim": 1, "wsr_method": "auto"}
    assert wsr_keys(opt) == [{**want, "wsr_mask": [True, False]}] * 2
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    for group in loaded["param_groups"]:
        assert {k: group[k] for k in want} == want and group["wsr_mask"] == [True, False]
    # a per-group strength set by hand is used on the next step
    opt.param_groups[1]["wsr_lam"] = 2.0
    opt.param_groups[0]["wsr_lam"] = 0.0
    opt.param_groups[0]["wsr_l1"] = 0.0
    x, y = data()
    train_step(model, opt, x, y)
    w0, w2 = model[0].weight, model[2].weight
    np.testing.assert_array_equal(w0.detach().numpy(), snap.params[id(w0)])
    want2 = ref_update(snap.params[id(w2)], 0.01 * 2.0, 0.01 * 0.02, 1)
    np.testing.assert_allclose(w2.detach().numpy(), want2, rtol=1e-9, atol=1e-9)


@pytest.mark.req("TRAIN-5", "TRAIN-23")
@pytest.mark.parametrize("order", ["resume_after_load", "attach_before_load"])
def test_reattach_after_load(order: str) -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    ws.attach(opt, 0.7, params=[model[2].weight], dim=0, l1=0.03)
    x, y = data()
    train_step(model, opt, x, y)
    saved = copy.deepcopy(opt.state_dict())
    model2 = copy.deepcopy(model)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.2, momentum=0.9)
    if order == "resume_after_load":
        opt2.load_state_dict(saved)
        ws.attach(opt2, None)
    else:
        ws.attach(opt2, 123.0)  # overwritten by the load
        opt2.load_state_dict(saved)
    assert wsr_keys(opt2) == wsr_keys(opt)
    model3 = copy.deepcopy(model)  # the same load without any attachment: a plain step
    opt3 = torch.optim.SGD(model3.parameters(), lr=0.2, momentum=0.9)
    opt3.load_state_dict(saved)
    for m, o in ((model, opt), (model2, opt2)):
        train_step(m, o, x, y)
    with pytest.warns(UserWarning, match=r"no prox is attached.*attach\(optimizer, None\)"):
        train_step(model3, opt3, x, y)  # TRAIN-23: warned, once
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert not torch.equal(model2[2].weight, model3[2].weight)  # the prox did act


@pytest.mark.req("TRAIN-6")
def test_remove_stops_the_prox() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    snap = Snapshot(opt)
    handle = ws.attach(opt, 5.0)
    with pytest.raises(ValueError, match="already"):
        ws.attach(opt, 1.0)
    x, y = data()
    train_step(model, opt, x, y)
    assert ws.num_distinct(model[0].weight) < 24
    handle.remove()
    assert wsr_keys(opt) == [{}]
    train_step(model, opt, x, y)
    for p in model.parameters():  # a plain SGD step
        np.testing.assert_array_equal(p.detach().numpy(), snap.params[id(p)])
    handle.remove()  # idempotent
    with ws.attach(opt, 5.0, params=[model[2].weight]):  # re-attach is allowed; context manager
        train_step(model, opt, x, y)
        assert ws.num_distinct(model[2].weight) < 12
    assert wsr_keys(opt) == [{}]


@pytest.mark.req("TRAIN-8")
def test_one_fused_call_per_method(monkeypatch: pytest.MonkeyPatch) -> None:
    # each fused pass is one call of the host backend's packed prox: (row sets, rows per set)
    calls: list[tuple[int, tuple[int, ...]]] = []
    real = host.BACKEND.prox_packed

    def counting(rows, lams):  # type: ignore[no-untyped-def]
        calls.append((len(rows), tuple(r.shape[0] for r in rows)))
        return real(rows, lams)

    model = mlp()
    opt = torch.optim.SGD(
        [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.1}], lr=0.2
    )
    ws.attach(opt, 0.5, params=[*model[0].parameters(), model[2].weight])
    monkeypatch.setattr(host.BACKEND, "prox_packed", counting)
    x, y = data()
    train_step(model, opt, x, y)
    assert calls == [(3, (1, 1, 1))]  # dim=None: one vector per tensor, all in one pass
    calls.clear()
    opt.param_groups[1]["wsr_dim"] = 1
    train_step(model, opt, x, y)
    # still one pass, whatever the dims: model[0]'s weight and bias whole, model[2].weight's 3
    # rows along dim 1
    assert calls == [(3, (1, 1, 3))]
    calls.clear()
    opt.param_groups[1]["wsr_method"] = "hull"  # a second method: a second pass (not the host's)
    train_step(model, opt, x, y)
    assert calls == [(2, (1, 1))]


@pytest.mark.req("TRAIN-9")
def test_attach_errors() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    stranger = nn.Parameter(torch.zeros(2, 7))
    cases: list[tuple[type[Exception], str, dict[str, Any]]] = [
        (ValueError, ">= 0", {"lam": -1.0}),
        (ValueError, ">= 0", {"lam": 1.0, "l1": -0.5}),
        (ValueError, "finite", {"lam": float("nan")}),
        (ValueError, "finite", {"lam": 1.0, "l1": float("inf")}),
        (ValueError, r"\(2, 7\)", {"lam": 1.0, "params": [stranger]}),
        (ValueError, "empty", {"lam": 1.0, "params": []}),
        (IndexError, r"\(4, 6\)", {"lam": 1.0, "dim": 2}),
        (IndexError, r"\(4\)|\(4,\)", {"lam": 1.0, "params": [model[0].bias], "dim": 1}),
        (ValueError, "no group", {"lam": None}),
        (TypeError, "real number", {"lam": "big"}),
    ]
    for exc, match, kwargs in cases:
        with pytest.raises(exc, match=match):
            ws.attach(opt, **kwargs)
        assert wsr_keys(opt) == [{}]  # nothing changed
    with pytest.raises(TypeError, match="Optimizer"):
        ws.attach(model, 1.0)  # type: ignore[arg-type]
    plain = torch.optim.SGD([nn.Parameter(torch.zeros(3))], lr=0.1)
    with pytest.raises(ValueError, match="ndim >= 2"):
        ws.attach(plain, 1.0)
    # resuming takes no other arguments
    ws.attach(opt, 1.0).remove()
    opt.param_groups[0].update(wsr_lam=1.0, wsr_l1=0.0, wsr_dim=None, wsr_method="auto")
    opt.param_groups[0]["wsr_mask"] = [True, False, True, False]
    with pytest.raises(ValueError, match="resumes"):
        ws.attach(opt, None, l1=0.1)
    # a state dict without keys loaded under a live attachment: the step refuses to skip the prox
    bare = torch.optim.SGD(mlp().parameters(), lr=0.1).state_dict()
    ws.attach(opt, None)
    opt.load_state_dict(bare)
    x, y = data()
    with pytest.raises(RuntimeError, match="wsr_lam"):
        train_step(model, opt, x, y)


# ---------------------------------------------------------------------------------------------
# tie / untie
# ---------------------------------------------------------------------------------------------


def ref_means(w: np.ndarray, labels: np.ndarray) -> np.ndarray:
    _, inv = np.unique(labels.ravel(), return_inverse=True)
    sums = np.bincount(inv, weights=w.ravel())
    return (sums / np.bincount(inv))[inv].reshape(w.shape)


tie_inputs = st.tuples(
    vectors(min_size=12, max_size=12, kind="ties"),
    hnp.arrays(np.int64, 12, elements=st.integers(-3, 3)),
    hnp.arrays(np.float64, 12, elements=st.floats(-2, 2)),
)


@pytest.mark.req("TRAIN-10", "TRAIN-11", "TRAIN-13")
@settings(max_examples=20, suppress_health_check=FIXTURE_OK)
@given(inputs=tie_inputs, default=st.booleans())
def test_tie_values_gradient_untie(device: str, inputs, default: bool) -> None:
    w, labels, upstream = (a.reshape(3, 4) for a in inputs)
    lin = nn.Linear(4, 3, dtype=torch.float64, device=device)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
    param = lin.weight
    if default:
        assert ws.tie(lin) is lin
        labels = np.unique(w.ravel(), return_inverse=True)[1].reshape(3, 4)
        torch.testing.assert_close(lin.weight.cpu(), torch.from_numpy(w), rtol=0, atol=0)
    else:
        assert ws.tie(lin, labels=torch.from_numpy(labels).to(device)) is lin
    k = len(np.unique(labels))
    values = lin.parametrizations.weight.original
    assert values is param and values.shape == (k,)
    assert sum(p.numel() for p in lin.parameters()) == k + 3
    assert set(lin.state_dict()) == {
        "bias",
        "parametrizations.weight.original",
        "parametrizations.weight.0.labels",
    }
    np.testing.assert_allclose(lin.weight.detach().cpu().numpy(), ref_means(w, labels), atol=1e-12)
    # TRAIN-11: gradient of each shared value = sum of its members' gradients
    (lin.weight * torch.from_numpy(upstream).to(device)).sum().backward()
    _, inv = np.unique(labels.ravel(), return_inverse=True)
    want = np.bincount(inv, weights=upstream.ravel(), minlength=k)
    np.testing.assert_allclose(values.grad.cpu().numpy(), want, atol=1e-12)
    # TRAIN-13: untie leaves the tied dense weight in the same Parameter
    tied = lin.weight.detach().clone()
    assert ws.untie(lin) is lin
    assert lin.weight is param and lin.weight.shape == (3, 4)
    assert not torch.nn.utils.parametrize.is_parametrized(lin)
    torch.testing.assert_close(lin.weight.detach(), tied, rtol=0, atol=0)
    # (two clusters may round to means an ulp apart: count the tied values, not the reference)
    assert ws.num_distinct(lin.weight) == len(np.unique(tied.cpu().numpy()))
    assert set(lin.state_dict()) == {"weight", "bias"}


@pytest.mark.req("TRAIN-12")
@settings(max_examples=20)
@given(inputs=tie_inputs)
def test_assignment_projects_to_cluster_means(inputs) -> None:
    _, labels, new = (a.reshape(3, 4) for a in inputs)
    lin = nn.Linear(4, 3, dtype=torch.float64)
    ws.tie(lin, labels=torch.from_numpy(labels))
    lin.weight = torch.from_numpy(new)
    np.testing.assert_allclose(lin.weight.detach().numpy(), ref_means(new, labels), atol=1e-12)


@pytest.mark.req("TRAIN-10")
def test_tie_after_wsr_training_keeps_the_model() -> None:
    """Retrain mode: tie the clusters WSR found; the function computed is unchanged."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ws.attach(opt, 1.0)
    x, y = data()
    for _ in range(3):
        train_step(model, opt, x, y)
    k = ws.num_distinct(model[0].weight)
    assert k < 24
    out = model(x).detach()
    ws.tie(model[0])
    assert model[0].parametrizations.weight.original.numel() == k
    torch.testing.assert_close(model(x), out, rtol=0, atol=0)


@pytest.mark.req("TRAIN-14")
def test_tie_errors() -> None:
    lin = nn.Linear(4, 3)
    before = lin.weight.detach().clone()
    with pytest.raises(ValueError, match=r"\(2, 2\).*\(3, 4\)"):
        ws.tie(lin, labels=torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="integer"):
        ws.tie(lin, labels=torch.zeros(3, 4))
    with pytest.raises(TypeError, match="integer"):
        ws.tie(lin, labels=torch.zeros(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="no parameter"):
        ws.tie(lin, "kernel")
    with pytest.raises(ValueError, match="not tied"):
        ws.untie(lin)
    with torch.no_grad():
        lin.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="1 non-finite"):
        ws.tie(lin)
    with torch.no_grad():
        lin.weight.copy_(before)
    assert not torch.nn.utils.parametrize.is_parametrized(lin)
    torch.testing.assert_close(lin.weight.detach(), before, rtol=0, atol=0)
    ws.tie(lin)
    with pytest.raises(ValueError, match="already parametrized"):
        ws.tie(lin)
    normed = torch.nn.utils.parametrizations.weight_norm(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="not tied"):
        ws.untie(normed, "weight")
    with pytest.raises(ValueError, match="already parametrized"):
        ws.tie(normed, "weight")


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------


@pytest.mark.req("TRAIN-15")
@settings(max_examples=40)
@given(
    x=vectors(max_size=30),
    atol=st.sampled_from([0.0, 1e-8, 0.5, 3.0]),
    dtype=st.sampled_from([torch.float64, torch.float32]),
    rows=st.sampled_from([1, 2]),
)
def test_metrics_match_numpy(x: np.ndarray, atol: float, dtype: torch.dtype, rows: int) -> None:
    x = x[: len(x) - len(x) % rows]
    t = torch.from_numpy(x).to(dtype).reshape(rows, len(x) // rows)
    xs = t.double().numpy().ravel()  # the values after the cast
    assert ws.num_distinct(t) == len(np.unique(xs))
    if xs.size:
        zeros = np.mean(np.abs(t.numpy().ravel()) <= np.asarray(atol, dtype=t.numpy().dtype))
        assert ws.zero_fraction(t, atol) == pytest.approx(zeros, abs=0)


@pytest.mark.req("TRAIN-15")
def test_metrics_examples() -> None:
    w = torch.tensor([[0.0, -0.0, 1.5], [1.5, -2.0, 1e-9]])
    assert ws.num_distinct(w) == 4
    assert ws.num_distinct(torch.empty(0)) == 0
    assert ws.zero_fraction(w) == pytest.approx(2 / 6)
    assert ws.zero_fraction(w, atol=1e-8) == pytest.approx(3 / 6)


@pytest.mark.req("TRAIN-16")
def test_metric_errors() -> None:
    bad = torch.tensor([1.0, float("nan"), float("inf"), 0.0])
    with pytest.raises(ValueError, match="2 non-finite"):
        ws.num_distinct(bad)
    with pytest.raises(ValueError, match="2 non-finite"):
        ws.zero_fraction(bad)
    for dtype in (torch.int64, torch.bool, torch.complex64):
        with pytest.raises(TypeError, match="floating"):
            ws.num_distinct(torch.zeros(3, dtype=dtype))
        with pytest.raises(TypeError, match="floating"):
            ws.zero_fraction(torch.zeros(3, dtype=dtype))
    with pytest.raises(ValueError, match=">= 0"):
        ws.zero_fraction(torch.zeros(3), atol=-1.0)
    with pytest.raises(ValueError, match=">= 0"):
        ws.zero_fraction(torch.zeros(3), atol=float("nan"))
    with pytest.raises(ValueError, match="empty"):
        ws.zero_fraction(torch.zeros(0))


# ---------------------------------------------------------------------------------------------
# DDP
# ---------------------------------------------------------------------------------------------


@pytest.mark.req("TRAIN-17")
@pytest.mark.slow
def test_ddp_replicas_stay_bit_identical(tmp_path: Path) -> None:
    world = 2
    outs = [tmp_path / f"rank{r}.pt" for r in range(world)]
    run_world("conformance.distributed.ddp_rank", world, [str(tmp_path / "rank{rank}.pt")])
    states = [torch.load(o, weights_only=True) for o in outs]
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    for key in ("0.weight", "2.weight"):  # the prox really acted
        assert ws.num_distinct(states[0][key]) < states[0][key].numel()


# ---------------------------------------------------------------------------------------------
# the attach step on CUDA: no host synchronization, NaN/inf reported later
# ---------------------------------------------------------------------------------------------


def _cuda_model(
    cuda_graph: bool | str = "auto",
) -> tuple[nn.Sequential, torch.optim.Optimizer, ws.Attachment, Any, Any]:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    model = mlp(torch.float32, "cuda")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    handle = ws.attach(opt, 0.5, l1=0.01, cuda_graph=cuda_graph)
    x, y = data(torch.float32, "cuda")
    return model, opt, handle, x, y


@pytest.mark.req("TRAIN-20", "TRAIN-25")
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_cuda_attach_step_never_syncs(cuda_graph: bool) -> None:
    model, opt, handle, x, y = _cuda_model(cuda_graph)
    train_step(model, opt, x, y)  # warm-up: kernels compiled, pinned buffers allocated
    if cuda_graph:
        train_step(model, opt, x, y)  # the capture (torch.cuda.graph synchronizes once)
        assert handle.eager_reason is None and handle._graph.captures == 1
    torch.cuda.synchronize()
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    handle.check()
    want = ws.prox(model[0].weight.detach().double(), 0.0)  # the step ran (finite weights)
    assert torch.isfinite(want).all()
    assert handle.eager_reason == (None if cuda_graph else "cuda_graph=False")


@pytest.mark.req("TRAIN-20")
def test_cuda_attach_reports_nan_later() -> None:
    model, opt, handle, x, y = _cuda_model()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    train_step(model, opt, x, y)  # no host read here
    with pytest.raises(ValueError, match="non-finite"):
        handle.check()
    handle.check()  # reported once


@pytest.mark.req("TRAIN-21")
def test_a_strength_per_parameter() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)  # one group for every layer
    w0, w2 = model[0].weight, model[2].weight
    before = [w0.detach().clone(), w2.detach().clone()]
    ws.attach(opt, {w0: 0.5, w2: np.float32(0.05)})
    (group,) = opt.param_groups
    assert group["wsr_mask"] == [True, False, True, False]
    assert group["wsr_lam"] == [0.5, 0.0, pytest.approx(0.05), 0.0]
    x, y = data()
    twin = copy.deepcopy(model)
    plain = torch.optim.SGD(twin.parameters(), lr=0.2)
    train_step(model, opt, x, y)
    train_step(twin, plain, x, y)  # the same step without the prox
    for p, q, lam in (
        (w0, twin[0].weight, group["wsr_lam"][0]),
        (w2, twin[2].weight, group["wsr_lam"][2]),
    ):
        want = ws.prox(q.detach(), 0.2 * lam)
        torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-12)
    assert not torch.equal(w0.detach(), before[0]) and not torch.equal(w2.detach(), before[1])
    # the per-parameter list survives a state dict and resumes
    fresh = torch.optim.SGD(mlp().parameters(), lr=0.2)
    fresh.load_state_dict(opt.state_dict())
    assert fresh.param_groups[0]["wsr_lam"] == group["wsr_lam"]
    ws.attach(fresh, None).remove()


@pytest.mark.req("TRAIN-21")
def test_a_strength_per_parameter_refused_input_changes_nothing() -> None:
    model = mlp()
    opt = torch.optim.SGD(model[0].parameters(), lr=0.2)
    with pytest.raises(ValueError, match=r"shape \(3, 4\) in lam is not held"):
        ws.attach(opt, {model[0].weight: 0.1, model[2].weight: 0.1})
    with pytest.raises(ValueError, match=">= 0"):
        ws.attach(opt, {model[0].weight: -0.1})
    with pytest.raises(ValueError, match="pass no params"):
        ws.attach(opt, {model[0].weight: 0.1}, params=[model[0].weight])
    with pytest.raises(ValueError, match="empty mapping"):
        ws.attach(opt, {})
    assert wsr_keys(opt) == [{}]


# ---------------------------------------------------------------------------------------------
# the attach step as a CUDA graph (TRAIN-25): the logic on the CPU with a fake graph


class _NoHostReads(TorchDispatchMode):
    """Raises on any op that reads a device value on the host (forbidden while capturing)."""

    SYNCS = frozenset({"_local_scalar_dense", "item", "nonzero", "is_nonzero", "equal"})

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func.__name__.split(".")[0] in self.SYNCS:
            raise RuntimeError(f"host read {func.__name__} in a captured step")
        return func(*args, **(kwargs or {}))


class FakeGraph:
    """Stands in for torch.cuda.CUDAGraph: capture records the step (nothing runs), replay runs
    it with no host read allowed; ``fail`` makes the capture raise."""

    def __init__(self, fail: str | None = None) -> None:
        self.fail = fail
        self.fn: Any = None
        self.replays = 0

    def capture(self, fn: Any) -> None:
        if self.fail:
            raise RuntimeError(self.fail)
        self.fn = fn

    def replay(self) -> None:
        with _NoHostReads():
            self.fn()
        self.replays += 1


@pytest.fixture
def fake_graphs(monkeypatch: pytest.MonkeyPatch) -> list[FakeGraph]:
    """CPU tensors count as CUDA ones, and every graph made is a :class:`FakeGraph` (listed)."""
    made: list[FakeGraph] = []

    def new_graph(device: torch.device) -> FakeGraph:
        made.append(FakeGraph())
        return made[-1]

    monkeypatch.setattr(step_graph, "new_graph", new_graph)
    monkeypatch.setattr(step_graph, "supported", lambda t: True)
    return made


def _twins(cuda_graph: bool | str) -> tuple[Any, ...]:
    """A model attached with ``cuda_graph`` and its eager twin (same data, same settings)."""
    out: list[Any] = []
    for mode in (cuda_graph, False):
        model = mlp()
        opt = torch.optim.SGD(
            [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.1}],
            lr=0.2,
        )
        handle = ws.attach(opt, 0.3, l1=0.01, method="hull", cuda_graph=mode)
        out += [model, opt, handle]
    return tuple(out)


def _same(a: nn.Module, b: nn.Module) -> None:
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)


@pytest.mark.req("TRAIN-25")
def test_graph_captured_once_and_replayed(fake_graphs: list[FakeGraph]) -> None:
    model, opt, handle, twin, twin_opt, _ = _twins(True)
    x, y = data()
    for step in range(4):
        for o in (opt, twin_opt):  # the strengths change every step: copied before each replay
            for group in o.param_groups:
                group["lr"] *= 0.7
        train_step(model, opt, x, y)
        train_step(twin, twin_opt, x, y)
        _same(model, twin)
        if step == 0:
            assert handle.eager_reason is not None and handle.eager_reason.startswith("warm-up")
            assert fake_graphs == []
        else:
            assert handle.eager_reason is None
    assert len(fake_graphs) == 1 and fake_graphs[0].replays == 3
    # a change of what the step depends on (a dim): warm-up again, then a new capture
    for o in (opt, twin_opt):
        o.param_groups[1]["wsr_dim"] = 1
    for step in range(3):
        train_step(model, opt, x, y)
        train_step(twin, twin_opt, x, y)
        _same(model, twin)
        assert (handle.eager_reason is None) == (step > 0)
    assert len(fake_graphs) == 2 and fake_graphs[1].replays == 2
    assert handle._graph.captures == 2
    # a strength that drops to 0 changes which tensors get a prox: captured anew
    for o in (opt, twin_opt):
        o.param_groups[0]["wsr_lam"] = 0.0
    for _ in range(2):
        train_step(model, opt, x, y)
        train_step(twin, twin_opt, x, y)
        _same(model, twin)
    assert len(fake_graphs) == 3
    handle.remove()
    assert handle._graph._graph is None  # the graph (and its memory pool) is freed


@pytest.mark.req("TRAIN-25", "TRAIN-22")
def test_graph_keeps_the_skipped_step_select(fake_graphs: list[FakeGraph]) -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.2, fused=True)  # it reads found_inf
    handle = ws.attach(opt, 0.3, method="search", cuda_graph=True)
    x, y = data()
    opt.found_inf = torch.zeros(())  # type: ignore[attr-defined]
    for _ in range(2):  # warm-up, then the capture
        train_step(model, opt, x, y)
    assert len(fake_graphs) == 1 and handle.eager_reason is None
    w = model[0].weight
    before = w.detach().clone()
    opt.found_inf = torch.ones(())  # type: ignore[attr-defined]
    train_step(model, opt, x, y)  # replayed with the flag set: nothing changes
    assert torch.equal(w.detach(), before)
    assert fake_graphs[0].replays == 2
    before = w.detach().clone()
    opt.found_inf = torch.zeros(())  # type: ignore[attr-defined]
    train_step(model, opt, x, y)
    assert w.grad is not None
    want = ws.prox(before - 0.2 * w.grad, 0.2 * 0.3)
    torch.testing.assert_close(w.detach(), want, rtol=0, atol=1e-12)


@pytest.mark.req("TRAIN-25")
def test_graph_capture_failure_falls_back_and_says_why(
    fake_graphs: list[FakeGraph], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(step_graph, "new_graph", lambda device: FakeGraph("no capture here"))
    model, opt, handle, twin, twin_opt, _ = _twins("auto")
    x, y = data()
    train_step(model, opt, x, y)  # warm-up
    with pytest.warns(UserWarning, match="eagerly.*capture failed.*no capture here"):
        train_step(model, opt, x, y)
    reason = handle.eager_reason
    assert reason is not None and "no capture here" in reason
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once; the same key is not captured again
        for _ in range(2):
            train_step(model, opt, x, y)
    for _ in range(4):
        train_step(twin, twin_opt, x, y)
    _same(model, twin)
    assert handle.eager_reason == reason


@pytest.mark.req("TRAIN-25")
def test_graph_option_and_reasons() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    with pytest.raises(ValueError, match="cuda_graph must be 'auto', True or False, got 'yes'"):
        ws.attach(opt, 0.1, cuda_graph="yes")
    with pytest.raises(TypeError, match="cuda_graph must be 'auto', True or False, got int"):
        ws.attach(opt, 0.1, cuda_graph=1)  # type: ignore[arg-type]
    assert wsr_keys(opt) == [{}]  # nothing written on error
    x, y = data()
    handle = ws.attach(opt, 0.1)  # "auto": eager on the CPU, silently
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_step(model, opt, x, y)
    assert handle.eager_reason == "parameters not on CUDA"
    handle.remove()
    handle = ws.attach(opt, 0.1, cuda_graph=True)  # asked for: warned once
    with pytest.warns(UserWarning, match="eagerly.*parameters not on CUDA"):
        train_step(model, opt, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_step(model, opt, x, y)
    handle.remove()
    handle = ws.attach(opt, 0.1, cuda_graph=False)
    train_step(model, opt, x, y)
    assert handle.eager_reason == "cuda_graph=False"


@pytest.mark.req("TRAIN-25")
def test_graph_obstacles(fake_graphs: list[FakeGraph]) -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    x, y = data()
    for method in ("pava", "rounds"):  # the host method, and one reading a flag per round
        handle = ws.attach(opt, 0.1, method=method)
        train_step(model, opt, x, y)
        assert handle.eager_reason == f"method {method!r} reads device values on the host"
        handle.remove()
    assert fake_graphs == []


@pytest.mark.req("TRAIN-25")
def test_cuda_graph_step_equals_eager() -> None:
    """The real capture (CUDA only: make gpu-check): equal to the eager step, strengths updated."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    runs = []
    for mode in (True, False):
        model = mlp(torch.float32, "cuda")
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        handle = ws.attach(opt, 0.5, l1=0.01, cuda_graph=mode)
        x, y = data(torch.float32, "cuda")
        for _ in range(5):
            opt.param_groups[0]["lr"] *= 0.8
            train_step(model, opt, x, y)
        runs.append((model, handle))
    (graphed, handle), (eager, _) = runs
    assert handle.eager_reason is None and handle._graph.captures == 1
    for p, q in zip(graphed.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
