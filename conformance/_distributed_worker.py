"""One rank of the DTensor / FSDP2 conformance checks (spec/training.md, DIST-*).

``python -m conformance._distributed_worker RANK WORLD PORT OUT [--backend B]`` runs every check
of ``CHECKS`` on a world of WORLD ranks and writes ``{check: "ok" | the error}`` as JSON to OUT
(``{rank}`` in OUT is the rank). Every check runs on every rank, in the same order.

``python -m conformance._distributed_worker --world N [--backend nccl]`` starts the N ranks itself,
prints each check's result and exits non-zero on any failure: the entry point of the GPU check
(NCCL, one CUDA device per rank, one rank per device; a single GPU runs ``--world 1``).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import (
    DeviceMesh,
    DTensor,
    Partial,
    Replicate,
    Shard,
    distribute_tensor,
    init_device_mesh,
)
from torch.utils._python_dispatch import TorchDispatchMode

import weightshare as ws
import weightshare._distributed as ws_dist
from weightshare import reference as ref

TOL = {"rtol": 1e-9, "atol": 1e-9}
_COLLECTIVE_NAMESPACES = ("c10d", "_c10d_functional", "_c10d_functional_autograd")


# ---------------------------------------------------------------------------------------------
# helpers


class Traffic(TorchDispatchMode):
    """Counts the collectives run while active, and the bytes this rank receives from others."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []
        self.bytes_in = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.namespace in _COLLECTIVE_NAMESPACES and "wait" not in func.__name__:
            name = func.__name__.split(".")[0]
            if name != "_wrap_tensor_autograd":
                self.ops.append(name)
                self.bytes_in += _received(name, args)
        return out


def _nbytes(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, list | tuple):
        return sum(_nbytes(y) for y in x)
    return 0


def _received(name: str, args: tuple) -> int:
    """Bytes that arrive from other ranks in one collective (the payload, not the algorithm's)."""
    if name == "all_gather_into_tensor":  # funcol: (input, group_size, group_name)
        return _nbytes(args[0]) * (int(args[1]) - 1)
    if name == "allgather_":  # c10d: (output lists, inputs, ...)
        return _nbytes(args[0]) - _nbytes(args[1])
    if name == "_allgather_base_":  # c10d: (output, input, ...)
        return _nbytes(args[0]) - _nbytes(args[1])
    if name == "alltoall_base_":  # c10d: (output, input, group, output splits, input splits, ...)
        out, group, splits = args[0], dist.ProcessGroup.unbox(args[2]), list(args[3])
        mine = group.rank()
        if not splits:
            return _nbytes(out) * (group.size() - 1) // group.size()
        row = out.numel() // max(sum(splits), 1) * out.element_size()
        return row * (sum(splits) - splits[mine])
    return _nbytes(args[0])  # broadcasts, reductions: one buffer


@dataclass
class Ctx:
    rank: int
    world: int
    device: torch.device
    mesh: DeviceMesh

    def full(self, *shape: int, seed: int = 0, kind: str = "random") -> torch.Tensor:
        """The same float64 tensor on every rank."""
        rng = np.random.default_rng(seed)
        n = int(np.prod(shape))
        if kind == "random":
            x = rng.standard_normal(n)
        elif kind == "chain":
            from conformance.strategies import chain

            x = rng.permutation(chain(n, 1.0))
        elif kind == "ties":
            x = rng.integers(-3, 4, n).astype(np.float64)
        else:
            raise ValueError(kind)
        return torch.from_numpy(x).reshape(shape).to(self.device)

    def shard(self, full: torch.Tensor, placements: list[Any], mesh: Any = None) -> DTensor:
        return distribute_tensor(full, mesh or self.mesh, placements, src_data_rank=None)


def ref_prox(w: torch.Tensor, lam: Any, dim: int | None) -> torch.Tensor:
    """The reference prox (PAVA) of the whole tensor or of every slice along ``dim``."""
    a = w.detach().cpu().double().numpy()
    if dim is None:
        return torch.from_numpy(ref.prox_pava(a.ravel(), float(lam)).reshape(a.shape))
    moved = np.moveaxis(a, dim, -1)
    rows = moved.reshape(-1, moved.shape[-1])
    lams = np.broadcast_to(np.asarray(lam, dtype=np.float64), moved.shape[:-1]).ravel()
    out = np.stack([ref.prox_pava(r, lam_r) for r, lam_r in zip(rows, lams, strict=True)])
    return torch.from_numpy(np.moveaxis(out.reshape(moved.shape), -1, dim).copy())


