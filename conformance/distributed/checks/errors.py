"""Bad DTensor inputs raise before anything is changed; a NaN raises alike on every path."""

from __future__ import annotations

import torch
from torch.distributed.tensor import DeviceMesh, DTensor, Partial, Replicate, Shard

import weightshare as ws
from conformance.distributed.expect import expect_raise
from conformance.distributed.harness import Ctx
from conformance.distributed.paths import sharded_path
from conformance.distributed.registry import check


@check("DIST-8", "DIST-4")
def errors(ctx: Ctx) -> None:
    """Two meshes, ``Partial``, a ``DTensor`` lam and the plain errors; NaN on every path."""
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
