r"""The proximal operator of the weight-sharing penalty, batched and differentiable.

Pipeline for each vector (a row of a ``(B, d)`` view): sort ascending, subtract the ramp
$\lambda(2k-d-1)/(d-1)$ in float64, isotonic regression (``method``), cast back to the input
dtype, unsort. The public functions validate their inputs (one host read) and then call
:func:`_prox_unchecked`, which never synchronizes with the device for "search" and "hull".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from . import _distributed as _dt
from . import _validation as val
from ._isotonic import METHODS, kernel
from ._prox_host import SPLIT_MIN, prox_rows

_ALL_METHODS = (*METHODS, "auto")
_HOST_DTYPES = (torch.float32, torch.float64)


def check_method(method: str) -> None:
    """ValueError unless ``method`` is "auto" or one of the isotonic kernels' names."""
    if not isinstance(method, str) or method not in _ALL_METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(_ALL_METHODS)}")


_AVAILABLE: dict[str, bool] = {}


def _available(method: str) -> bool:
    if method not in _AVAILABLE:
        try:
            kernel(method)
            _AVAILABLE[method] = True
        except ImportError:
            _AVAILABLE[method] = False
    return _AVAILABLE[method]


def resolve_method(method: str, v: torch.Tensor) -> str:
    """The method "auto" stands for (spec PROX-16; the prox page explains the rule).

    Eager CPU tensors: host PAVA. CUDA tensors: "triton" (a few fused kernels per level) when
    Triton is importable and no ``torch.func`` transform is active (the custom ops have no
    batching rule); else the sync-free torch-op kernel with the fewest launches, "search". Other
    devices, and CPU tensors while ``torch.compile`` traces: "hull" (fewer operations of work).
    Each list falls back along "search"/"hull"/"rounds" to "pava" when a module is missing.
    """
    if method != "auto":
        return method
    if v.device.type == "cpu" and val.should_validate(v):
        return "pava"
    if v.device.type == "cuda":
        if not torch._C._functorch.is_functorch_wrapped_tensor(v) and _available("triton"):
            return "triton"
        order = ("search", "hull", "rounds")
    else:
        order = ("hull", "search", "rounds")
    return next((m for m in order if _available(m)), "pava")


def check_device(method: str, v: torch.Tensor) -> None:
    """Errors for a method that cannot run on ``v``'s device ("triton": CUDA or the interpreter)."""
    if method != "triton":
        return
    try:
        from ._isotonic import triton_hull
    except ImportError as e:
        raise ImportError(
            "method='triton' needs the triton package (it ships with torch's CUDA builds)"
        ) from e
    triton_hull.check_device(v)


# ---------------------------------------------------------------------------------------------
# Shapes: a tensor <-> a (B, d) matrix of vectors.