def close(got: Any, want: torch.Tensor, what: str) -> None:
    if isinstance(got, DTensor):
        got = got.full_tensor()
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    torch.testing.assert_close(
        got.detach().cpu().double(), want.double(), rtol=TOL["rtol"], atol=TOL["atol"] * scale,
        msg=lambda m: f"{what}: {m}",
    )  # fmt: skip


def same_layout(out: Any, x: DTensor, what: str, placements: Any = None) -> None:
    assert isinstance(out, DTensor), f"{what}: got {type(out).__name__}, not a DTensor"
    want = tuple(x.placements if placements is None else placements)
    assert out.placements == want, f"{what}: placements {out.placements} != {want}"
    assert out.device_mesh == x.device_mesh, f"{what}: another mesh"


@contextmanager
def sharded_path(path: str) -> Iterator[None]:
    old = ws_dist.SHARDED_PATH
    ws_dist.SHARDED_PATH = path
    try:
        yield
    finally:
        ws_dist.SHARDED_PATH = old


def no_vector_split(placements: list[Any], dim: int | None) -> bool:
    split = [p.dim for p in placements if isinstance(p, Shard)]
    return not split if dim is None else dim not in split


CHECKS: dict[str, Callable[[Ctx], None]] = {}


def check(fn: Callable[[Ctx], None]) -> Callable[[Ctx], None]:
    CHECKS[fn.__name__] = fn
    return fn


# ---------------------------------------------------------------------------------------------
# the API on DTensors


def _api_round(ctx: Ctx, full: torch.Tensor, placements: list[Any], dim: int | None) -> Traffic:
    """Every DTensor entry point on one layout; the collectives they ran."""
    x = ctx.shard(full, placements)
    what = f"shape {tuple(full.shape)} {placements} dim={dim}"
    lam = 0.7
    batch = val_batch(full, dim)
    lam_t = torch.linspace(0.1, 2.0, int(np.prod(batch))).reshape(batch).to(ctx.device)
    with Traffic() as traffic:
        out = ws.prox(x, lam, dim)
        out_t = ws.prox(x, lam_t, dim)
        y = x.clone()
        back = ws.prox_(y, lam, dim)
        many = ws.prox_many([x, x * 2.0], [lam, 0.3], dim)
        pen = ws.penalty(x, dim)
        labels = ws.clusters(x, dim)
        soft = ws.soft_threshold(x, 0.1)
        t = torch.linspace(0.0, 0.3, full.shape[-1], device=ctx.device)
        soft_t = ws.soft_threshold(x, t)
    same_layout(soft_t, x, f"soft (tensor t) {what}")
    assert torch.equal(soft_t.full_tensor().cpu(), ws.soft_threshold(full, t).cpu()), what
    for got, name in ((out, "prox"), (out_t, "prox (tensor lam)"), (y, "prox_"), (soft, "soft")):
        same_layout(got, x, f"{name} {what}")
    close(out, ref_prox(full, lam, dim), f"prox {what}")
    close(out_t, ref_prox(full, lam_t.cpu(), dim), f"prox tensor lam {what}")
    assert back is y, "prox_ returns its input"
    close(y, ref_prox(full, lam, dim), f"prox_ {what}")
    close(many[0], ref_prox(full, lam, dim), f"prox_many[0] {what}")
    close(many[1], ref_prox(full * 2.0, 0.3, dim), f"prox_many[1] {what}")
    for got in many:
        same_layout(got, x, f"prox_many {what}")
    close(pen, ws.penalty(full.cpu(), dim), f"penalty {what}")
    assert isinstance(pen, DTensor) and tuple(pen.shape) == batch, f"penalty {what}"
    same_layout(labels, x, f"clusters {what}")
    assert torch.equal(labels.full_tensor().cpu(), ws.clusters(full.cpu(), dim)), what
    assert torch.equal(soft.full_tensor().cpu(), ws.soft_threshold(full.cpu(), 0.1)), what
    assert ws.num_distinct(out) == ws.num_distinct(out.full_tensor()), what
    assert ws.zero_fraction(soft) == ws.zero_fraction(soft.full_tensor()), what
    return traffic


