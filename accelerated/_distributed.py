r"""``DTensor`` inputs (FSDP2, tensor parallelism): the public functions hand them over to here.

Each function finds whether the vectors it works on are split across ranks:

- **local**: the vector dimension is not sharded (``dim=k`` on a tensor not sharded along ``k``,
  or ``dim=None`` on a fully replicated one). Every rank computes on its local shard; nothing is
  communicated.
- **sharded**: a vector is spread over several ranks. ``"gather"`` all-gathers along the mesh
  dimensions that split the vectors, computes on the full vectors and keeps the local part;
  ``"sort"`` (the prox and ``prox_``, without autograd) is the distributed path of
  :mod:`._distributed_sort`. ``SHARDED_PATH`` chooses ("auto": see :func:`sharded_path`).

Results are DTensors with the input's mesh and placements (the batch placements for
``penalty``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import torch

from . import _checks as checks
from . import _methods as methods
from . import _penalty as plain_penalty
from . import _prox as plain
from ._checks import dtensor_api
from ._distributed_layout import (
    batch_placements,
    local_part,
    replicated,
    splits,
    wrap,
)
from ._distributed_sort import prox_sharded

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

#: "auto", "gather" or "sort": how a prox with a sharded vector dimension is computed.
SHARDED_PATH = "auto"
#: "auto" takes the distributed path for tensors of this many elements and more, split over at
#: least 3 ranks (on 2 ranks it moves as many bytes as the gather path).
SORT_MIN = 1 << 20


def _splits_vectors(v: Any, dim: int | None) -> list[bool]:
    """Per mesh dimension of ``v``: whether it splits the vectors (for ``dim=None``: whether it
    shards any dimension); a mesh dimension of size 1 splits nothing, unless a path is forced
    (``SHARDED_PATH``: so that one GPU still runs the collectives of that path)."""
    dims = [splits(p) for p in v.placements]
    sizes = v.device_mesh.shape
    return [
        d is not None and (dim is None or d == dim) and (n > 1 or SHARDED_PATH != "auto")
        for d, n in zip(dims, sizes, strict=True)
    ]


def _check_lam_kind(lam: object, name: str) -> None:
    if checks.is_dtensor(lam):
        raise NotImplementedError(
            f"{name} as a DTensor is not supported; pass a float or a plain tensor (the same on "
            "every rank)"
        )


def _local_lam(lam: checks.Lam, v: Any, placements: Sequence[Any], dim: int | None) -> checks.Lam:
    """This rank's slice of a tensor strength for vectors laid out by ``placements``."""
    if not isinstance(lam, torch.Tensor) or dim is None:
        return lam
    batch = checks.batch_shape(v, dim)
    full = lam.to(v.device).broadcast_to(batch)
    return local_part(full, v, batch_placements(placements, dim))


# ---------------------------------------------------------------------------------------------
# The prox.


def sharded_path(v: Any, lam: checks.Lam, dim: int | None) -> tuple[str, int]:
    """The path, "gather" or "sort", for one tensor whose vectors are split (``SHARDED_PATH``),
    and for "sort" the mesh dimension that splits them.

    The distributed path needs the vectors split by one mesh dimension with a ``Shard``
    placement, no autograd, and a scalar strength for batched vectors; else: "gather".
    """
    split = [i for i, s in enumerate(_splits_vectors(v, dim)) if s]
    batched = dim is not None and v.dim() > 1
    if (
        SHARDED_PATH == "gather"
        or _needs_grad(v, lam)  # the distributed path has no backward
        or len(split) != 1
        or type(v.placements[split[0]]) is not dtensor_api().Shard
        or (batched and isinstance(lam, torch.Tensor) and lam.numel() > 1)
        or (SHARDED_PATH == "auto" and (v.numel() < SORT_MIN or v.device_mesh.size(split[0]) < 3))
    ):
        return "gather", -1
    return "sort", split[0]


