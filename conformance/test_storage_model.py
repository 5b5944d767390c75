"""Storage on real models (spec page ``storage``): all or nothing, shared Parameters (tied
embeddings), dtypes, the meta device, channels_last, and optimizers built before ``load``."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from torch import nn
from torch.nn.utils import parametrize

import weightshare as ws
from weightshare import _compress, _serialize, _structures, _tie


def _quantized(model: nn.Module, step: float = 0.25, seed: int = 0) -> nn.Module:
    """Weights on a grid of ``step`` with about a third exact zeros, so compress ties and
    sparsifies them."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.round(torch.randn_like(p) * 2) * step * (torch.rand_like(p) > 0.3))
    return model


class Pair(nn.Module):
    """An embedding and a linear head sharing one weight (tied input and output embeddings)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(12, 6)
        self.head = nn.Linear(6, 12, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(x))


class TinyLM(nn.Module):
    """A small transformer language model with tied input and output embeddings."""

    def __init__(self, vocab: int = 16, width: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.block = nn.TransformerEncoderLayer(
            width, nhead=2, dim_feedforward=16, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.emb(x)))


def _lm() -> TinyLM:
    return _quantized(TinyLM()).eval()  # type: ignore[return-value]


def _state(model: nn.Module) -> tuple[Any, ...]:
    """Everything a failed call must leave as it was: the structure, every Parameter object,
    which modules are parametrized, and every state_dict value."""
    values = {k: v.detach().clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    return (
        repr(model),
        [(n, id(p), tuple(p.shape)) for n, p in model.named_parameters(remove_duplicate=False)],
        [(n, parametrize.is_parametrized(m)) for n, m in model.named_modules()],
        values,
    )


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    va, vb = a[3], b[3]
    return (
        a[:3] == b[:3]
        and va.keys() == vb.keys()
        and all(va[k].dtype == vb[k].dtype and torch.equal(va[k], vb[k]) for k in va)
    )


# ------------------------------------------------------------------------------------------------
# STORE-18: all or nothing, also when a part fails while it is applied


def _fail_at(monkeypatch: pytest.MonkeyPatch, owner: Any, attr: str, k: int) -> list[int]:
    """Make the ``k``-th call of ``owner.attr`` raise; returns the call counter."""
    real = getattr(owner, attr)
    calls = [0]

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == k:
            raise RuntimeError("injected failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, attr, wrapped)
    return calls


#: every step a load, compress or tie applies: registering and removing structures, sharing
#: them, copying values
_STAGES = [
    (parametrize, "register_parametrization"),
    (parametrize, "remove_parametrizations"),
    (_structures, "copy_into"),
    (_serialize, "copy_into"),
    (_compress, "copy_into"),
    (_structures, "share"),
    (_structures, "unshare"),
    (_tie, "share"),
    (_tie, "unshare"),
]


def _fail_everywhere(make: Callable[[], tuple[nn.Module, Callable[[], object]]], x: Any) -> int:
    """For every stage and every call of it: build a model, fail the call there, and check the
    model is unchanged (and computes the same). Returns how many failures were injected."""
    injected = 0
    for owner, attr in _STAGES:
        k = 1
        while True:
            model, call = make()
            with torch.no_grad():
                before, out = _state(model), model(x)
            with pytest.MonkeyPatch.context() as mp:
                calls = _fail_at(mp, owner, attr, k)
                try:
                    call()
                except RuntimeError as err:
                    assert "injected failure" in str(err)
                else:
                    assert calls[0] < k
                    break
            assert _same(_state(model), before), (attr, k)
            with torch.no_grad():
                assert torch.equal(model(x), out)
            injected, k = injected + 1, k + 1
    return injected


def _lm_with(factorized: str) -> TinyLM:
    """The tiny LM, compressed, with ``block.<factorized>`` factorized (its factors are new
    Parameters)."""
    lm = _lm()
    linear = getattr(lm.block, factorized)
    with torch.no_grad():
        linear.weight.copy_(torch.randn_like(linear.weight))  # no shared values: stays dense
    ws.compress(lm)
    ws.factorize(linear, depth=2)
    return lm


@pytest.mark.req("STORE-18")
@pytest.mark.parametrize("fresh_structured", [False, True])
def test_load_is_all_or_nothing_at_every_stage(tmp_path: Path, fresh_structured: bool) -> None:
    path = tmp_path / "lm.safetensors"
    ws.save(_lm_with("linear1"), path)

    def make() -> tuple[nn.Module, Callable[[], object]]:
        # a structured model: its structures are removed, then the file's applied
        fresh = _lm_with("linear1") if fresh_structured else _quantized(TinyLM(), seed=1).eval()
        return fresh, lambda: ws.load(fresh, path)

    assert _fail_everywhere(make, torch.randint(0, 16, (2, 5))) >= 10


@pytest.mark.req("STORE-18")
def test_compress_and_tie_are_all_or_nothing_at_every_stage() -> None:
    def compressed() -> tuple[nn.Module, Callable[[], object]]:
        lm = _lm()
        ws.factorize(lm.block.linear1, depth=2)  # compress collapses it: a new Parameter
        return lm, lambda: ws.compress(lm)

    assert _fail_everywhere(compressed, torch.randint(0, 16, (2, 5))) >= 10

    def tied() -> tuple[nn.Module, Callable[[], object]]:
        pair = _quantized(Pair())
        return pair, lambda: ws.tie(pair, "emb.weight")

    def untied() -> tuple[nn.Module, Callable[[], object]]:
        pair = _quantized(Pair())
        ws.tie(pair, "emb.weight")
        return pair, lambda: ws.untie(pair, "emb.weight")

    assert _fail_everywhere(tied, torch.arange(12)) >= 2
    assert _fail_everywhere(untied, torch.arange(12)) >= 2


@pytest.mark.req("STORE-18")
def test_a_failed_load_keeps_the_old_storage_and_values(tmp_path: Path) -> None:
    ws.save(_lm_with("linear1"), tmp_path / "lm.safetensors")
    fresh = _quantized(TinyLM(), seed=1).eval()
    weight = fresh.block.linear1.weight
    ptr, values = weight.data_ptr(), weight.detach().clone()
    with pytest.MonkeyPatch.context() as mp:
        _fail_at(mp, parametrize, "register_parametrization", 3)
        with pytest.raises(RuntimeError, match="injected"):
            ws.load(fresh, tmp_path / "lm.safetensors")
    assert fresh.block.linear1.weight is weight and weight.data_ptr() == ptr
    assert torch.equal(weight, values)


# ------------------------------------------------------------------------------------------------
# STORE-19 and TRAIN-25: a Parameter shared by several modules


@pytest.mark.req("STORE-19")
def test_compress_save_load_of_a_shared_embedding(tmp_path: Path) -> None:
    pair = _quantized(Pair())
    x = torch.arange(12)
    with torch.no_grad():
        before = pair(x)
        ws.compress(pair)
        assert torch.equal(pair(x), before)
    plist = pair.emb.parametrizations.weight
    assert pair.head.parametrizations.weight is plist  # one structure, both modules see it
    assert len(list(pair.parameters())) == 1
    path = tmp_path / "pair.safetensors"
    ws.save(pair, path)
    with safe_open(path, framework="pt") as f:
        assert sorted(f.keys()) == ["emb.weight.bitmap", "emb.weight.labels", "emb.weight.values"]
        assert '"shared": {"head.weight": "emb.weight"}' in f.metadata()["weightshare"]
    assert [r.name for r in ws.storage(pair).tensors] == ["emb.weight"]
    fresh = Pair()
    ws.load(fresh, path)
    assert fresh.head.parametrizations.weight is fresh.emb.parametrizations.weight
    assert len(list(fresh.parameters())) == 1
    with torch.no_grad():
        assert torch.equal(fresh(x), before)
    # the gradient of the shared values sums both uses
    fresh(x).sum().backward()
    grad = fresh.emb.parametrizations.weight.original.grad
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.req("STORE-19")
def test_tiny_language_model_with_tied_embeddings(tmp_path: Path) -> None:
    lm, x = _lm(), torch.randint(0, 16, (3, 7))
    with torch.no_grad():
        before = lm(x)
        ws.compress(lm)
        assert torch.equal(lm(x), before)
    assert lm.head.parametrizations.weight is lm.emb.parametrizations.weight
    path = tmp_path / "lm.safetensors"
    ws.save(lm, path)
    with safe_open(path, framework="pt") as f:
        assert not any(k.startswith("head.") for k in f.keys())
    fresh = _quantized(TinyLM(), seed=5).eval()
    ws.load(fresh, path)
    assert fresh.head.parametrizations.weight is fresh.emb.parametrizations.weight
    with torch.no_grad():
        assert torch.equal(fresh(x), before)
    # the file of the loaded model is the same file
    ws.save(fresh, tmp_path / "again.safetensors")
    assert (tmp_path / "again.safetensors").read_bytes() == path.read_bytes()
    # into a model that does not share the weights: both get the one stored tensor
    untied = _quantized(TinyLM(), seed=6).eval()
    untied.head.weight = nn.Parameter(torch.zeros(16, 8))
    ws.load(untied, path)
    assert untied.head.parametrizations.weight is not untied.emb.parametrizations.weight
    with torch.no_grad():
        assert torch.equal(untied(x), before)


@pytest.mark.req("STORE-19")
def test_a_file_with_two_different_weights_does_not_load_into_a_shared_one(
    tmp_path: Path,
) -> None:
    saved = _quantized(TinyLM(), seed=2)
    saved.head.weight = nn.Parameter(torch.round(torch.randn(16, 8)))  # untied, other values
    path = tmp_path / "untied.safetensors"
    ws.save(saved, path)
    fresh = _lm()
    before = _state(fresh)
    with pytest.raises(ValueError, match=r"one shared tensor in the model .* 'emb.weight'"):
        ws.load(fresh, path)
    assert _same(_state(fresh), before)
    # two equal weights (an older file that stored a shared weight twice) load
    with torch.no_grad():
        saved.head.weight.copy_(saved.emb.weight)
    ws.save(saved, path)
    ws.load(fresh, path)
    assert fresh.head.weight is fresh.emb.weight
    assert torch.equal(fresh.emb.weight, saved.emb.weight)


@pytest.mark.req("STORE-19")
def test_a_module_used_twice(tmp_path: Path) -> None:
    lin = nn.Linear(5, 5)
    model = _quantized(nn.Sequential(lin, nn.ReLU(), lin))
    x = torch.randn(4, 5)
    with torch.no_grad():
        before = model(x)
        ws.compress(model)
        assert torch.equal(model(x), before)
    path = tmp_path / "twice.safetensors"
    ws.save(model, path)
    fresh_lin = nn.Linear(5, 5)
    fresh = nn.Sequential(fresh_lin, nn.ReLU(), fresh_lin)
    ws.load(fresh, path)
    with torch.no_grad():
        assert torch.equal(fresh(x), before)


@pytest.mark.req("TRAIN-25")
def test_tie_and_untie_a_shared_parameter() -> None:
    pair = _quantized(Pair())
    x = torch.arange(12)
    weight = pair.emb.weight
    with torch.no_grad():
        before = pair(x)
    ws.tie(pair, "emb.weight")
    assert pair.head.parametrizations.weight is pair.emb.parametrizations.weight
    assert pair.emb.parametrizations.weight.original is weight  # TRAIN-10: the same Parameter
    with torch.no_grad():
        assert torch.equal(pair(x), before)
    ws.untie(pair, "head.weight")
    assert pair.emb.weight is weight and pair.head.weight is weight
    assert not parametrize.is_parametrized(pair.emb) and not parametrize.is_parametrized(pair.head)
    with torch.no_grad():
        assert torch.equal(pair(x), before)
    with pytest.raises(ValueError, match="no submodule 'nope'"):
        ws.tie(pair, "nope.weight")


# ------------------------------------------------------------------------------------------------
# STORE-20: half precision; STORE-21: the meta device; STORE-22: memory formats


@pytest.mark.req("STORE-20")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_eigen_in_half_precision(tmp_path: Path, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(6, 6).to(dtype)
    ws.symmetric(lin, kind="eigen", rank=2)
    free = lin.parametrizations.weight.original
    assert free.dtype == dtype and free.shape == (6 * 2 + 2,)
    w = lin.weight
    assert w.dtype == dtype and w.shape == (6, 6)
    torch.testing.assert_close(w.float(), w.T.float(), atol=0.02, rtol=0)
    # loading a float32 eigen file into a half model
    saved = nn.Linear(6, 6)
    ws.symmetric(saved, kind="eigen", rank=2)
    ws.save(saved, tmp_path / "eigen.safetensors")
    fresh = nn.Linear(6, 6).to(dtype)
    ws.load(fresh, tmp_path / "eigen.safetensors")
    expected = saved.parametrizations.weight.original.to(dtype)
    assert torch.equal(fresh.parametrizations.weight.original, expected)


@pytest.mark.req("STORE-21")
def test_load_into_a_meta_model_refuses_before_changing_anything(tmp_path: Path) -> None:
    saved = _quantized(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)))
    ws.compress(saved)
    ws.save(saved, tmp_path / "m.safetensors")
    with torch.device("meta"):
        fresh = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    before = repr(fresh), [id(p) for p in fresh.parameters()]
    with pytest.raises(ValueError, match=r"\['0.bias', '0.weight', .*meta device.*to_empty"):
        ws.load(fresh, tmp_path / "m.safetensors")
    assert (repr(fresh), [id(p) for p in fresh.parameters()]) == before
    assert not any(parametrize.is_parametrized(m) for m in fresh.modules())
    fresh.to_empty(device="cpu")  # materialized, it loads
    ws.load(fresh, tmp_path / "m.safetensors")
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.equal(fresh(x), saved(x))


def _conv_net() -> nn.Module:
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    return _quantized(net).to(memory_format=torch.channels_last)


@pytest.mark.req("STORE-22")
def test_compress_and_load_keep_channels_last(tmp_path: Path) -> None:
    net = _conv_net()
    x = torch.randn(2, 3, 10, 10).to(memory_format=torch.channels_last)
    with torch.no_grad():
        before = net(x)
        ws.compress(net)
        assert torch.equal(net(x), before)
    kinds = {type(m.parametrizations.weight[0]).__name__ for m in (net[0], net[2])}
    assert kinds <= {"Tied", "Sparse"} and kinds
    for conv in (net[0], net[2]):
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    ws.save(net, tmp_path / "conv.safetensors")
    fresh = _conv_net()
    ws.load(fresh, tmp_path / "conv.safetensors")
    for conv in (fresh[0], fresh[2]):
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(fresh(x), before)


@pytest.mark.req("STORE-22")
def test_sparse_and_tied_keep_channels_last() -> None:
    conv = nn.Conv2d(4, 6, 3).to(memory_format=torch.channels_last)
    with torch.no_grad():  # mostly zeros: sparse
        conv.weight.mul_(torch.rand_like(conv.weight) < 0.05)
    ws.compress(conv)
    assert type(conv.parametrizations.weight[0]).__name__ == "Sparse"
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    conv = nn.Conv2d(4, 6, 3).to(memory_format=torch.channels_last)
    ws.tie(conv, labels=torch.randint(0, 3, conv.weight.shape))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------------------------------------
# STORE-23: an optimizer built before load


@pytest.mark.req("STORE-23")
def test_an_optimizer_holding_dropped_parameters_warns_at_step(tmp_path: Path) -> None:
    saved = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    ws.factorize(saved[0], depth=2)
    ws.save(saved, tmp_path / "f.safetensors")
    fresh = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    early = torch.optim.SGD(fresh.parameters(), lr=0.1)
    ws.load(fresh, tmp_path / "f.safetensors")  # 0.weight becomes two new factors
    late = torch.optim.SGD(fresh.parameters(), lr=0.1)
    fresh(torch.randn(3, 4)).sum().backward()
    with pytest.warns(UserWarning, match=r"1 of its Parameters .* 0.weight \(replaced by ws.load"):
        early.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        early.step()  # once per optimizer
        late.step()  # built after load: no warning
    # a load that keeps every Parameter (reshaped in place) warns nothing
    plain = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    tied = _quantized(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)))
    ws.compress(tied)
    ws.save(tied, tmp_path / "t.safetensors")
    opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    ws.load(plain, tmp_path / "t.safetensors")
    plain(torch.randn(3, 4)).sum().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()
