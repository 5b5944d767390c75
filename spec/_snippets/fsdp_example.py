# fsdp_example.py; run with: torchrun --nproc-per-node 2 fsdp_example.py
import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

import weightshare as ws

dist.init_process_group("gloo")  # "nccl" on GPUs (and the model on the rank's device)
torch.manual_seed(0)  # the same initial model on every rank
model = torch.nn.Sequential(torch.nn.Linear(196, 500), torch.nn.ReLU(), torch.nn.Linear(500, 10))
for layer in (model[0], model[2], model):
    fully_shard(layer)  # every parameter is now a DTensor, sharded along dim 0
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
ws.attach(opt, lam=0.05, dim=1)  # one vector per row: local shards only, no communication

data = torch.Generator().manual_seed(dist.get_rank())  # each rank its own batches
for _ in range(5):
    x, y = torch.randn(32, 196, generator=data), torch.randint(10, (32,), generator=data)
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()  # FSDP2 step on the shards, then the prox of every attached shard

w = model[0].weight  # a DTensor: Shard(0) on a 1-D mesh
print(f"rank {dist.get_rank()}: {type(w).__name__} {w.placements}, "
      f"{ws.num_distinct(w)} distinct values of {w.numel()}")  # fmt: skip
dist.destroy_process_group()