def _validated(
    v: Any, lam: object, dim: object, method: str, name: str = "v", lam_name: str = "lam"
) -> tuple[int | None, checks.Lam]:
    """The checks of one DTensor and its strength: ``(dim, lam)`` normalised."""
    checks.check_float(v, name)
    methods.check_method(method)
    dim = checks.normalize_dim(v, dim)
    _check_lam_kind(lam, lam_name)
    lam = checks.check_strength(lam, v, dim, lam_name)
    if isinstance(lam, torch.Tensor) and checks.should_validate(lam):
        checks.check_values([], [], [lam], [lam_name])
    _splits_vectors(v, dim)  # NotImplementedError for Partial
    return dim, lam


def _needs_grad(v: torch.Tensor, lam: checks.Lam) -> bool:
    return torch.is_grad_enabled() and (
        v.requires_grad or (isinstance(lam, torch.Tensor) and lam.requires_grad)
    )


def prox(v: DTensor, lam: object, dim: object, method: str) -> DTensor:
    """`weightshare.prox` of a ``DTensor``."""
    dim, lam = _validated(v, lam, dim, method)
    return _prox_checked([v], [lam], [dim], method)[0]


def prox_(v: DTensor, lam: object, dim: object, method: str) -> DTensor:
    """`weightshare.prox_` of a ``DTensor``: the local shard is overwritten."""
    dim, lam = _validated(v, lam, dim, method)
    with torch.no_grad():
        out = _prox_checked([cast("DTensor", v.detach())], [lam], [dim], method)[0]
        v.to_local().copy_(out.to_local())
    return v


def prox_many(
    tensors: list[torch.Tensor], lams: object, dim: object, method: str
) -> list[torch.Tensor]:
    """`weightshare.prox_many` with at least one ``DTensor`` (plain tensors may be mixed in)."""
    methods.check_method(method)
    lams = checks.strength_list(lams, len(tensors))
    dims: list[int | None] = []
    mesh, first = None, -1
    for i, (t, lam) in enumerate(zip(tensors, lams, strict=True)):
        if not checks.is_dtensor(t):
            dims.append(None)
            continue
        d, lams[i] = _validated(t, lam, dim, method, f"tensors[{i}]", f"lams[{i}]")
        dims.append(d)
        if mesh is None:
            mesh, first = t.device_mesh, i
        elif t.device_mesh != mesh:
            raise ValueError(
                f"prox_many got DTensors on different device meshes: tensors[{first}] on {mesh} "
                f"and tensors[{i}] on {t.device_mesh}"
            )
    dtensors = [(i, t) for i, t in enumerate(tensors) if checks.is_dtensor(t)]
    dist_ids = [i for i, _ in dtensors]
    plain_ids = [i for i in range(len(tensors)) if i not in set(dist_ids)]
    results: list[Any] = [None] * len(tensors)
    if plain_ids:  # validated (and computed) by the plain function, before any DTensor work
        plain_outs = plain.prox_many(
            [tensors[i] for i in plain_ids], [lams[i] for i in plain_ids], dim, method=method
        )
        for i, out in zip(plain_ids, plain_outs, strict=True):
            results[i] = out
    outs = _prox_checked(
        [t for _, t in dtensors],
        [cast(checks.Lam, lams[i]) for i in dist_ids],  # checked by _validated
        [dims[i] for i in dist_ids],
        method,
    )
    for i, dout in zip(dist_ids, outs, strict=True):
        results[i] = dout
    return results


