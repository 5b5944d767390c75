"""One rank of the DDP conformance check (TRAIN-17 in ``test_training``).

``python -m conformance.distributed.ddp_rank RANK WORLD PORT OUT`` trains a small MLP under
``DistributedDataParallel`` (gloo, CPU) with ``weightshare.attach`` on its optimizer, each rank on
its own data, and saves the final state dict to ``OUT`` (``{rank}`` in it is the rank).
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import weightshare as ws

STEPS = 6


def run(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
        ddp = DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        ws.attach(opt, lam=1.0, l1=1e-2)
        data = torch.Generator().manual_seed(1000 + rank)  # different data on every rank
        for _ in range(STEPS):
            x = torch.randn(32, 8, generator=data)
            y = torch.randn(32, 4, generator=data)
            opt.zero_grad()
            nn.functional.mse_loss(ddp(x), y).backward()
            opt.step()
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.save(state, out.format(rank=rank))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    run(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
