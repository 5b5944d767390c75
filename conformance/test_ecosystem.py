"""Conformance of the training integration with the rest of the ecosystem (spec/training.md,
*Training in the ecosystem*): mixed precision, fork and DataLoader workers, copies of attached
optimizers, edited settings, added param groups, Lightning."""

from __future__ import annotations

import copy
import faulthandler
import multiprocessing
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import weightshare as ws
from weightshare._isotonic import host, pava

# ---------------------------------------------------------------------------------------------
# the host threads (PROX-23)


def _host_calls() -> list[torch.Tensor]:
    """Every public host entry point, sized so that each one hands work to the pool (and the
    torch ops stay below torch's own intra-op parallelism, which a forked child cannot use)."""
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(400, 250, generator=g)
    small = [torch.randn(20, 30, generator=g) for _ in range(4)]
    out = [ws.prox(rows, 0.1, dim=1, method="pava"), *ws.prox_many(small, 0.1, dim=1)]
    out.append(ws.prox_(small[0].clone(), 0.2))
    saved = host._idle_cores
    host._idle_cores = lambda: 1.0  # split the long vector over the threads
    try:
        out.append(ws.prox(torch.randn(host.SPLIT_MIN, generator=g), 0.1))
    finally:
        host._idle_cores = saved
    params = [torch.nn.Parameter(t.clone()) for t in small]
    opt = torch.optim.SGD(params, lr=0.1)
    handle = ws.attach(opt, 0.5, dim=1)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    handle.remove()
    return [*out, *(p.detach() for p in params)]


def _child_main(fn: Callable[[], bool]) -> None:
    faulthandler.dump_traceback_later(100, exit=True)  # a hang: its stacks on stderr
    exit(0 if fn() else 1)


def _in_child(fn: Callable[[], bool]) -> int | None:
    """Run ``fn`` in a forked child; its exit code (0: ``fn`` returned True), None if it hung."""
    context = multiprocessing.get_context("fork")
    with warnings.catch_warnings():  # Python >= 3.12 warns about forking a threaded process
        warnings.simplefilter("ignore", DeprecationWarning)
        proc = context.Process(target=_child_main, args=(fn,))
        proc.start()
    proc.join(120)  # a guard against a hang, not a timing
    if proc.is_alive():
        proc.kill()
        proc.join()
        return None
    return proc.exitcode


@pytest.mark.req("PROX-23")
def test_a_forked_child_runs_every_host_entry_point() -> None:
    if pava.threads() < 2:
        pytest.skip("one host thread: the pool is never used")
    want = _host_calls()  # the parent's pool now has live threads
    assert pava._POOL is not None

    def child() -> bool:
        # compared in NumPy: torch's own parallel ops may hang in a forked child (PROX-23)
        got = _host_calls()
        return all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(got, want, strict=True))

    assert _in_child(child) == 0, "the forked child hung or differed"


@pytest.mark.req("PROX-23")
def test_threads_follow_torch() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert pava.threads() == 1
        x = torch.randn(400, 250)
        one = ws.prox(x, 0.1, dim=1)
        torch.set_num_threads(2)
        assert pava.threads() == min(2, len(pava.os.sched_getaffinity(0)))
        assert torch.equal(ws.prox(x, 0.1, dim=1), one)  # the same on any thread count
        assert pava.pool()._max_workers == pava.threads()
    finally:
        torch.set_num_threads(before)


@pytest.mark.req("PROX-23")
def test_nested_host_work_never_waits_on_itself() -> None:
    """Several batched tensors of one prox_many call: each pooled job's rows run inline."""
    g = torch.Generator().manual_seed(1)
    tensors = [torch.randn(400, 250, generator=g) for _ in range(3)]
    fused = ws.prox_many(tensors, 0.1, dim=1)
    for t, out in zip(tensors, fused, strict=True):
        assert torch.equal(out, ws.prox(t, 0.1, dim=1))


# ---------------------------------------------------------------------------------------------
# mixed precision: a skipped step applies no prox (TRAIN-22)


def _optimizer(name: str, params: list[torch.nn.Parameter], fused: bool) -> torch.optim.Optimizer:
    kinds = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    return kinds[name](params, lr=0.05, fused=fused)


def _scaled_step(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    x: Any,
    bad: bool,
) -> None:
    opt.zero_grad()
    loss = model(x).square().mean() * (float("inf") if bad else 1.0)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


@pytest.mark.req("TRAIN-22")
@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain"])
def test_a_skipped_mixed_precision_step_applies_no_prox(
    device: str, name: str, fused: bool
) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 8, device=device)
    opt = _optimizer(name, list(model.parameters()), fused)
    ws.attach(opt, 0.3, l1=0.01)
    scaler = torch.amp.GradScaler(device)
    x = torch.randn(4, 16, device=device)
    _scaled_step(model, opt, scaler, x, bad=False)
    assert ws.num_distinct(model.weight) < 128  # a finite step: the prox acted
    before = [p.detach().clone() for p in model.parameters()]
    _scaled_step(model, opt, scaler, x, bad=True)  # inf gradients: the step is skipped
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)
    _scaled_step(model, opt, scaler, x, bad=False)  # and the next finite one proceeds
    assert not torch.equal(model.weight, before[0])