def _rows(t: torch.Tensor, dim: int | None) -> torch.Tensor:
    if dim is None or t.dim() == 0:
        return t.reshape(1, t.numel())
    d = t.shape[dim]
    moved = t.movedim(dim, -1)
    return moved.reshape(moved.numel() // d if d else _prod(moved.shape[:-1]), d)


def _prod(shape: Sequence[int]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def _unrows(rows: torch.Tensor, shape: torch.Size, dim: int | None) -> torch.Tensor:
    if dim is None or len(shape) == 0:
        return rows.reshape(shape)
    moved = [*shape[:dim], *shape[dim + 1 :], shape[dim]]
    return rows.reshape(moved).movedim(-1, dim)


def _ramp(d: int, device: torch.device) -> torch.Tensor:
    """The coefficients (2k-d-1)/(d-1), k = 1..d, in float64 (zeros for d < 2)."""
    k = torch.arange(d, dtype=torch.float64, device=device)
    return (2.0 * k - (d - 1)) / max(d - 1, 1)


def _lam_rows(lam: val.Lam, t: torch.Tensor, dim: int | None) -> float | torch.Tensor:
    """A float, or the strengths as a float64 ``(B, 1)`` tensor on ``t``'s device."""
    if not isinstance(lam, torch.Tensor):
        return float(lam)
    shape = val.batch_shape(t, dim)
    lam64 = lam.to(device=t.device, dtype=torch.float64)
    return lam64.broadcast_to(shape).reshape(_prod(shape), 1)


# ---------------------------------------------------------------------------------------------
# The forward pipeline on (B, d) rows.


def _forward_rows(
    rows: torch.Tensor, lam: float | torch.Tensor, method: str, with_z: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prox of each row: (output rows, sort permutation, sorted float64 prox values).

    "triton" fuses the whole pipeline; without ``with_z`` its third output is empty.
    """
    d = rows.shape[1]
    if method == "pava":
        return _forward_rows_host(rows, lam)
    active = d > 1 and (isinstance(lam, torch.Tensor) or lam != 0.0)
    if method == "triton" and active:
        from ._isotonic.triton_hull import prox_rows_triton

        return prox_rows_triton(rows, lam, with_z)
    xs, perm = torch.sort(rows, dim=1)
    z = xs.to(torch.float64)
    if active:
        z = z - lam * _ramp(d, rows.device)
        z = kernel(method)(z.contiguous())
    out = torch.zeros_like(rows).scatter(1, perm, z.to(rows.dtype))
    return out, perm, z


def _forward_rows_host(
    rows: torch.Tensor, lam: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The "pava" pipeline on host NumPy views (CUDA tensors go to the host and back)."""
    b, d = rows.shape
    device, dtype = rows.device, rows.dtype
    x = rows.detach().to("cpu")
    if dtype not in _HOST_DTYPES:
        x = x.to(torch.float32)  # exact for float16 and bfloat16
    x = x.contiguous()
    out_dtype = dtype if dtype in _HOST_DTYPES else torch.float64
    out = torch.empty((b, d), dtype=out_dtype)
    # int32 indices where they fit: the permutation is the largest buffer after the values
    perm = torch.empty((b, d), dtype=torch.int32 if d < 2**31 else torch.int64)
    zs = torch.empty((b, d), dtype=torch.float64)
    if isinstance(lam, torch.Tensor):
        lam_np = lam.detach().reshape(b).cpu().numpy()
    else:
        lam_np = np.full(b, lam)
    prox_rows(x.numpy(), lam_np, out.numpy(), perm.numpy(), zs.numpy())
    return out.to(device, dtype), perm.to(device), zs.to(device)


def _forward(
    v: torch.Tensor, lam: float | torch.Tensor, dim: int | None, method: str, with_z: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows = _rows(v, dim)
    if rows.numel() == 0:
        empty = torch.zeros(rows.shape, dtype=torch.int64, device=v.device)
        return v.clone(), empty, empty.to(torch.float64)
    out, perm, zs = _forward_rows(rows, lam, method, with_z)
    return _unrows(out, v.shape, dim).contiguous(), perm, zs


class _Prox(torch.autograd.Function):
    """prox with the block-averaging Jacobian as backward."""

    generate_vmap_rule = True

    @staticmethod
    def forward(  # type: ignore[override]
        v: torch.Tensor, lam: float | torch.Tensor, dim: int | None, method: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _forward(v, lam, dim, method)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def,override]
        v, lam, dim, _ = inputs
        _, perm, zs = output
        ctx.mark_non_differentiable(perm, zs)
        lam_t = lam if isinstance(lam, torch.Tensor) else None
        ctx.save_for_backward(perm, zs, lam_t)
        ctx.lam_is_zero = (not isinstance(lam, torch.Tensor)) and lam == 0.0
        ctx.dim = dim
        ctx.shape = v.shape

    @staticmethod
    def backward(ctx, grad, _grad_perm, _grad_zs):  # type: ignore[no-untyped-def,override]
        perm, zs, lam_t = ctx.saved_tensors
        perm = perm.long()  # the host path keeps int32 indices
        g_rows = _rows(grad, ctx.dim)
        b, d = g_rows.shape
        if b * d == 0:
            return (
                torch.zeros_like(grad),
                None if lam_t is None else torch.zeros_like(lam_t),
                None,
                None,
            )
        avg = _block_average(g_rows.gather(1, perm).to(torch.float64), zs, lam_t, ctx.lam_is_zero)
        grad_rows = torch.zeros_like(g_rows).scatter(1, perm, avg.to(g_rows.dtype))
        grad_v = _unrows(grad_rows, ctx.shape, ctx.dim)
        grad_lam = None
        if lam_t is not None and ctx.needs_input_grad[1]:
            grad_lam = -(avg * _ramp(d, avg.device)).sum(1, keepdim=True).to(lam_t.dtype)
        return grad_v, grad_lam, None, None


def _block_average(
    g_sorted: torch.Tensor, zs: torch.Tensor, lam_t: torch.Tensor | None, lam_is_zero: bool
) -> torch.Tensor:
    """Average ``g_sorted`` over the runs of equal values of ``zs`` in each row (the clusters).

    With λ = 0 the prox is the identity, so every entry is its own cluster.
    """
    b, d = g_sorted.shape
    new = zs[:, 1:] != zs[:, :-1]
    if lam_is_zero:
        new = torch.ones_like(new)
    elif lam_t is not None:
        new = new | (lam_t == 0)
    labels = torch.cat(
        [torch.zeros((b, 1), dtype=torch.int64, device=new.device), new.cumsum(1)], dim=1
    )
    ids = (labels + torch.arange(b, device=labels.device)[:, None] * d).reshape(-1)
    flat = g_sorted.reshape(-1)
    sums = torch.zeros_like(flat).scatter_add(0, ids, flat)
    counts = torch.zeros_like(flat).scatter_add(0, ids, torch.ones_like(flat))
    return (sums / counts.clamp_min(1.0)).gather(0, ids).reshape(b, d)


# ---------------------------------------------------------------------------------------------
# Public API.


def _prox_unchecked(
    v: torch.Tensor, lam: val.Lam, dim: int | None = None, method: str = "auto"
) -> torch.Tensor:
    """The prox pipeline without input validation (no host reads for "search"/"hull")."""
    if dim is not None:
        dim = dim % max(v.dim(), 1)
    method = resolve_method(method, v)
    lam_rows = _lam_rows(lam, v, dim)
    if method == "triton" and not (
        torch.is_grad_enabled()
        and (v.requires_grad or (isinstance(lam, torch.Tensor) and lam.requires_grad))
    ):  # no backward pass: skip the float64 copy of the result it would need
        return _forward(v, lam_rows, dim, method, with_z=False)[0]
    return _Prox.apply(v, lam_rows, dim, method)[0]


def _validate(v: torch.Tensor, lam: val.Lam, dim: int | None, method: str) -> int | None:
    val.check_float(v, "v")
    check_method(method)
    check_device(method, v)
    dim = val.normalize_dim(v, dim)
    val.check_lam_value(lam, v, dim)
    if val.should_validate(v):
        val.check_values([v], [lam], ["v"])
    return dim


def prox(
    v: torch.Tensor, lam: float | torch.Tensor, dim: int | None = None, *, method: str = "auto"
) -> torch.Tensor:
    r"""$\operatorname{prox}_{\lambda R}(v)$, for the whole tensor or for each slice along ``dim``.

    Differentiable: the backward pass averages the incoming gradient within each cluster (and
    gives the gradient with respect to a tensor ``lam``).

    Args:
        v: a real floating tensor of any shape, on any device.
        lam: the strength λ ≥ 0: a float, or a tensor broadcastable to the batch shape (the
            shape of ``v`` without ``dim``; ``()`` for ``dim=None``).
        dim: None: the whole tensor is one vector; an int: each slice along ``dim`` is a vector.
        method: "auto", "pava", "rounds", "search", "hull" or "triton" (the
            isotonic-regression algorithm; "triton" needs CUDA tensors).

    Returns:
        A new tensor with the shape, dtype and device of ``v``.

    Raises:
        TypeError: for a non-floating ``v`` or a non-real ``lam``.
        ValueError: for NaN/inf in ``v``, a negative or non-finite ``lam``, a ``lam`` shape that
            does not broadcast, or an unknown ``method``.
        IndexError: for ``dim`` out of range.

    Example:
        >>> import torch, weightshare
        >>> weightshare.prox(torch.tensor([0.0, 0.1, 1.0]), 0.2)
        tensor([0.1500, 0.1500, 0.8000])
    """
    if _dt.is_dtensor(v):
        return _dt.prox(v, lam, dim, method)
    dim = _validate(v, lam, dim, method)
    return _prox_unchecked(v, lam, dim, method)


def prox_(
    v: torch.Tensor, lam: float | torch.Tensor, dim: int | None = None, *, method: str = "auto"
) -> torch.Tensor:
    r"""In-place :func:`prox`: overwrite ``v`` (same storage) and return it; not differentiable.

    Args:
        v: a real floating tensor (e.g. a ``nn.Parameter``); unchanged if an error is raised.
        lam: the strength λ ≥ 0 (float or tensor broadcastable to the batch shape).
        dim: None (whole tensor) or the dimension along which the vectors lie.
        method: "auto", "pava", "rounds", "search", "hull" or "triton".

    Returns:
        ``v`` itself.

    Raises:
        TypeError: for a non-floating ``v`` or a non-real ``lam``.
        ValueError: for NaN/inf in ``v``, a bad ``lam`` or an unknown ``method``.
        IndexError: for ``dim`` out of range.

    Example:
        >>> import torch, weightshare
        >>> w = torch.nn.Parameter(torch.tensor([0.0, 0.1, 1.0]))
        >>> weightshare.prox_(w, 0.2) is w
        True
    """
    if _dt.is_dtensor(v):
        return _dt.prox_(v, lam, dim, method)
    dim = _validate(v, lam, dim, method)
    with torch.no_grad():
        v.copy_(_prox_unchecked(v.detach(), lam, dim, method))
    return v


def prox_many(
    tensors: Sequence[torch.Tensor],
    lams: float | torch.Tensor | Sequence[float | torch.Tensor],
    dim: int | None = None,
    *,
    method: str = "auto",
) -> list[torch.Tensor]:
    r""":func:`prox` of several tensors in one fused pass (one validation read, one dispatch).

    The tensors never interact: each is its own vector (``dim=None``) or batch of vectors. On the
    host path all vectors are spread over one thread pool; on the torch path the vectors of one
    dtype and device, of any lengths, are padded into one batch: one sort and one kernel call.
    Differentiable like :func:`prox` when grad mode is on and an input requires grad (then it
    runs one :func:`prox` per tensor).

    Args:
        tensors: real floating tensors (any shapes, dtypes, devices).
        lams: one strength for all, or a sequence with one float/tensor per tensor.
        dim: applied to every tensor: None (whole tensor) or the vector dimension.
        method: "auto", "pava", "rounds", "search", "hull" or "triton".

    Returns:
        A list of new tensors, in the order of ``tensors``.

    Raises:
        TypeError: for a non-floating tensor or a non-real strength.
        ValueError: for NaN/inf, a bad strength, a ``lams`` of the wrong length or an unknown
            ``method``.
        IndexError: for ``dim`` out of range for some tensor.

    Example:
        >>> import torch, weightshare
        >>> lin = torch.nn.Linear(3, 2)
        >>> w, b = weightshare.prox_many([lin.weight, lin.bias], 0.1)
    """
    tensors = list(tensors)
    if any(_dt.is_dtensor(t) for t in tensors):
        return _dt.prox_many(tensors, lams, dim, method)
    tensors, lam_list, dims = check_many(tensors, lams, dim, method)
    checked = [i for i, t in enumerate(tensors) if val.should_validate(t)]
    if checked:
        val.check_values(
            [tensors[i] for i in checked],
            [lam_list[i] for i in checked],
            [f"tensors[{i}]" for i in checked],
            "lams",
        )
    return _prox_many_unchecked(tensors, lam_list, dims, method)


def check_many(
    tensors: Sequence[torch.Tensor],
    lams: float | torch.Tensor | Sequence[float | torch.Tensor],
    dim: int | None,
    method: str,
) -> tuple[list[torch.Tensor], list[val.Lam], list[int | None]]:
    """The static checks of :func:`prox_many` (no value is read): tensors, strengths, dims."""
    tensors = list(tensors)
    check_method(method)
    if isinstance(lams, float | int | torch.Tensor):
        lam_list = [lams] * len(tensors)
    else:
        lam_list = list(lams)
        if len(lam_list) != len(tensors):
            raise ValueError(f"lams has {len(lam_list)} entries for {len(tensors)} tensors")
    dims = []
    for i, (t, lam) in enumerate(zip(tensors, lam_list, strict=True)):
        val.check_float(t, f"tensors[{i}]")
        check_device(method, t)
        dims.append(val.normalize_dim(t, dim))
        val.check_lam_value(lam, t, dims[-1], f"lams[{i}]")
    return tensors, lam_list, dims


def _prox_many_unchecked(
    tensors: list[torch.Tensor], lams: list[val.Lam], dims: list[int | None], method: str
) -> list[torch.Tensor]:
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad or (isinstance(lam, torch.Tensor) and lam.requires_grad)
        for t, lam in zip(tensors, lams, strict=True)
    )
    if needs_grad:
        return [
            _prox_unchecked(t, lam, d, method)
            for t, lam, d in zip(tensors, lams, dims, strict=True)
        ]
    methods = [resolve_method(method, t) for t in tensors]
    results: list[torch.Tensor | None] = [None] * len(tensors)
    rows = [_rows(t.detach(), d) for t, d in zip(tensors, dims, strict=True)]
    lam_rows = [_lam_rows(lam, t, d) for t, lam, d in zip(tensors, lams, dims, strict=True)]
    host = [i for i, m in enumerate(methods) if m == "pava" and rows[i].numel()]
    if host:
        outs = _host_many([rows[i] for i in host], [lam_rows[i] for i in host])
        for i, out in zip(host, outs, strict=True):
            results[i] = _unrows(out, tensors[i].shape, dims[i]).contiguous()
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(methods):
        if results[i] is None and rows[i].numel():
            groups.setdefault((m, rows[i].dtype, rows[i].device), []).append(i)
    for (m, _, _), members in groups.items():
        outs = _forward_packed([rows[i] for i in members], [lam_rows[i] for i in members], m)
        for i, out in zip(members, outs, strict=True):
            results[i] = _unrows(out, tensors[i].shape, dims[i]).contiguous()
    for i, r in enumerate(results):
        if r is None:  # empty tensors
            results[i] = tensors[i].detach().clone()
    return results  # type: ignore[return-value]


def _forward_packed(
    rows: list[torch.Tensor], lams: list[float | torch.Tensor], method: str
) -> list[torch.Tensor]:
    """Prox of several ``(B_i, d_i)`` row sets of one dtype and device in one kernel call.

    Every row is padded to the longest length D with its own maximum, sorted (stably, so the
    padding stays behind the real entries), given the ramp of its own length, and its sorted
    tail is padded with the largest real value of ``z``, which leaves the isotonic solution of the
    real part unchanged (the hull-algorithm padding argument). One sort and one kernel call over
    ``(sum B_i, D)``; then every row's first ``d_i`` outputs are unsorted back.
    """
    device = rows[0].device
    lengths = [r.shape[1] for r in rows]
    if len(set(lengths)) == 1:  # nothing to pad
        lam_cat = _stack_lams(rows, lams)
        out, _, _ = _forward_rows(torch.cat(rows), lam_cat, method)
        return list(out.split([r.shape[0] for r in rows]))
    width = max(lengths)
    padded = torch.cat(
        [
            torch.cat([r, r.amax(1, keepdim=True).expand(r.shape[0], width - d)], dim=1)
            for r, d in zip(rows, lengths, strict=True)
        ]
    )
    d_row = torch.cat(
        [
            torch.full((r.shape[0], 1), d, dtype=torch.float64, device=device)
            for r, d in zip(rows, lengths, strict=True)
        ]
    )
    xs, perm = torch.sort(padded, dim=1, stable=True)
    k = torch.arange(width, dtype=torch.float64, device=device)
    real = k < d_row
    ramp = torch.where(real, (2.0 * k - (d_row - 1)) / (d_row - 1).clamp_min(1.0), 0.0)
    z = xs.to(torch.float64) - _stack_lams(rows, lams) * ramp
    top = torch.where(real, z, -torch.inf).amax(1, keepdim=True)
    z = kernel(method)(torch.where(real, z, top).contiguous())
    out = torch.zeros_like(padded).scatter(1, perm, z.to(padded.dtype))
    return [
        part[:, :d] for part, d in zip(out.split([r.shape[0] for r in rows]), lengths, strict=True)
    ]


def _stack_lams(rows: list[torch.Tensor], lams: list[float | torch.Tensor]) -> float | torch.Tensor:
    """One float when every strength is the same float, else a float64 ``(sum B_i, 1)`` column."""
    if all(not isinstance(lam, torch.Tensor) for lam in lams) and len(set(lams)) == 1:
        return lams[0]  # type: ignore[return-value]
    device = rows[0].device
    return torch.cat(
        [
            torch.as_tensor(lam, dtype=torch.float64, device=device)
            .reshape(-1, 1)
            .expand(r.shape[0], 1)
            for r, lam in zip(rows, lams, strict=True)
        ]
    )


def _host_many(rows: list[torch.Tensor], lams: list[float | torch.Tensor]) -> list[torch.Tensor]:
    """Host-path prox of several (B_i, d_i) matrices: large ones one by one (each using every
    thread), the small ones spread over the thread pool."""
    from ._isotonic.pava import pool, threads

    large = [i for i, r in enumerate(rows) if r.numel() >= SPLIT_MIN // 2 or threads() == 1]
    small = [i for i in range(len(rows)) if i not in set(large)]
    outs: list[torch.Tensor | None] = [None] * len(rows)
    for i in large:
        outs[i] = _forward_rows_host(rows[i], lams[i])[0]
    if small:
        chunks: list[list[int]] = [[] for _ in range(threads())]
        loads = [0] * threads()
        for i in sorted(small, key=lambda i: -rows[i].numel()):
            j = loads.index(min(loads))
            chunks[j].append(i)
            loads[j] += rows[i].numel()

        def work(chunk: list[int]) -> list[torch.Tensor]:
            return [_forward_rows_host(rows[i], lams[i])[0] for i in chunk]

        futures = [(chunk, pool().submit(work, chunk)) for chunk in chunks if chunk]
        for chunk, future in futures:
            for i, out in zip(chunk, future.result(), strict=True):
                outs[i] = out
    return outs  # type: ignore[return-value]


def clusters(w: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Cluster labels: within each vector, equal label ⇔ equal value.

    Labels are ``0..k-1`` in increasing order of value (``-0.0`` equals ``0.0``), per vector.

    Args:
        w: a real floating tensor without NaN/inf.
        dim: None (the whole tensor is one vector) or the dimension along which vectors lie.

    Returns:
        An int64 tensor with the shape and device of ``w``.

    Raises:
        TypeError: for a non-floating ``w``.
        ValueError: for NaN/inf in ``w``.
        IndexError: for ``dim`` out of range.

    Example:
        >>> import torch, weightshare
        >>> weightshare.clusters(torch.tensor([0.5, -1.0, 0.5, 2.0]))
        tensor([1, 0, 1, 2])
    """
    if _dt.is_dtensor(w):
        return _dt.clusters(w, dim)
    val.check_float(w, "w")
    dim = val.normalize_dim(w, dim)
    if val.should_validate(w):
        val.check_values([w], [], ["w"])
    rows = _rows(w.detach(), dim)
    b, d = rows.shape
    if b * d == 0:
        return torch.zeros(w.shape, dtype=torch.int64, device=w.device)
    xs, perm = torch.sort(rows, dim=1)
    new = xs[:, 1:] != xs[:, :-1]
    labels = torch.cat(
        [torch.zeros((b, 1), dtype=torch.int64, device=new.device), new.cumsum(1)], dim=1
    )
    out = torch.zeros_like(labels).scatter(1, perm, labels)
    return _unrows(out, w.shape, dim).contiguous()


def soft_threshold(w: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    r"""Elementwise soft-thresholding $\operatorname{sign}(w)\max(|w|-t, 0)$.

    It is the prox of $t\|\cdot\|_1$.

    Args:
        w: a real floating tensor without NaN/inf.
        t: the threshold t ≥ 0: a float or a tensor broadcastable to ``w``.

    Returns:
        A new tensor like ``w`` (differentiable).

    Raises:
        TypeError: for a non-floating ``w`` or a non-real ``t``.
        ValueError: for NaN/inf in ``w`` or a negative, non-finite or non-broadcastable ``t``.

    Example:
        >>> import torch, weightshare
        >>> weightshare.soft_threshold(torch.tensor([-2.0, 0.5, 3.0]), 1.0)
        tensor([-1.,  0.,  2.])
    """
    if _dt.is_dtensor(w):
        return _dt.soft_threshold(w, t)
    val.check_float(w, "w")
    if isinstance(t, torch.Tensor):
        try:
            ok = torch.broadcast_shapes(t.shape, w.shape) == w.shape
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"t of shape {tuple(t.shape)} does not broadcast to {tuple(w.shape)}")
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"t must be real, got dtype {t.dtype}")
    else:
        val.check_lam_value(t, w, None, "t")
    if val.should_validate(w):
        val.check_values([w], [t], ["w"], "t")
    return soft_threshold_unchecked(w, t)


def soft_threshold_unchecked(w: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """:func:`soft_threshold` without validation (never reads a value)."""
    if isinstance(t, torch.Tensor):
        t = t.to(device=w.device, dtype=w.dtype)
    return w.sign() * (w.abs() - t).clamp_min(0.0)
