"""Which path the prox of a ``DTensor`` takes: split vectors, and the switch that forces a path.

``weightshare._distributed.SHARDED_PATH`` ("auto", "gather" or "sort", spec/training.md) is the
one private name of weightshare the checks and benchmarks use.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch.distributed.tensor import Shard

import weightshare._distributed as ws_dist


@contextmanager
def sharded_path(path: str) -> Iterator[None]:
    """Split vectors take ``path`` while active."""
    old = ws_dist.SHARDED_PATH
    ws_dist.SHARDED_PATH = path
    try:
        yield
    finally:
        ws_dist.SHARDED_PATH = old


def no_vector_split(placements: list[Any], dim: int | None) -> bool:
    """Whether every vector (the whole tensor for ``dim=None``) lies whole on one rank."""
    split = [p.dim for p in placements if isinstance(p, Shard)]
    return not split if dim is None else dim not in split
