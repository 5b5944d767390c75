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
from typing import Any

import torch

from . import _validation as val

#: "auto", "gather" or "sort": how a prox with a sharded vector dimension is computed.
SHARDED_PATH = "auto"
#: "auto" takes the distributed path for tensors of this many elements and more, split over at
#: least 3 ranks (on 2 ranks it moves as many bytes as the gather path).
SORT_MIN = 1 << 20

_DTENSOR: Any = None


def dtensor_class() -> Any:
    """The ``DTensor`` class, imported on first use (None where torch.distributed is missing)."""
    global _DTENSOR
    if _DTENSOR is None:
        _DTENSOR = False
        if torch.distributed.is_available():
            from torch.distributed.tensor import DTensor

            _DTENSOR = DTensor
    return _DTENSOR or None


def is_dtensor(t: object) -> bool:
    """Whether ``t`` is a ``DTensor`` (a plain tensor or Parameter answers without an import)."""
    if type(t) is torch.Tensor or type(t) is torch.nn.Parameter:
        return False
    cls = dtensor_class()
    return cls is not None and isinstance(t, cls)


def check_plain(t: torch.Tensor, name: str) -> None:
    """TypeError for a tensor subclass that is neither a plain tensor nor a ``DTensor``."""
    if type(t) in (torch.Tensor, torch.nn.Parameter) or torch.compiler.is_compiling():
        return
    if not is_dtensor(t):
        raise TypeError(
            f"{name} must be a torch.Tensor, a Parameter or a DTensor, got the tensor subclass "
            f"{type(t).__module__}.{type(t).__qualname__}"
        )


# ---------------------------------------------------------------------------------------------
# Layouts.


def _splits(p: Any) -> int | None:
    """The tensor dimension a placement splits (``Shard``, ``_StridedShard``), else None."""
    if p.is_replicate():
        return None
    if p.is_partial():
        raise NotImplementedError(
            f"weightshare does not take DTensors with a Partial placement ({p}, a pending "
            "reduction); redistribute to Replicate or Shard first"
        )
    return int(p.dim)


def _splits_vectors(v: Any, dim: int | None) -> list[bool]:
    """Per mesh dimension of ``v``: whether it splits the vectors (for ``dim=None``: whether it
    shards any dimension); a mesh dimension of size 1 splits nothing, unless a path is forced
    (``SHARDED_PATH``: so that one GPU still runs the collectives of that path)."""
    dims = [_splits(p) for p in v.placements]
    sizes = v.device_mesh.shape
    return [
        d is not None and (dim is None or d == dim) and (n > 1 or SHARDED_PATH != "auto")
        for d, n in zip(dims, sizes, strict=True)
    ]


def _batch_placements(placements: Sequence[Any], dim: int | None) -> list[Any]:
    """The placements of a result without ``dim`` (the penalty's batch), for local vectors."""
    from torch.distributed.tensor import Replicate

    out = []
    for p in placements:
        d = _splits(p)
        if d is None or dim is None:
            out.append(Replicate())
        elif d == dim:
            raise AssertionError("the vector dimension is sharded")  # pragma: no cover
        else:
            out.append(_moved(p, d - (d > dim)))
    return out


def _moved(p: Any, d: int) -> Any:
    """``p`` splitting dimension ``d`` instead."""
    from torch.distributed.tensor import Shard

    if type(p) is Shard:
        return Shard(d)
    return type(p)(d, split_factor=p.split_factor)


def _replicated(placements: Sequence[Any], split: list[bool]) -> list[Any]:
    from torch.distributed.tensor import Replicate

    return [Replicate() if s else p for p, s in zip(placements, split, strict=True)]


def _stride(shape: Sequence[int]) -> tuple[int, ...]:
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(out))


def _wrap(local: torch.Tensor, like: Any, placements: Sequence[Any], shape: Sequence[int]) -> Any:
    """A ``DTensor`` of global ``shape`` from this rank's ``local`` part (no communication)."""
    return dtensor_class().from_local(
        local,
        like.device_mesh,
        placements,
        run_check=False,
        shape=torch.Size(shape),
        stride=_stride(shape),
    )