def val_batch(full: torch.Tensor, dim: int | None) -> tuple[int, ...]:
    return () if dim is None else tuple(s for i, s in enumerate(full.shape) if i != dim)


LAYOUTS_1D = [
    ((7, 5), [Shard(0)]),  # uneven rows, as FSDP2 shards them
    ((4, 9), [Shard(1)]),
    ((5, 3), [Replicate()]),
    ((3,), [Shard(0)]),  # empty shards on 4 ranks
]


@check
def api_local(ctx: Ctx) -> None:
    """DIST-1, DIST-2: vectors that are not split: right values and layout, no collective."""
    for shape, placements in LAYOUTS_1D:
        for dim in (None, *range(len(shape))):
            if not no_vector_split(placements, dim):
                continue
            traffic = _api_round(ctx, ctx.full(*shape), placements, dim)
            assert not traffic.ops, f"{shape} {placements} dim={dim} communicated: {traffic.ops}"


@check
def api_gather(ctx: Ctx) -> None:
    """DIST-1, DIST-3: split vectors by the gather path (the collective counter sees them)."""
    with sharded_path("gather"):
        for shape, placements in LAYOUTS_1D:
            for dim in (None, *range(len(shape))):
                if no_vector_split(placements, dim):
                    continue
                traffic = _api_round(ctx, ctx.full(*shape, seed=1), placements, dim)
                # (on one rank, DTensor's own gather is a no-op)
                assert ctx.world == 1 or traffic.ops, "the gather path ran no collective"


SORT_CASES = [
    # (shape, placements, dim, kind, lam)
    ((41, 7), [Shard(0)], None, "random", 0.7),
    ((41, 7), [Shard(1)], None, "chain", 1.0),
    ((300,), [Shard(0)], None, "chain", 1.0),
    ((300,), [Shard(0)], 0, "ties", 0.4),
    ((7, 9), [Shard(0)], None, "ties", 50.0),  # everything collapses
    ((3,), [Shard(0)], None, "random", 0.3),  # empty shards on 4 ranks
    ((64,), [Shard(0)], None, "random", 0.0),
    ((1000,), [Shard(0)], None, "random", 1e-3),  # many small blocks: several rounds
    ((9, 13), [Shard(0)], 0, "random", 0.5),  # batched: re-sharded along dim 1
    ((6, 11, 4), [Shard(1)], 1, "chain", 0.8),
]


@check
def api_sort(ctx: Ctx) -> None:
    """DIST-4: the distributed path equals the reference, keeps the layout and the clusters."""
    with sharded_path("sort"):
        for shape, placements, dim, kind, lam in SORT_CASES:
            full = ctx.full(*shape, seed=7, kind=kind)
            what = f"sort path {shape} {placements} dim={dim} {kind} lam={lam}"
            for dtype in (torch.float64, torch.float32):
                x = ctx.shard(full.to(dtype), placements)
                with Traffic() as traffic:
                    out = ws.prox(x, lam, dim)
                    y = x.clone()
                    ws.prox_(y, lam, dim)
                same_layout(out, x, what)
                want = ref_prox(full.to(dtype), lam, dim)
                if dtype == torch.float64:
                    close(out, want, what)
                else:
                    torch.testing.assert_close(
                        out.full_tensor().cpu(), want.float(), rtol=1e-5, atol=1e-5 * (1 + lam),
                        msg=lambda m, w=what: f"{w} float32: {m}",
                    )  # fmt: skip
                assert torch.equal(y.full_tensor(), out.full_tensor()), what
                names = {"all_gather_into_tensor", "allgather_"}
                assert not names & set(traffic.ops), f"{what}: gathered {traffic.ops}"
                if dtype == torch.float64 and lam > 0:
                    got = ws.num_distinct(out)
                    assert got == ws.num_distinct(want), f"{what}: {got} clusters"


