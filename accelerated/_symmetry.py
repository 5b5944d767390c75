r"""Weight symmetry in torch: store only the free parameters, gather the weight in forward.

The linear kinds are precomputed orbit tables (deterministic ArbNet hashes) built once by
vectorized label propagation; ``forward`` is one gather, so autograd's backward is the scatter-add
``∂L/∂free_k = Σ_{H[p]=k} ∂L/∂W_p``. ``eigen`` is $W = V\operatorname{diag}(e)V^\top$ per tap.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from . import _checks as checks
from .reference._args import KINDS as KINDS
from .reference._args import parse_kind

__all__ = [
    "KINDS",
    "TABLE_CACHE_BYTES",
    "TABLE_CACHE_ENTRIES",
    "Symmetry",
    "build",
    "cache_bytes",
    "clear_cache",
    "free",
    "num_free",
    "project",
    "symmetric",
    "table",
]


#: The most bytes of index tables the process-wide cache keeps (least recently used out first).
TABLE_CACHE_BYTES = 64 * 2**20
#: The most tables it keeps, whatever their size.
TABLE_CACHE_ENTRIES = 1024

TableKey = tuple[tuple[str, ...], tuple[int, ...], tuple[tuple[str, Any], ...]]
_cache: OrderedDict[TableKey, Tensor] = OrderedDict()
_lock = threading.Lock()


def _cached_table(key: TableKey) -> Tensor:
    """The CPU orbit table of ``key``, from the LRU cache bounded by :data:`TABLE_CACHE_BYTES`."""
    with _lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    H = _orbit_table(key[0], key[1], dict(key[2]))
    if H.nbytes <= TABLE_CACHE_BYTES:
        with _lock:
            _cache[key] = H
            total = sum(t.nbytes for t in _cache.values())
            while total > TABLE_CACHE_BYTES or len(_cache) > TABLE_CACHE_ENTRIES:
                total -= _cache.popitem(last=False)[1].nbytes
    return H


def cache_bytes() -> int:
    """The bytes of the index tables in the process-wide cache (at most ``TABLE_CACHE_BYTES``)."""
    with _lock:
        return sum(t.nbytes for t in _cache.values())


def cached_bytes_of(keys: Iterable[TableKey]) -> int:
    """The bytes of the cached tables among ``keys`` (each table once)."""
    with _lock:
        return sum(_cache[k].nbytes for k in set(keys) if k in _cache)


def clear_cache() -> None:
    """Empty the process-wide cache of index tables (modules keep their own copies)."""
    with _lock:
        _cache.clear()


def _key(parts: tuple[str, ...], shape: tuple[int, ...], kw: dict[str, Any]) -> TableKey:
    return parts, shape, tuple(sorted(kw.items()))


def _chunk_min(labels: Tensor, shape: tuple[int, ...], dim: int, chunks: int) -> Tensor:
    """Each label replaced by the minimum over its ``chunk`` orbit (all ``chunks`` copies)."""
    split = (*shape[:dim], chunks, shape[dim] // chunks, *shape[dim + 1 :])
    view = labels.reshape(split)
    return view.amin(dim, keepdim=True).expand(split).reshape(-1)


def _orbit_table(parts: tuple[str, ...], shape: tuple[int, ...], kw: dict[str, Any]) -> Tensor:
    """Orbit table on the CPU in O(numel) per round: min-label propagation with pointer jumping.

    Every label is a flat index in its own orbit. A round takes the minimum over each whole
    ``chunk`` orbit (one reduction, whatever ``chunks`` is), then over each involution (the
    transposes and flips), then jumps ``label = label[label]``; the rounds stop when nothing
    changes (a few: the group is a point group of at most 8 elements times the chunk shifts).
    Slots number the orbit minima in increasing order.
    """
    idx = torch.arange(math.prod(shape)).reshape(shape)
    gens: list[Tensor] = []
    for part in parts:
        if part in ("symmetric", "channel"):
            gens.append(idx.transpose(0, 1))
        elif part == "quarter":
            gens += [idx.transpose(0, 1), idx.transpose(0, 1).flip(0, 1)]
        elif part == "eightfold":
            gens += [idx.transpose(0, 1), idx.flip(0), idx.flip(1)]
        elif part == "block4":
            gens += [idx.flip(0), idx.flip(1)]
        elif part == "spatial":
            gens.append(idx.transpose(2, 3))
    perms = [g.reshape(-1) for g in gens]
    rep = idx.reshape(-1)
    while True:
        new = rep
        if "chunk" in parts:
            new = _chunk_min(new, shape, kw["dim"], kw["chunks"])
        for perm in perms:
            new = torch.minimum(new, new[perm])
        new = new[new]
        if torch.equal(new, rep):
            break
        rep = new
    roots = rep == idx.reshape(-1)
    slots = torch.cumsum(roots, 0) - 1
    return slots[rep].reshape(shape)


def table(
    kind: str, shape: Sequence[int], *, device: torch.device | str | None = None, **kind_kwargs: Any
) -> Tensor:
    r"""The index table $H$ of a linear kind, $W = \text{free}[H]$ (an ArbNet-style table).

    Args:
        kind: A linear kind or a ``+``-joined combination of them (not ``eigen``).
        shape: The weight shape.
        device: Where to put the table (CPU by default).
        **kind_kwargs: ``chunks`` and ``dim`` for ``chunk``.

    Returns:
        An int64 tensor of ``shape``; slot ``k`` is the orbit with the ``k``-th smallest
        row-major flat index.
    """
    parts, kw = parse_kind(kind, shape, kind_kwargs)
    if parts == ("eigen",):
        raise ValueError("kind 'eigen' is not linear and has no index table")
    shape = tuple(int(s) for s in shape)
    return _cached_table(_key(parts, shape, kw)).to(device, copy=True)


def num_free(kind: str, shape: Sequence[int], **kind_kwargs: Any) -> int:
    r"""The number of free parameters of ``kind`` for a weight of ``shape`` (the spec formulas).

    Args:
        kind: A kind, or a ``+``-joined combination of linear kinds.
        shape: The weight shape.
        **kind_kwargs: ``chunks``/``dim`` for ``chunk``, ``rank`` for ``eigen``.

    Returns:
        The count; for a combination, the number of orbits of the generated group.
    """
    parts, kw = parse_kind(kind, shape, kind_kwargs)
    shape = tuple(int(s) for s in shape)
    if len(parts) > 1:
        return int(table(kind, shape, **kind_kwargs).max()) + 1
    part, n, taps = parts[0], shape[0], math.prod(shape[2:])
    half = -(-n // 2)
    if part in ("symmetric", "channel"):
        return taps * n * (n + 1) // 2
    if part == "quarter":
        return taps * half * (n // 2 + 1)
    if part == "eightfold":
        return taps * half * (half + 1) // 2
    if part == "block4":
        return taps * half * (-(-shape[1] // 2))
    if part == "spatial":
        return shape[0] * shape[1] * shape[2] * (shape[2] + 1) // 2
    if part == "chunk":
        return math.prod(shape) // int(kw["chunks"])
    return taps * int(kw["rank"]) * (n + 1)  # eigen


def _eigen_build(free: Tensor, shape: tuple[int, ...], rank: int) -> Tensor:
    n, taps = shape[0], math.prod(shape[2:])
    V = free[: taps * n * rank].reshape(taps, n, rank)
    e = free[taps * n * rank :].reshape(taps, rank)
    return ((V * e.unsqueeze(1)) @ V.transpose(1, 2)).permute(1, 2, 0).reshape(shape)


def _eigen_free(W: Tensor, rank: int) -> Tensor:
    if W.dtype in (torch.float16, torch.bfloat16):  # eigh has no half kernels: float32, cast back
        return _eigen_free(W.float(), rank).to(W.dtype)
    n = W.shape[0]
    S = W.reshape(n, n, -1).permute(2, 0, 1)
    S = (S + S.transpose(1, 2)) / 2
    evals, evecs = torch.linalg.eigh(S)
    order = torch.argsort(evals.abs(), dim=1, descending=True, stable=True)[:, :rank]
    e = torch.gather(evals, 1, order)
    V = torch.gather(evecs, 2, order.unsqueeze(1).expand(-1, n, -1))
    return torch.cat([V.reshape(-1), e.reshape(-1)])


def _orbit_mean(W: Tensor, H: Tensor, count: int) -> Tensor:
    flat = H.reshape(-1)
    sums = torch.zeros(count, dtype=W.dtype, device=W.device).index_add_(0, flat, W.reshape(-1))
    sizes = torch.bincount(flat, minlength=count).to(W.dtype)
    return sums / sizes


def build(kind: str, free: Tensor, shape: Sequence[int], **kind_kwargs: Any) -> Tensor:
    r"""The weight built from its free parameters (differentiable; dtype/device of ``free``).

    Linear kinds: ``free[table(kind, shape)]``. ``eigen``: ``free`` is $V$ of shape $(T, n, r)$
    then $e$ of shape $(T, r)$, and $W_{:,:,t} = V_t\operatorname{diag}(e_t)V_t^\top$.

    Args:
        kind: The symmetry kind.
        free: The free-parameter vector, of length ``num_free(kind, shape)``.
        shape: The weight shape.
        **kind_kwargs: ``chunks``/``dim`` for ``chunk``, ``rank`` for ``eigen``.

    Returns:
        The weight, of ``shape``.
    """
    parts, kw = parse_kind(kind, shape, kind_kwargs)
    shape = tuple(int(s) for s in shape)
    free = checks.check_float_values(free, "free")
    count = num_free(kind, shape, **kind_kwargs)
    if tuple(free.shape) != (count,):
        raise ValueError(
            f"free must have shape ({count},) for kind {kind!r} and shape {shape}, "
            f"got shape {tuple(free.shape)}"
        )
    if parts == ("eigen",):
        return _eigen_build(free, shape, kw["rank"])
    return free[table(kind, shape, device=free.device, **kind_kwargs)]


def free(kind: str, W: Tensor, **kind_kwargs: Any) -> Tensor:
    r"""The free parameters of the least-squares closest weight of ``kind`` (inverse of ``build``).

    Linear kinds: the mean of ``W`` over each orbit. ``eigen``: per tap, the eigenpairs of
    $(W + W^\top)/2$ with the ``rank`` largest $|\lambda|$, in that order, as $V$ then $e$.

    Args:
        kind: The symmetry kind.
        W: The dense weight.
        **kind_kwargs: ``chunks``/``dim`` for ``chunk``, ``rank`` for ``eigen``.

    Returns:
        A vector of length ``num_free(kind, W.shape)``.
    """
    W = checks.check_float_values(W, "W")
    parts, kw = parse_kind(kind, W.shape, kind_kwargs)
    if parts == ("eigen",):
        return _eigen_free(W, kw["rank"])
    H = table(kind, W.shape, device=W.device, **kind_kwargs)
    return _orbit_mean(W, H, num_free(kind, W.shape, **kind_kwargs))


def project(kind: str, W: Tensor, **kind_kwargs: Any) -> Tensor:
    r"""The closest weight of ``kind`` to ``W`` (Frobenius): ``build(kind, free(kind, W))``.

    Args:
        kind: The symmetry kind.
        W: The dense weight.
        **kind_kwargs: ``chunks``/``dim`` for ``chunk``, ``rank`` for ``eigen``.

    Returns:
        A tensor of the shape, dtype and device of ``W``.
    """
    return build(kind, free(kind, W, **kind_kwargs), W.shape, **kind_kwargs)


class Symmetry(nn.Module):
    r"""Parametrization ``free (F,) -> W (shape)`` for ``torch.nn.utils.parametrize``.

    The index table is a non-persistent buffer (rebuilt from ``kind`` and ``shape``), so the
    state_dict holds only the free vector.

    Args:
        kind: The symmetry kind.
        shape: The weight shape.
        device: Device of the index table.
        **kind_kwargs: ``chunks``/``dim`` for ``chunk``, ``rank`` for ``eigen``.
    """

    def __init__(
        self,
        kind: str,
        shape: Sequence[int],
        device: torch.device | str | None = None,
        **kind_kwargs: Any,
    ) -> None:
        super().__init__()
        self.parts, self.kw = parse_kind(kind, shape, kind_kwargs)
        self.kind, self.kind_kwargs = kind, dict(kind_kwargs)
        self.shape = tuple(int(s) for s in shape)
        self.num_free = num_free(kind, self.shape, **kind_kwargs)
        self.table_key: TableKey | None = None
        if self.parts != ("eigen",):
            self.table_key = _key(self.parts, self.shape, self.kw)
        self.index: Tensor | None
        if self.parts == ("eigen",):
            self.register_buffer("index", None, persistent=False)
        else:
            H = table(kind, self.shape, device=device, **kind_kwargs)
            self.register_buffer("index", H, persistent=False)

    def forward(self, free: Tensor) -> Tensor:
        if self.index is None:
            return _eigen_build(free, self.shape, self.kw["rank"])
        return free[self.index]

    @torch.no_grad()
    def right_inverse(self, W: Tensor) -> Tensor:
        if tuple(W.shape) != self.shape:
            raise ValueError(f"expected a weight of shape {self.shape}, got {tuple(W.shape)}")
        W = checks.check_float_values(W, "W")
        if self.index is None:
            return _eigen_free(W, self.kw["rank"])
        return _orbit_mean(W, self.index.to(W.device), self.num_free)

    def extra_repr(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in sorted(self.kw.items()))
        return f"kind={self.kind!r}, shape={self.shape}, num_free={self.num_free}{extra}"


def symmetric(
    module: nn.Module, name: str = "weight", *, kind: str = "symmetric", **kind_kwargs: Any
) -> nn.Module:
    r"""Constrain ``module.<name>`` to a symmetry kind, storing only its free parameters.

    Registers a :class:`Symmetry` parametrization (``unsafe=True``: the stored original
    ``module.parametrizations.<name>.original`` has shape ``(num_free,)``). The current dense
    weight is projected (least squares) onto the kind.

    Args:
        module: The module owning the tensor.
        name: The tensor's attribute name.
        kind: The symmetry kind (see the spec page), or a ``+``-joined combination.
        **kind_kwargs: ``chunks``/``dim`` for ``chunk``, ``rank`` for ``eigen``.

    Returns:
        The module, parametrized in place.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    W = getattr(module, name, None)
    if not isinstance(W, Tensor):
        raise ValueError(f"module has no tensor named {name!r}")
    if parametrize.is_parametrized(module, name):
        raise ValueError(f"{name!r} is already parametrized; symmetric needs a plain tensor")
    checks.check_float_values(W, name)
    param = Symmetry(kind, W.shape, device=W.device, **kind_kwargs)
    parametrize.register_parametrization(module, name, param, unsafe=True)
    return module
