"""``DTensor`` layouts: which tensor dimension a placement splits, and local <-> global parts.

Nothing here communicates. ``torch.distributed.tensor`` is imported on first use (by
``_checks.dtensor_api``), so plain-tensor users never pay for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from . import _checks as checks
from ._checks import dtensor_api

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor


def splits(p: Any) -> int | None:
    """The tensor dimension a placement splits (``Shard``, ``_StridedShard``), else None."""
    if p.is_replicate():
        return None
    if p.is_partial():
        raise NotImplementedError(
            f"weightshare does not take DTensors with a Partial placement ({p}, a pending "
            "reduction); redistribute to Replicate or Shard first"
        )
    return int(p.dim)


def batch_placements(placements: Sequence[Any], dim: int | None) -> list[Any]:
    """The placements of a result without ``dim`` (the penalty's batch), for local vectors."""
    out = []
    for p in placements:
        d = splits(p)
        if d is None or dim is None:
            out.append(dtensor_api().Replicate())
        elif d == dim:
            raise AssertionError("the vector dimension is sharded")  # pragma: no cover
        else:
            out.append(moved(p, d - (d > dim)))
    return out


def moved(p: Any, d: int) -> Any:
    """``p`` splitting dimension ``d`` instead."""
    if type(p) is dtensor_api().Shard:
        return dtensor_api().Shard(d)
    return type(p)(d, split_factor=p.split_factor)


def replicated(placements: Sequence[Any], split: list[bool]) -> list[Any]:
    """``placements`` with ``Replicate`` wherever ``split`` says the placement splits vectors."""
    return [dtensor_api().Replicate() if s else p for p, s in zip(placements, split, strict=True)]


def stride(shape: Sequence[int]) -> tuple[int, ...]:
    """The contiguous strides of ``shape``."""
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(out))


def wrap(
    local: torch.Tensor, like: Any, placements: Sequence[Any], shape: Sequence[int]
) -> DTensor:
    """A ``DTensor`` of global ``shape`` from this rank's ``local`` part (no communication)."""
    out: DTensor = checks.dtensor_class().from_local(
        local,
        like.device_mesh,
        placements,
        run_check=False,
        shape=torch.Size(shape),
        stride=stride(shape),
    )
    return out


def local_part(t: torch.Tensor, like: Any, placements: Sequence[Any]) -> torch.Tensor:
    """The block of the plain tensor ``t`` (broadcast to its global shape) that this rank holds
    under ``placements`` of ``like``'s mesh (differentiable slicing, no communication)."""
    if any(splits(p) is not None and type(p).__name__ != "Shard" for p in placements):
        raise NotImplementedError(
            "a tensor strength with a _StridedShard placement is not supported; pass a float"
        )
    shape, offset = dtensor_api("_utils").compute_local_shape_and_global_offset(
        t.shape, like.device_mesh, placements
    )
    for d, (n, o) in enumerate(zip(shape, offset, strict=True)):
        t = t.narrow(d, o, n)
    return t