@check
def auto_path(ctx: Ctx) -> None:
    """DIST-4: "auto" takes the distributed path for 2^20 elements split over 3 or more ranks."""
    full = ctx.full(2**14, 64, seed=9)
    x = ctx.shard(full, [Shard(0)])
    with Traffic() as traffic:
        out = ws.prox(x, 0.5)
    gathered = "all_gather_into_tensor" in traffic.ops  # DTensor's gather of the data
    assert gathered == (ctx.world in (2,)), f"auto path on {ctx.world} ranks: {traffic.ops}"
    with sharded_path("gather"):
        close(out, ws.prox(x, 0.5).full_tensor().cpu(), "auto path against the gather path")


@check
def api_2d(ctx: Ctx) -> None:
    """DIST-1, DIST-2: a 2 x 2 mesh (FSDP x TP layouts), on 4 ranks."""
    if ctx.world != 4:
        return
    mesh = init_device_mesh(ctx.device.type, (2, 2), mesh_dim_names=("dp", "tp"))
    cases = [
        ((6, 5), [Shard(0), Shard(1)], None),
        ((6, 5), [Shard(0), Shard(1)], 1),
        ((6, 5), [Replicate(), Shard(0)], 1),
        ((5, 6), [Shard(1), Replicate()], None),
    ]
    for shape, placements, dim in cases:
        full = ctx.full(*shape, seed=2)
        x = ctx.shard(full, placements, mesh)
        with Traffic() as traffic:
            out = ws.prox(x, 0.4, dim)
            pen = ws.penalty(x, dim)
        same_layout(out, x, f"2-D {placements} dim={dim}")
        close(out, ref_prox(full, 0.4, dim), f"2-D {placements} dim={dim}")
        close(pen, ws.penalty(full.cpu(), dim), f"2-D penalty {placements} dim={dim}")
        local = no_vector_split(placements, dim)
        assert bool(traffic.ops) != local, f"2-D {placements} dim={dim}: {traffic.ops}"


@check
def autograd(ctx: Ctx) -> None:
    """DIST-1: the prox of a DTensor is differentiable (local and gathered vectors)."""
    full = ctx.full(6, 4, seed=3)
    upstream = ctx.full(6, 4, seed=4)
    for dim in (1, None):
        x = ctx.shard(full, [Shard(0)]).detach().requires_grad_()
        g = ctx.shard(upstream, [Shard(0)])
        (ws.prox(x, 0.5, dim) * g).sum().full_tensor().backward()
        plain = full.clone().requires_grad_()
        (ws.prox(plain, 0.5, dim) * upstream).sum().backward()
        assert isinstance(x.grad, DTensor)
        close(x.grad, plain.grad.cpu(), f"gradient dim={dim}")


@check
def errors(ctx: Ctx) -> None:
    """DIST-8: bad DTensor inputs raise before anything is changed."""
    full = ctx.full(4, 6, seed=5)
    x = ctx.shard(full, [Shard(0)])
    before = x.to_local().clone()
    other = DeviceMesh(ctx.device.type, list(reversed(range(ctx.world))))
    y = ctx.shard(full, [Shard(0)], other)
    if ctx.world > 1:
        try:
            ws.prox_many([x, y], 0.5)
        except ValueError as e:
            assert "different device meshes" in str(e), e
        else:
            raise AssertionError("DTensors of two meshes were accepted")
    partial = DTensor.from_local(torch.ones(4, 6, device=ctx.device), ctx.mesh, [Partial()])
    for fn in (ws.prox, ws.prox_):
        expect_raise(NotImplementedError, "Partial", fn, partial, 0.5)
    expect_raise(NotImplementedError, "Partial", ws.penalty, partial)
    lam_dt = ctx.shard(torch.ones(4, device=ctx.device), [Replicate()])
    expect_raise(NotImplementedError, "DTensor", ws.prox_, x, lam_dt, 1)
    expect_raise(ValueError, ">= 0|negative", ws.prox_, x, -1.0, 1)
    expect_raise(IndexError, "out of range", ws.prox_, x, 1.0, 2)
    expect_raise(ValueError, "broadcast", ws.soft_threshold, x, torch.ones(5, device=ctx.device))
    assert torch.equal(x.to_local(), before), "a failed call changed the tensor"
    # a NaN in one shard: the local path raises on the rank that holds it
    bad = full.clone()
    bad[0, 0] = float("nan")
    z = ctx.shard(bad, [Shard(0)])
    z_before = z.to_local().clone()
    if ctx.rank == 0:
        expect_raise(ValueError, "non-finite", ws.prox_, z, 1.0, 1)
        torch.testing.assert_close(z.to_local(), z_before, rtol=0, atol=0, equal_nan=True)
    else:
        ws.prox_(z, 1.0, 1)
    # the gathered path: every rank sees the NaN
    with sharded_path("gather"):
        expect_raise(ValueError, "non-finite", ws.prox, ctx.shard(bad, [Shard(0)]), 1.0)
    with sharded_path("sort"):  # DIST-4: all ranks raise alike
        expect_raise(ValueError, "non-finite", ws.prox, ctx.shard(bad, [Shard(0)]), 1.0)
        expect_raise(ValueError, "non-finite", ws.prox, ctx.shard(bad, [Shard(1)]), 1.0, 1)


