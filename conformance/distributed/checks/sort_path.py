"""The distributed path for split vectors (sample sort, local PAVA, merge levels) against the
reference, and the rule by which "auto" picks it."""

from __future__ import annotations

import torch
from torch.distributed.tensor import Shard

import weightshare as ws
from conformance.distributed.expect import close, ref_prox, same_layout
from conformance.distributed.harness import Ctx
from conformance.distributed.paths import sharded_path
from conformance.distributed.registry import check
from conformance.distributed.traffic import Traffic

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


@check("DIST-4")
def api_sort(ctx: Ctx) -> None:
    """The distributed path equals the reference, keeps the layout and the clusters."""
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


@check("DIST-4")
def auto_path(ctx: Ctx) -> None:
    """The "auto" path is the distributed one for 2^20 elements split over 3 or more ranks."""
    full = ctx.full(2**14, 64, seed=9)
    x = ctx.shard(full, [Shard(0)])
    with Traffic() as traffic:
        out = ws.prox(x, 0.5)
    gathered = "all_gather_into_tensor" in traffic.ops  # DTensor's gather of the data
    assert gathered == (ctx.world in (2,)), f"auto path on {ctx.world} ranks: {traffic.ops}"
    with sharded_path("gather"):
        close(out, ws.prox(x, 0.5).full_tensor().cpu(), "auto path against the gather path")


@check("PROX-21", "DIST-4")
def huge_strength(ctx: Ctx) -> None:
    """A λ far above the collapse threshold returns the mean on both split-vector paths."""
    for path in ("sort", "gather"):
        with sharded_path(path):
            for shape, dim in (((300,), None), ((9, 13), 0)):
                full = ctx.full(*shape, seed=3)
                x = ctx.shard(full, [Shard(0)])
                for lam in (1e17, 1e300):
                    out = ws.prox(x, lam, dim).full_tensor().cpu()
                    mean = full.mean() if dim is None else full.mean(dim, keepdim=True)
                    tol = 1e-12 * float(full.abs().max())
                    torch.testing.assert_close(
                        out, mean.expand_as(full).cpu(), rtol=0, atol=tol,
                        msg=lambda m, p=path, s=shape, lam=lam: f"{p} {s} lam={lam}: {m}",
                    )  # fmt: skip