def _local_part(t: torch.Tensor, like: Any, placements: Sequence[Any]) -> torch.Tensor:
    """The block of the plain tensor ``t`` (broadcast to its global shape) that this rank holds
    under ``placements`` of ``like``'s mesh (differentiable slicing, no communication)."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if any(_splits(p) is not None and type(p).__name__ != "Shard" for p in placements):
        raise NotImplementedError(
            "a tensor strength with a _StridedShard placement is not supported; pass a float"
        )
    shape, offset = compute_local_shape_and_global_offset(t.shape, like.device_mesh, placements)
    for d, (n, o) in enumerate(zip(shape, offset, strict=True)):
        t = t.narrow(d, o, n)
    return t


def _check_lam_kind(lam: object, name: str) -> None:
    if is_dtensor(lam):
        raise NotImplementedError(
            f"{name} as a DTensor is not supported; pass a float or a plain tensor (the same on "
            "every rank)"
        )


def _local_lam(lam: val.Lam, v: Any, placements: Sequence[Any], dim: int | None) -> val.Lam:
    """This rank's slice of a tensor strength for vectors laid out by ``placements``."""
    if not isinstance(lam, torch.Tensor) or dim is None:
        return lam
    batch = val.batch_shape(v, dim)
    full = lam.to(v.device).broadcast_to(batch)
    return _local_part(full, v, _batch_placements(placements, dim))


# ---------------------------------------------------------------------------------------------
# The prox.


def sharded_path(v: Any, lam: val.Lam, dim: int | None) -> tuple[str, int]:
    """The path, "gather" or "sort", for one tensor whose vectors are split (``SHARDED_PATH``),
    and for "sort" the mesh dimension that splits them.

    The distributed path needs the vectors split by one mesh dimension with a ``Shard``
    placement, no autograd, and a scalar strength for batched vectors; else: "gather".
    """
    from torch.distributed.tensor import Shard

    split = [i for i, s in enumerate(_splits_vectors(v, dim)) if s]
    batched = dim is not None and v.dim() > 1
    if (
        SHARDED_PATH == "gather"
        or _needs_grad(v, lam)  # the distributed path has no backward
        or len(split) != 1
        or type(v.placements[split[0]]) is not Shard
        or (batched and isinstance(lam, torch.Tensor) and lam.numel() > 1)
        or (SHARDED_PATH == "auto" and (v.numel() < SORT_MIN or v.device_mesh.size(split[0]) < 3))
    ):
        return "gather", -1
    return "sort", split[0]


def _validated(v: Any, lam: val.Lam, dim: int | None, method: str, name: str = "v") -> int | None:
    from ._prox import check_method

    val.check_float(v, name)
    check_method(method)
    dim = val.normalize_dim(v, dim)
    _check_lam_kind(lam, "lam")
    val.check_lam_value(lam, v, dim)
    if isinstance(lam, torch.Tensor) and val.should_validate(lam):
        val.check_values([], [lam], [])
    _splits_vectors(v, dim)  # NotImplementedError for Partial
    return dim


def _needs_grad(v: torch.Tensor, lam: val.Lam) -> bool:
    return torch.is_grad_enabled() and (
        v.requires_grad or (isinstance(lam, torch.Tensor) and lam.requires_grad)
    )


def prox(v: Any, lam: val.Lam, dim: int | None, method: str) -> Any:
    """`weightshare.prox` of a ``DTensor``."""
    dim = _validated(v, lam, dim, method)
    return _prox_checked([v], [lam], [dim], method)[0]


def prox_(v: Any, lam: val.Lam, dim: int | None, method: str) -> Any:
    """`weightshare.prox_` of a ``DTensor``: the local shard is overwritten."""
    dim = _validated(v, lam, dim, method)
    with torch.no_grad():
        out = _prox_checked([v.detach()], [lam], [dim], method)[0]
        v.to_local().copy_(out.to_local())
    return v


def prox_many(tensors: list[torch.Tensor], lams: Any, dim: int | None, method: str) -> list[Any]:
    """`weightshare.prox_many` with at least one ``DTensor`` (plain tensors may be mixed in)."""
    from ._prox import check_method
    from ._prox import prox_many as plain_many

    check_method(method)
    one = isinstance(lams, float | int | torch.Tensor)
    lams = [lams] * len(tensors) if one else list(lams)
    if len(lams) != len(tensors):
        raise ValueError(f"lams has {len(lams)} entries for {len(tensors)} tensors")
    dims, mesh, first = [], None, -1
    for i, (t, lam) in enumerate(zip(tensors, lams, strict=True)):
        if not is_dtensor(t):
            dims.append(None)
            continue
        dims.append(_validated(t, lam, dim, method, f"tensors[{i}]"))
        if mesh is None:
            mesh, first = t.device_mesh, i
        elif t.device_mesh != mesh:
            raise ValueError(
                f"prox_many got DTensors on different device meshes: tensors[{first}] on {mesh} "
                f"and tensors[{i}] on {t.device_mesh}"
            )
    dist_ids = [i for i, t in enumerate(tensors) if is_dtensor(t)]
    plain_ids = [i for i in range(len(tensors)) if i not in set(dist_ids)]
    results: list[Any] = [None] * len(tensors)
    if plain_ids:  # validated (and computed) by the plain function, before any DTensor work
        outs = plain_many(
            [tensors[i] for i in plain_ids], [lams[i] for i in plain_ids], dim, method=method
        )
        for i, out in zip(plain_ids, outs, strict=True):
            results[i] = out
    outs = _prox_checked(
        [tensors[i] for i in dist_ids],
        [lams[i] for i in dist_ids],
        [dims[i] for i in dist_ids],
        method,
    )
    for i, out in zip(dist_ids, outs, strict=True):
        results[i] = out
    return results