def expect_raise(exc: type[Exception], match: str, fn: Callable[..., Any], *args: Any) -> None:
    import re

    try:
        fn(*args)
    except exc as e:
        assert re.search(match, str(e)), f"{exc.__name__} without {match!r}: {e}"
    else:
        raise AssertionError(f"{fn.__name__}{args[1:]} did not raise {exc.__name__}")


# ---------------------------------------------------------------------------------------------
# FSDP2 training against an unsharded twin


def mlp(ctx: Ctx, hidden: int = 5) -> nn.Sequential:
    torch.manual_seed(0)  # 5 and 3 output features: uneven shards on 2 and 4 ranks
    model = nn.Sequential(nn.Linear(6, hidden), nn.Tanh(), nn.Linear(hidden, 3))
    return model.to(ctx.device, torch.float64)


def shard_model(ctx: Ctx, model: nn.Module) -> nn.Module:
    for m in (model[0], model[2], model):
        fully_shard(m, mesh=ctx.mesh)
    return model


def batch(ctx: Ctx, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of a step (the same on every rank); each rank trains on its rows."""
    g = torch.Generator().manual_seed(100 + step)
    rows = 4 * ctx.world
    x = torch.randn(rows, 6, generator=g, dtype=torch.float64)
    y = torch.randn(rows, 3, generator=g, dtype=torch.float64)
    return x.to(ctx.device), y.to(ctx.device)


def mine(ctx: Ctx, t: torch.Tensor) -> torch.Tensor:
    return t.chunk(ctx.world)[ctx.rank]


OPTIMIZERS = {
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.2, momentum=0.9),
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.05),
}


def twin_step(model: nn.Module, opt: Any, x: Any, y: Any, lam: float, l1: float, dim: Any) -> None:
    """One plain step of the unsharded twin, then the reference prox (TRAIN-1) by hand."""
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    lr = opt.param_groups[0]["lr"]
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                u = ref_prox(p, lr * lam, dim).numpy()
                p.copy_(torch.from_numpy(ref.soft_threshold(u.ravel(), lr * l1).reshape(u.shape)))


def compare_models(sharded: nn.Module, twin: nn.Module, what: str) -> None:
    for (name, p), q in zip(sharded.named_parameters(), twin.parameters(), strict=True):
        close(p, q.detach().cpu(), f"{what}: {name}")


@check
def fsdp_training(ctx: Ctx) -> None:
    """DIST-5, DIST-2: attach under fully_shard equals the unsharded twin after every step."""
    lam, l1 = 0.5, 0.01
    for name, make in OPTIMIZERS.items():
        for dim, path in ((None, "gather"), (None, "sort"), (1, "auto")):
            if path == "sort" and "sort" not in PATHS:
                continue
            model, twin = shard_model(ctx, mlp(ctx)), mlp(ctx)
            opt, twin_opt = make(model.parameters()), make(twin.parameters())
            ws.attach(opt, lam, dim=dim, l1=l1)
            what = f"{name} dim={dim} path={path}"
            with sharded_path(path):
                for step in range(3):
                    x, y = batch(ctx, step)
                    opt.zero_grad()
                    nn.functional.mse_loss(model(mine(ctx, x)), mine(ctx, y)).backward()
                    with Traffic() as traffic:
                        opt.step()
                    twin_step(twin, twin_opt, x, y, lam, l1, dim)
                    compare_models(model, twin, f"{what} step {step}")
                    if dim == 1:
                        assert not traffic.ops, f"{what}: the step communicated {traffic.ops}"
                    elif ctx.world > 1 or path == "sort":
                        assert traffic.ops, f"{what}: no collective for split vectors"
            assert ws.num_distinct(model[0].weight) < 30, f"{what}: the prox did not act"


PATHS = ("gather", "sort")


@check
def tp_training(ctx: Ctx) -> None:
    """DIST-5: tensor parallelism (colwise then rowwise), and FSDP2 x TP on a 2 x 2 mesh: attach
    equals the unsharded twin after every step."""
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    plan = {"0": ColwiseParallel(), "2": RowwiseParallel()}
    meshes = [("tp", ctx.mesh, None)]
    if ctx.world == 4:
        mesh2 = init_device_mesh(ctx.device.type, (2, 2), mesh_dim_names=("dp", "tp"))
        meshes.append(("fsdp x tp", mesh2["tp"], mesh2["dp"]))
    lam, l1 = 0.5, 0.01
    for label, tp_mesh, dp_mesh in meshes:
        for dim, path in ((None, "gather"), (1, "gather"), (1, "sort")):
            model, twin = mlp(ctx, 8), mlp(ctx, 8)  # TP needs the hidden features to divide
            parallelize_module(model, tp_mesh, plan)
            if dp_mesh is not None:
                for m in (model[0], model[2], model):
                    fully_shard(m, mesh=dp_mesh)
            opt, twin_opt = (
                OPTIMIZERS["adam"](model.parameters()),
                OPTIMIZERS["adam"](twin.parameters()),
            )
            ws.attach(opt, lam, dim=dim, l1=l1)
            what = f"{label} dim={dim} path={path}"
            with sharded_path(path):
                for step in range(2):
                    x, y = batch(ctx, step)
                    if dp_mesh is not None:  # data parallel over dp, the same batch within tp
                        x, y = (
                            x.chunk(2)[dp_mesh.get_local_rank()],
                            y.chunk(2)[dp_mesh.get_local_rank()],
                        )
                        xt, yt = batch(ctx, step)
                    else:
                        xt, yt = x, y
                    opt.zero_grad()
                    nn.functional.mse_loss(model(x), y).backward()
                    opt.step()
                    twin_step(twin, twin_opt, xt, yt, lam, l1, dim)
                    compare_models(model, twin, f"{what} step {step}")


@check
def fsdp_state_dict(ctx: Ctx) -> None:
    """DIST-6: the attach settings survive an FSDP2 state-dict round trip (plain and DCP)."""
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    def step(model: nn.Module, opt: Any, i: int) -> None:
        x, y = batch(ctx, i)
        opt.zero_grad()
        nn.functional.mse_loss(model(mine(ctx, x)), mine(ctx, y)).backward()
        opt.step()

    def wsr_keys(opt: Any) -> list[dict[str, Any]]:
        return [{k: v for k, v in g.items() if k.startswith("wsr_")} for g in opt.param_groups]

    model = shard_model(ctx, mlp(ctx))
    opt = OPTIMIZERS["sgd_momentum"](model.parameters())
    ws.attach(opt, 0.3, params=[model[2].weight], dim=1, l1=0.02)
    step(model, opt, 0)
    keys = wsr_keys(opt)
    assert keys[0]["wsr_mask"] == [False, False, True, False] and keys[0]["wsr_dim"] == 1, keys
    saved_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
    saved = {
        "plain": copy.deepcopy(opt.state_dict()),
        "dcp": copy.deepcopy(get_optimizer_state_dict(model, opt)),
    }
    step(model, opt, 1)
    want = {k: v.full_tensor() for k, v in model.state_dict().items()}
    for how, state in saved.items():
        model2 = shard_model(ctx, mlp(ctx))
        model2.load_state_dict(saved_model)
        opt2 = OPTIMIZERS["sgd_momentum"](model2.parameters())
        if how == "plain":
            opt2.load_state_dict(state)
        else:
            set_optimizer_state_dict(model2, opt2, state)
        ws.attach(opt2, None)
        assert wsr_keys(opt2) == keys, f"{how}: {wsr_keys(opt2)} != {keys}"
        step(model2, opt2, 1)
        for k, v in model2.state_dict().items():
            assert torch.equal(v.full_tensor(), want[k]), f"{how}: {k} differs after resuming"


@check
def fsdp_tie(ctx: Ctx) -> None:
    """DIST-7: tie before fully_shard trains like the unsharded tied twin; tie on a DTensor and
    untie of a sharded tie raise NotImplementedError and change nothing."""
    base = mlp(ctx)
    with torch.no_grad():  # a weight with shared values, as WSR training leaves it
        base[0].weight.copy_(ws.prox(base[0].weight, 0.3))
    tied, twin = copy.deepcopy(base), copy.deepcopy(base)
    ws.tie(tied[0])
    ws.tie(twin[0])
    model = shard_model(ctx, tied)
    opt = OPTIMIZERS["adam"](model.parameters())
    twin_opt = OPTIMIZERS["adam"](twin.parameters())
    for step in range(2):
        x, y = batch(ctx, step)
        opt.zero_grad()
        nn.functional.mse_loss(model(mine(ctx, x)), mine(ctx, y)).backward()
        opt.step()
        twin_step(twin, twin_opt, x, y, 0.0, 0.0, None)
        compare_models(model, twin, f"tied step {step}")
    expect_raise(NotImplementedError, "fully_shard", ws.untie, model[0])
    plain = shard_model(ctx, mlp(ctx))
    before = plain[0].weight.to_local().clone()
    expect_raise(NotImplementedError, "fully_shard", ws.tie, plain[0])
    assert not torch.nn.utils.parametrize.is_parametrized(plain[0])
    assert torch.equal(plain[0].weight.to_local(), before)


# ---------------------------------------------------------------------------------------------
# measurements: gather path against the distributed path


def bench(ctx: Ctx, size: int, reps: int = 3) -> list[dict[str, Any]]:
    """Bytes received, collectives and seconds per rank of one ``prox`` of a ``(size / 64, 64)``
    float64 weight sharded along dim 0, ``dim=None``, on both paths."""
    rows = []
    for kind in ("random", "chain"):
        full = ctx.full(size // 64, 64, seed=11, kind=kind)
        x = ctx.shard(full, [Shard(0)])
        outs = {}
        for path in ("gather", "sort"):
            with sharded_path(path):
                ws.prox(x, 1.0)  # warm-up
                with Traffic() as traffic:
                    outs[path] = ws.prox(x, 1.0)
                times = []
                for _ in range(reps):
                    dist.barrier()
                    start = time.perf_counter()
                    ws.prox(x, 1.0)
                    dist.barrier()
                    times.append(time.perf_counter() - start)
            rows.append(
                {"P": ctx.world, "kind": kind, "N": size, "path": path, "ops": len(traffic.ops),
                 "bytes": traffic.bytes_in, "seconds": min(times)}
            )  # fmt: skip
        diff = (outs["gather"].to_local() - outs["sort"].to_local()).abs().max()
        rows[-1]["max_diff"] = rows[-2]["max_diff"] = float(diff)
    gathered: list[Any] = [None] * ctx.world
    dist.all_gather_object(gathered, rows)
    for i, row in enumerate(rows):  # the most loaded rank
        row["bytes"] = max(r[i]["bytes"] for r in gathered)
        row["max_diff"] = max(r[i]["max_diff"] for r in gathered)
    return rows


def bench_memory(ctx: Ctx, size: int, path: str) -> float:
    """The growth of the peak resident memory (MiB, the largest over ranks) in one ``prox`` of a
    random ``(size / 64, 64)`` float64 weight under ``Shard(0)``, ``dim=None``, on ``path``; run
    once per process (a peak only grows)."""
    import gc
    import resource

    with sharded_path(path):
        ws.prox(ctx.shard(ctx.full(64 * ctx.world, 64, seed=1), [Shard(0)]), 1.0)  # warm-up
        x = ctx.shard(ctx.full(size // 64, 64, seed=11), [Shard(0)])
        gc.collect()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        ws.prox(x, 1.0)
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    gathered: list[Any] = [None] * ctx.world
    dist.all_gather_object(gathered, grown)
    return max(gathered)


def bench_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| P | input | N | path | bytes in per rank | collectives | seconds | max difference |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['P']} | {r['kind']} | {r['N']:,} | {r['path']} | {r['bytes']:,} | {r['ops']} | "
            f"{r['seconds']:.3f} | {r['max_diff']:.1e} |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# entry points


def run(
    rank: int, world: int, port: int, out: str, backend: str, size: int = 0, memory: str = ""
) -> None:
    warnings.simplefilter("error")
    # FSDP2 over TP's local outputs (views); harmless here: the model has no in-place op
    warnings.filterwarnings("ignore", "FSDP2-wrapped module .* returned a view tensor")
    torch.set_num_threads(1)
    if backend == "nccl":
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=timedelta(seconds=60),
    )  # fmt: skip
    results: dict[str, Any] = {}
    try:
        ctx = Ctx(rank, world, device, init_device_mesh(device.type, (world,)))
        if size and memory:
            results["memory"] = bench_memory(ctx, size, memory)
            return
        if size:
            results["bench"] = bench(ctx, size)
            return
        for name, fn in CHECKS.items():
            start = time.perf_counter()
            try:
                fn(ctx)
                results[name] = "ok"
            except Exception:
                results[name] = traceback.format_exc()
            dist.barrier()
            print(f"rank {rank}: {name} {time.perf_counter() - start:.2f} s", flush=True)
    finally:
        Path(out.format(rank=rank)).write_text(json.dumps(results, indent=1))
        dist.destroy_process_group()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("rank", nargs="?", type=int)
    parser.add_argument("world_size", nargs="?", type=int)
    parser.add_argument("port", nargs="?", type=int)
    parser.add_argument("out", nargs="?")
    parser.add_argument("--backend", default="gloo", choices=("gloo", "nccl"))
    parser.add_argument("--world", type=int, help="start this many ranks and report")
    parser.add_argument("--bench", type=int, default=0, help="measure both paths at this size")
    parser.add_argument("--memory", default="", help="with --bench: peak memory of this path")
    args = parser.parse_args(argv)
    if args.world is None:
        run(args.rank, args.world_size, args.port, args.out, args.backend, args.bench, args.memory)
        return 0
    from conformance._spawn import run_world

    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rank{rank}.json")
        extra = ["--backend", args.backend, "--bench", str(args.bench), "--memory", args.memory]
        logs = run_world("conformance._distributed_worker", args.world, [out, *extra], 1800)
        print(logs[0], end="")
        if args.bench and args.memory:
            grown = json.loads(Path(out.format(rank=0)).read_text())["memory"]
            print(f"peak memory growth, {args.memory} path: {grown:.1f} MiB")
            return 0
        if args.bench:
            rows = json.loads(Path(out.format(rank=0)).read_text())["bench"]
            print(json.dumps(rows))
            print(bench_table(rows), end="")
            return 0
        results = merged([out.format(rank=r) for r in range(args.world)])
    for name, status in results.items():
        print(f"{name}: {status}")
    return 0 if all(s == "ok" for s in results.values()) else 1


def merged(paths: list[str]) -> dict[str, str]:
    """Per check: "ok" when every rank says so, else the first rank's failure."""
    per_rank = [json.loads(Path(p).read_text()) for p in paths]
    out: dict[str, str] = {}
    for name in per_rank[0]:
        fails = [f"rank {r}: {res[name]}" for r, res in enumerate(per_rank) if res[name] != "ok"]
        out[name] = fails[0] if fails else "ok"
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
