"""The API on DTensors of every layout: vectors that are not split (local, no collective) and
split vectors by the gather path; 1-D and 2-D meshes; autograd."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.distributed.tensor import DTensor, Replicate, Shard, init_device_mesh

import weightshare as ws
from conformance.distributed.expect import close, ref_prox, same_layout
from conformance.distributed.harness import Ctx
from conformance.distributed.paths import no_vector_split, sharded_path
from conformance.distributed.registry import check
from conformance.distributed.traffic import Traffic

LAYOUTS_1D = [
    ((7, 5), [Shard(0)]),  # uneven rows, as FSDP2 shards them
    ((4, 9), [Shard(1)]),
    ((5, 3), [Replicate()]),
    ((3,), [Shard(0)]),  # empty shards on 4 ranks
]


def batch_shape(full: torch.Tensor, dim: int | None) -> tuple[int, ...]:
    """The shape of one value per vector (a penalty, a ``lam`` per vector)."""
    return () if dim is None else tuple(s for i, s in enumerate(full.shape) if i != dim)


def api_round(ctx: Ctx, full: torch.Tensor, placements: list[Any], dim: int | None) -> Traffic:
    """Every DTensor entry point on one layout; the collectives they ran."""
    x = ctx.shard(full, placements)
    what = f"shape {tuple(full.shape)} {placements} dim={dim}"
    lam = 0.7
    batch = batch_shape(full, dim)
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


def layouts_1d(split: bool) -> list[tuple[tuple[int, ...], list[Any], int | None]]:
    """``(shape, placements, dim)`` of the 1-D layouts whose vectors are split (or not)."""
    return [
        (shape, placements, dim)
        for shape, placements in LAYOUTS_1D
        for dim in (None, *range(len(shape)))
        if no_vector_split(placements, dim) != split
    ]


@check("DIST-1", "DIST-2")
def api_local(ctx: Ctx) -> None:
    """Vectors that are not split: right values and layout, no collective."""
    for shape, placements, dim in layouts_1d(split=False):
        traffic = api_round(ctx, ctx.full(*shape), placements, dim)
        assert not traffic.ops, f"{shape} {placements} dim={dim} communicated: {traffic.ops}"


@check("DIST-1", "DIST-3")
def api_gather(ctx: Ctx) -> None:
    """Split vectors by the gather path (the collective counter sees them)."""
    with sharded_path("gather"):
        for shape, placements, dim in layouts_1d(split=True):
            traffic = api_round(ctx, ctx.full(*shape, seed=1), placements, dim)
            # (on one rank, DTensor's own gather is a no-op)
            assert ctx.world == 1 or traffic.ops, "the gather path ran no collective"


@check("DIST-1", "DIST-2", "DIST-3", worlds=(4,))
def api_2d(ctx: Ctx) -> None:
    """A 2 x 2 mesh (FSDP x TP layouts): local vectors without, split ones with a collective."""
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


@check("DIST-1")
def autograd(ctx: Ctx) -> None:
    """The prox of a DTensor is differentiable (local and gathered vectors)."""
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
