"""Training under FSDP2 and tensor parallelism against an unsharded twin; state dicts and ties."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import init_device_mesh

import weightshare as ws
from conformance.distributed.checks.twins import (
    OPTIMIZERS,
    batch,
    compare_models,
    mine,
    mlp,
    shard_model,
    sharded_step,
    twin_step,
)
from conformance.distributed.expect import expect_raise
from conformance.distributed.harness import Ctx
from conformance.distributed.paths import sharded_path
from conformance.distributed.registry import check
from conformance.distributed.traffic import Traffic


@check("DIST-5", "DIST-2")
def fsdp_training(ctx: Ctx) -> None:
    """attach under fully_shard equals the unsharded twin after every step."""
    lam, l1 = 0.5, 0.01
    for name, make in OPTIMIZERS.items():
        for dim, path in ((None, "gather"), (None, "sort"), (1, "auto")):
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


@check("DIST-5")
def tp_training(ctx: Ctx) -> None:
    """Tensor parallelism (colwise then rowwise), and FSDP2 x TP on a 2 x 2 mesh: attach equals
    the unsharded twin after every step."""
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
            adam = OPTIMIZERS["adam"]
            opt, twin_opt = adam(model.parameters()), adam(twin.parameters())
            ws.attach(opt, lam, dim=dim, l1=l1)
            what = f"{label} dim={dim} path={path}"
            with sharded_path(path):
                for step in range(2):
                    x, y = xt, yt = batch(ctx, step)
                    if dp_mesh is not None:  # data parallel over dp, the same batch within tp
                        x, y = (t.chunk(2)[dp_mesh.get_local_rank()] for t in (x, y))
                    opt.zero_grad()
                    nn.functional.mse_loss(model(x), y).backward()
                    opt.step()
                    twin_step(twin, twin_opt, xt, yt, lam, l1, dim)
                    compare_models(model, twin, f"{what} step {step}")


@check("DIST-6")
def fsdp_state_dict(ctx: Ctx) -> None:
    """The attach settings survive an FSDP2 state-dict round trip (plain and DCP)."""
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    def wsr_keys(opt: Any) -> list[dict[str, Any]]:
        return [{k: v for k, v in g.items() if k.startswith("wsr_")} for g in opt.param_groups]

    model = shard_model(ctx, mlp(ctx))
    opt = OPTIMIZERS["sgd_momentum"](model.parameters())
    ws.attach(opt, 0.3, params=[model[2].weight], dim=1, l1=0.02)
    sharded_step(ctx, model, opt, 0)
    keys = wsr_keys(opt)
    assert keys[0]["wsr_mask"] == [False, False, True, False] and keys[0]["wsr_dim"] == 1, keys
    saved_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
    saved = {
        "plain": copy.deepcopy(opt.state_dict()),
        "dcp": copy.deepcopy(get_optimizer_state_dict(model, opt)),
    }
    sharded_step(ctx, model, opt, 1)
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
        sharded_step(ctx, model2, opt2, 1)
        for k, v in model2.state_dict().items():
            assert torch.equal(v.full_tensor(), want[k]), f"{how}: {k} differs after resuming"


@check("DIST-7")
def fsdp_tie(ctx: Ctx) -> None:
    """tie before fully_shard trains like the unsharded tied twin; tie on a DTensor and untie of
    a sharded tie raise NotImplementedError and change nothing."""
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
        sharded_step(ctx, model, opt, step)
        twin_step(twin, twin_opt, *batch(ctx, step), 0.0, 0.0, None)
        compare_models(model, twin, f"tied step {step}")
    expect_raise(NotImplementedError, "fully_shard", ws.untie, model[0])
    plain = shard_model(ctx, mlp(ctx))
    before = plain[0].weight.to_local().clone()
    expect_raise(NotImplementedError, "fully_shard", ws.tie, plain[0])
    assert not torch.nn.utils.parametrize.is_parametrized(plain[0])
    assert torch.equal(plain[0].weight.to_local(), before)
