"""The small MLP the training checks shard, its unsharded twin's step, and the data."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import fully_shard

from conformance.distributed.expect import close, ref_prox
from conformance.distributed.harness import Ctx
from weightshare import reference as ref

OPTIMIZERS = {
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.2, momentum=0.9),
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.05),
}


def mlp(ctx: Ctx, hidden: int = 5) -> nn.Sequential:
    """The same float64 MLP on every rank (seeded)."""
    torch.manual_seed(0)  # 5 and 3 output features: uneven shards on 2 and 4 ranks
    model = nn.Sequential(nn.Linear(6, hidden), nn.Tanh(), nn.Linear(hidden, 3))
    return model.to(ctx.device, torch.float64)


def shard_model(ctx: Ctx, model: nn.Module) -> nn.Module:
    """``model`` under FSDP2: each linear layer, then the whole, over all ranks."""
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
    """This rank's rows of a global batch."""
    return t.chunk(ctx.world)[ctx.rank]


def sharded_step(ctx: Ctx, model: nn.Module, opt: Any, step: int) -> None:
    """One step of the sharded model on this rank's rows of the batch of ``step``."""
    x, y = batch(ctx, step)
    opt.zero_grad()
    nn.functional.mse_loss(model(mine(ctx, x)), mine(ctx, y)).backward()
    opt.step()


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
    """Every parameter of the sharded model equals the twin's."""
    for (name, p), q in zip(sharded.named_parameters(), twin.parameters(), strict=True):
        close(p, q.detach().cpu(), f"{what}: {name}")