def _prox_checked(
    tensors: list[DTensor], lams: list[checks.Lam], dims: list[int | None], method: str
) -> list[DTensor]:
    """The prox of validated DTensors: local ones in one fused call, then the sharded ones."""
    results: list[Any] = [None] * len(tensors)
    local: list[int] = []
    gather: list[int] = []
    sort: list[tuple[int, int]] = []
    for i, (v, lam, d) in enumerate(zip(tensors, lams, dims, strict=True)):
        if not any(_splits_vectors(v, d)):
            local.append(i)
            continue
        path, mesh_dim = sharded_path(v, lam, d)
        if path == "gather":
            gather.append(i)
        else:
            sort.append((i, mesh_dim))
    # local vectors: every rank checks and proxes its own shard
    parts = [tensors[i].to_local() for i in local]
    part_lams = [_local_lam(lams[i], tensors[i], tensors[i].placements, dims[i]) for i in local]
    _check_local(parts, [f"v (local shard of tensor {i})" for i in local])
    outs = plain.prox_many_unchecked(parts, part_lams, [dims[i] for i in local], method)
    for i, out in zip(local, outs, strict=True):
        v = tensors[i]
        results[i] = wrap(out, v, v.placements, v.shape)
    # sharded vectors, gather path: full vectors on every rank, checked there (all ranks agree);
    # one tensor at a time, so that a rank holds at most one gathered tensor
    for i in gather:
        v = tensors[i]
        full = replicated(v.placements, _splits_vectors(v, dims[i]))
        part = v.redistribute(v.device_mesh, full).to_local()
        _check_local([part], [f"v (tensor {i})"])
        lam = _local_lam(lams[i], v, full, dims[i])
        out = plain.prox_many_unchecked([part], [lam], [dims[i]], method)[0]
        del part
        mine = wrap(out, v, full, v.shape).redistribute(v.device_mesh, v.placements).to_local()
        if mine.untyped_storage().nbytes() > mine.numel() * mine.element_size():
            mine = mine.clone()  # a view would keep the whole result alive
        results[i] = wrap(mine, v, v.placements, v.shape)
    for i, mesh_dim in sort:
        results[i] = prox_sharded(tensors[i], lams[i], dims[i], method, mesh_dim)
    return results


def _check_local(parts: list[torch.Tensor], names: list[str]) -> None:
    checked = [i for i, t in enumerate(parts) if checks.should_validate(t)]
    if checked:
        checks.check_values([parts[i] for i in checked], [names[i] for i in checked])


# ---------------------------------------------------------------------------------------------
# penalty, clusters, soft_threshold.


def _full_rows(v: Any, dim: int | None) -> tuple[torch.Tensor, list[Any]]:
    """This rank's tensor with whole vectors (gathered where sharded) and its placements."""
    split = _splits_vectors(v, dim)
    if not any(split):
        return v.to_local(), list(v.placements)
    placements = replicated(v.placements, split)
    return v.redistribute(v.device_mesh, placements).to_local(), placements


def penalty(w: DTensor, dim: int | None) -> DTensor:
    """`weightshare.penalty` of a ``DTensor``: a ``DTensor`` with the batch placements."""
    checks.check_float(w, "w")
    dim = checks.normalize_dim(w, dim)
    local, placements = _full_rows(w, dim)
    out = plain_penalty.penalty(local, dim)
    return wrap(out, w, batch_placements(placements, dim), checks.batch_shape(w, dim))


def clusters(w: DTensor, dim: int | None) -> DTensor:
    """`weightshare.clusters` of a ``DTensor``: int64 labels with ``w``'s placements."""
    checks.check_float(w, "w")
    dim = checks.normalize_dim(w, dim)
    local, placements = _full_rows(w.detach(), dim)
    out = wrap(plain.clusters(local, dim), w, placements, w.shape)
    return out.redistribute(w.device_mesh, w.placements)


def soft_threshold(w: DTensor, t: float | torch.Tensor) -> DTensor:
    """`weightshare.soft_threshold` of a ``DTensor`` (elementwise: on the local shard)."""
    checks.check_float(w, "w")
    _check_lam_kind(t, "t")
    _splits_vectors(w, None)  # NotImplementedError for Partial
    if isinstance(t, torch.Tensor):  # the plain function checks the rest of t on the local part
        try:
            full = t.to(w.device).broadcast_to(w.shape)
        except RuntimeError:
            raise ValueError(
                f"t of shape {tuple(t.shape)} does not broadcast to {tuple(w.shape)}"
            ) from None
        t = local_part(full, w, w.placements)
    return wrap(plain.soft_threshold(w.to_local(), t), w, w.placements, w.shape)