@pytest.mark.req("TRAIN-22")
def test_any_optimizer_exposing_found_inf() -> None:
    class Custom(torch.optim.Optimizer):
        def __init__(self, params: Any) -> None:
            super().__init__(params, {"lr": 0.1})

        @torch.no_grad()
        def step(self, closure: Any = None) -> None:
            found = getattr(self, "found_inf", None)
            if found is not None and bool(found):
                return
            for group in self.param_groups:
                for p in group["params"]:
                    p.add_(p.grad, alpha=-group["lr"])

    w = torch.nn.Parameter(torch.randn(8, 8, generator=torch.Generator().manual_seed(2)))
    opt = Custom([w])
    ws.attach(opt, 1.0)
    w.grad = torch.ones_like(w)
    before = w.detach().clone()
    opt.found_inf = torch.ones(())  # type: ignore[attr-defined]
    opt.step()
    assert torch.equal(w, before)
    opt.found_inf = torch.zeros(())  # type: ignore[attr-defined]
    opt.step()
    assert ws.num_distinct(w) < 64


@pytest.mark.req("TRAIN-22", "TRAIN-20")
def test_cuda_skipped_step_is_a_device_side_select() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 32, device="cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)
    handle = ws.attach(opt, 0.3)
    scaler = torch.amp.GradScaler("cuda")
    x = torch.randn(8, 64, device="cuda")
    _scaled_step(model, opt, scaler, x, bad=False)  # warm-up
    before = model.weight.detach().clone()
    opt.zero_grad()
    scaler.scale(model(x).square().mean() * float("inf")).backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        scaler.step(opt)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    scaler.update()
    handle.check()
    assert torch.equal(model.weight, before)


# ---------------------------------------------------------------------------------------------
# edited settings, added groups, copies, fresh optimizers (TRAIN-22, TRAIN-23)


def _model_and_opt() -> tuple[torch.nn.Sequential, torch.optim.Optimizer]:
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4))
    opt = torch.optim.SGD(
        [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.02}],
        lr=0.1,
        momentum=0.9,
    )
    return model, opt


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(4))
    model(x).square().mean().backward()
    opt.step()


@pytest.mark.req("TRAIN-22")
@pytest.mark.parametrize(
    ("key", "value", "error", "match"),
    [
        ("wsr_lam", -1.0, ValueError, r"param group 1 wsr_lam must be >= 0"),
        ("wsr_lam", float("nan"), ValueError, r"param group 1 wsr_lam must be finite"),
        ("wsr_lam", [0.1], ValueError, r"param group 1 wsr_lam has 1 entries for 2 params"),
        ("wsr_l1", "0.1", TypeError, r"param group 1 wsr_l1 must be a real number"),
        ("wsr_l1", float("inf"), ValueError, r"param group 1 wsr_l1 must be finite"),
        ("wsr_dim", 5, IndexError, r"dim 5 is out of range for param group 1"),
        ("wsr_dim", 1.5, TypeError, r"param group 1 wsr_dim must be an int or None"),
        ("wsr_method", "fast", ValueError, r"param group 1 wsr_method: unknown method 'fast'"),
        ("wsr_mask", [True], ValueError, r"param group 1 wsr_mask has 1 entries for 2 params"),
        ("wsr_mask", None, ValueError, r"param group 1 lacks the keys \['wsr_mask'\]"),
    ],
)
def test_invalid_edited_settings_raise_at_the_next_step(
    key: str, value: object, error: type[Exception], match: str
) -> None:
    model, opt = _model_and_opt()
    ws.attach(opt, 0.2)
    _step(model, opt)
    if value is None:
        del opt.param_groups[1][key]
    else:
        opt.param_groups[1][key] = value
    with pytest.raises(error, match=match):
        _step(model, opt)


@pytest.mark.req("TRAIN-22")
def test_a_group_added_after_attach() -> None:
    model, opt = _model_and_opt()
    ws.attach(opt, 0.5, params=[model[0].weight])
    extra = torch.nn.Parameter(torch.randn(6, 6, generator=torch.Generator().manual_seed(5)))
    opt.add_param_group({"params": [extra], "lr": 0.1})
    extra.grad = torch.zeros_like(extra)
    before = extra.detach().clone()
    with pytest.warns(UserWarning, match=r"param group\(s\) \[2\] were added after attach"):
        _step(model, opt)
    assert torch.equal(extra, before)  # not regularised
    _step(model, opt)  # warned once: a second step is silent (warnings are errors here)
    # a group added with its own keys is regularised like any other
    own = torch.nn.Parameter(before.clone())
    opt.add_param_group(
        {"params": [own], "lr": 0.1, "wsr_lam": 5.0, "wsr_l1": 0.0, "wsr_dim": None,
         "wsr_method": "auto", "wsr_mask": [True]}
    )  # fmt: skip
    own.grad = torch.zeros_like(own)
    _step(model, opt)
    assert ws.num_distinct(own) < 36