def _prox_checked(
    tensors: list[Any], lams: list[val.Lam], dims: list[int | None], method: str
) -> list[Any]:
    """The prox of validated DTensors: local ones in one fused call, then the sharded ones."""
    from ._prox import _prox_many_unchecked

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
    outs = _prox_many_unchecked(parts, part_lams, [dims[i] for i in local], method)
    for i, out in zip(local, outs, strict=True):
        v = tensors[i]
        results[i] = _wrap(out, v, v.placements, v.shape)
    # sharded vectors, gather path: full vectors on every rank, checked there (all ranks agree);
    # one tensor at a time, so that a rank holds at most one gathered tensor
    for i in gather:
        v = tensors[i]
        full = _replicated(v.placements, _splits_vectors(v, dims[i]))
        part = v.redistribute(v.device_mesh, full).to_local()
        _check_local([part], [f"v (tensor {i})"])
        lam = _local_lam(lams[i], v, full, dims[i])
        out = _prox_many_unchecked([part], [lam], [dims[i]], method)[0]
        del part
        mine = _wrap(out, v, full, v.shape).redistribute(v.device_mesh, v.placements).to_local()
        if mine.untyped_storage().nbytes() > mine.numel() * mine.element_size():
            mine = mine.clone()  # a view would keep the whole result alive
        results[i] = _wrap(mine, v, v.placements, v.shape)
    for i, mesh_dim in sort:
        from ._distributed_sort import prox_sharded

        results[i] = prox_sharded(tensors[i], lams[i], dims[i], method, mesh_dim)
    return results


def _check_local(parts: list[torch.Tensor], names: list[str]) -> None:
    checked = [i for i, t in enumerate(parts) if val.should_validate(t)]
    if checked:
        val.check_values([parts[i] for i in checked], [], [names[i] for i in checked])


# ---------------------------------------------------------------------------------------------
# penalty, clusters, soft_threshold.


def _full_rows(v: Any, dim: int | None) -> tuple[torch.Tensor, list[Any]]:
    """This rank's tensor with whole vectors (gathered where sharded) and its placements."""
    split = _splits_vectors(v, dim)
    if not any(split):
        return v.to_local(), list(v.placements)
    placements = _replicated(v.placements, split)
    return v.redistribute(v.device_mesh, placements).to_local(), placements


def penalty(w: Any, dim: int | None) -> Any:
    """`weightshare.penalty` of a ``DTensor``: a ``DTensor`` with the batch placements."""
    from ._penalty import penalty as plain_penalty

    val.check_float(w, "w")
    dim = val.normalize_dim(w, dim)
    local, placements = _full_rows(w, dim)
    out = plain_penalty(local, dim)
    return _wrap(out, w, _batch_placements(placements, dim), val.batch_shape(w, dim))


def clusters(w: Any, dim: int | None) -> Any:
    """`weightshare.clusters` of a ``DTensor``: int64 labels with ``w``'s placements."""
    from ._prox import clusters as plain_clusters

    val.check_float(w, "w")
    dim = val.normalize_dim(w, dim)
    local, placements = _full_rows(w.detach(), dim)
    out = _wrap(plain_clusters(local, dim), w, placements, w.shape)
    return out.redistribute(w.device_mesh, w.placements)


def soft_threshold(w: Any, t: float | torch.Tensor) -> Any:
    """`weightshare.soft_threshold` of a ``DTensor`` (elementwise: on the local shard)."""
    from ._prox import soft_threshold as plain_soft

    val.check_float(w, "w")
    _check_lam_kind(t, "t")
    _splits_vectors(w, None)  # NotImplementedError for Partial
    if isinstance(t, torch.Tensor):  # the plain function checks the rest of t on the local part
        try:
            full = t.to(w.device).broadcast_to(w.shape)
        except RuntimeError:
            raise ValueError(
                f"t of shape {tuple(t.shape)} does not broadcast to {tuple(w.shape)}"
            ) from None
        t = _local_part(full, w, w.placements)
    return _wrap(plain_soft(w.to_local(), t), w, w.placements, w.shape)