@pytest.mark.req("TRAIN-23")
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_optimizer_carries_the_attachment(how: str) -> None:
    model, opt = _model_and_opt()
    ws.attach(opt, 0.4, l1=0.01, dim=1)
    _step(model, opt)
    if how == "deepcopy":
        model2, opt2 = copy.deepcopy((model, opt))  # one memo: opt2 holds model2's parameters
        _step(model, opt)
        _step(model2, opt2)
        for p, q in zip(model.parameters(), model2.parameters(), strict=True):
            assert torch.equal(p, q)  # the copy applied the same prox
    else:
        copied = pickle.loads(pickle.dumps(opt))
        params = [p for g in copied.param_groups for p in g["params"]]
        for p in params:
            p.grad = torch.zeros_like(p)
        lrs = [g["lr"] for g in copied.param_groups]
        before = [p.detach().clone() for p in params]
        copied.step()
        w = copied.param_groups[0]["params"][0]
        mom = copied.state[w]["momentum_buffer"]
        plain = before[0] - lrs[0] * mom  # the SGD step alone (zero gradient: mom = 0.9 mom)
        assert not torch.equal(w.detach(), plain)  # then the prox moved it
    handle = ws.attach  # the copy is attached now: attaching again is refused
    with pytest.raises(ValueError, match="already has an attached prox"):
        handle(opt2 if how == "deepcopy" else copied, 1.0)


@pytest.mark.req("TRAIN-23")
def test_a_removed_attachment_is_not_copied() -> None:
    _, opt = _model_and_opt()
    ws.attach(opt, 0.4).remove()
    copied = copy.deepcopy(opt)
    assert type(copied.defaults) is dict
    assert not any(k.startswith("wsr_") for g in copied.param_groups for k in g)


# ---------------------------------------------------------------------------------------------
# the rest of the ecosystem (TRAIN-24)


class _ProxData(torch.utils.data.Dataset[torch.Tensor]):
    """Items made by the host prox inside the DataLoader's worker processes."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(i)
        return ws.prox_many([torch.randn(20, 30, generator=g) for _ in range(3)], 0.1, dim=1)[0]


@pytest.mark.req("TRAIN-24", "PROX-23")
def test_dataloader_workers_call_the_host_prox() -> None:
    _host_calls()  # the parent used its pool first
    loader = torch.utils.data.DataLoader(
        _ProxData(), batch_size=4, num_workers=2, multiprocessing_context="fork", timeout=120
    )
    with warnings.catch_warnings():  # Python >= 3.12 warns about forking a threaded process
        warnings.simplefilter("ignore", DeprecationWarning)
        batches = list(loader)
    want = torch.stack([_ProxData()[i] for i in range(8)])
    assert torch.equal(torch.cat(batches), want)


@pytest.mark.req("TRAIN-24")
def test_gradient_accumulation_proxes_once_per_step() -> None:
    """The prox runs after ``optimizer.step()``, not after each ``backward()``."""
    model, opt = _model_and_opt()
    twin, twin_opt = copy.deepcopy((model, opt))
    ws.attach(opt, 0.3)
    calls: list[int] = []
    opt.register_step_post_hook(lambda *_: calls.append(1))
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(6))
    for m, o in ((model, opt), (twin, twin_opt)):
        o.zero_grad()
        for chunk in x.split(2):  # four micro-batches, one step
            (m(chunk).square().mean() / 4).backward()
        o.step()
    assert calls == [1]
    tau = 0.1 * 0.3
    want = ws.prox(twin[0].weight.detach(), tau)
    torch.testing.assert_close(model[0].weight.detach(), want, rtol=0, atol=0)


_LIGHTNING = Path(__file__).parents[1] / "spec" / "_snippets" / "lightning_example.py"


@pytest.mark.req("TRAIN-24")
def test_training_page_lightning_example_runs() -> None:
    pytest.importorskip("lightning", reason="Lightning is not installed")
    namespace: dict[str, Any] = {"__name__": "lightning_example"}
    exec(compile(_LIGHTNING.read_text(), str(_LIGHTNING), "exec"), namespace)
    with warnings.catch_warnings():  # Lightning's own advice (workers, loggers) is not ours
        warnings.simplefilter("ignore")
        model = namespace["main"]()
    weight = model.net[0].weight
    assert ws.num_distinct(weight) < weight.numel()  # the attached prox acted
