r"""The prox verbs on plain tensors: validation, the autograd pipeline, fused batches.

Pipeline for each vector (a row of a ``(B, d)`` view): sort ascending, subtract the ramp
$\lambda(2k-d-1)/(d-1)$ in float64, isotonic regression, cast back to the input dtype, unsort:
one call of the method's backend. The checked verbs validate their inputs (one host read) and
then call the ``*_unchecked`` functions, which never synchronize with the device for "search",
"hull" and "triton". ``DTensor`` inputs never reach this module (see ``_api``).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import torch

from . import _checks as checks
from . import _methods as methods
from . import _rows as rows_
from ._isotonic import Backend, backend

# ---------------------------------------------------------------------------------------------
# The autograd pipeline


def _forward(
    v: torch.Tensor, lam: float | torch.Tensor, dim: int | None, method: str, with_z: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows = rows_.rows(v, dim)
    if rows.numel() == 0:
        empty = torch.zeros(rows.shape, dtype=torch.int64, device=v.device)
        return v.clone(), empty, empty.to(torch.float64)
    out, perm, zs = backend(method).prox_rows(rows, lam, with_z)
    return rows_.unrows(out, v.shape, dim).contiguous(), perm, zs


class _Prox(torch.autograd.Function):
    """prox with the block-averaging Jacobian as backward."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        v: torch.Tensor, lam: float | torch.Tensor, dim: int | None, method: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _forward(v, lam, dim, method)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        v, lam, dim, _ = inputs
        _, perm, zs = output
        ctx.mark_non_differentiable(perm, zs)
        lam_t = lam if isinstance(lam, torch.Tensor) else None
        ctx.save_for_backward(perm, zs, lam_t)
        ctx.lam_is_zero = (not isinstance(lam, torch.Tensor)) and lam == 0.0
        ctx.dim = dim
        ctx.shape = v.shape

    @staticmethod
    def backward(
        ctx: Any, grad: torch.Tensor, _grad_perm: Any, _grad_zs: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None, None, None]:
        perm, zs, lam_t = ctx.saved_tensors
        perm = perm.long()  # the host path keeps int32 indices
        g_rows = rows_.rows(grad, ctx.dim)
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
        grad_v = rows_.unrows(grad_rows, ctx.shape, ctx.dim)
        grad_lam = None
        if lam_t is not None and ctx.needs_input_grad[1]:
            grad_lam = -(avg * rows_.ramp(d, avg.device)).sum(1, keepdim=True).to(lam_t.dtype)
        return grad_v, grad_lam, None, None


def _block_average(
    g_sorted: torch.Tensor, zs: torch.Tensor, lam_t: torch.Tensor | None, lam_is_zero: bool
) -> torch.Tensor:
    """Average ``g_sorted`` over the runs of equal values of ``zs`` in each row (the clusters).

    With λ = 0 the prox is the identity, so every entry is its own cluster.
    """
    new = zs[:, 1:] != zs[:, :-1]
    if lam_is_zero:
        new = torch.ones_like(new)
    elif lam_t is not None:
        new = new | (lam_t == 0)
    return rows_.run_means(g_sorted, rows_.run_labels(new))


def _needs_grad(v: torch.Tensor, lam: object) -> bool:
    return torch.is_grad_enabled() and (
        v.requires_grad or (isinstance(lam, torch.Tensor) and lam.requires_grad)
    )


def prox_unchecked(
    v: torch.Tensor, lam: checks.Lam, dim: int | None = None, method: str = "auto"
) -> torch.Tensor:
    """The prox pipeline without input validation (no host reads for "search"/"hull")."""
    if dim is not None:
        dim = dim % max(v.dim(), 1)
    method = methods.resolve_method(method, v)
    lam_rows = rows_.strength_rows(lam, v, dim)
    if method == "triton" and not _needs_grad(v, lam):
        # no backward pass: skip the float64 copy of the result it would need
        return _forward(v, lam_rows, dim, method, with_z=False)[0]
    out: torch.Tensor = _Prox.apply(v, lam_rows, dim, method)[0]  # type: ignore[no-untyped-call]
    return out


# ---------------------------------------------------------------------------------------------
# Checked verbs


def validate(
    v: torch.Tensor, lam: object, dim: object, method: object
) -> tuple[int | None, checks.Lam, str]:
    """All checks of a prox call: ``(dim, lam, method)`` normalised, or the error."""
    checks.check_float(v, "v")
    method = methods.check_method(method)
    methods.check_device(method, v)
    dim = checks.normalize_dim(v, dim)
    lam = checks.check_strength(lam, v, dim)
    if checks.should_validate(v):
        checks.check_values([v], ["v"], [lam], ["lam"])
    return dim, lam, method


def prox(v: torch.Tensor, lam: object, dim: object = None, method: object = "auto") -> torch.Tensor:
    """``weightshare.prox`` of a plain tensor."""
    dim, lam, method = validate(v, lam, dim, method)
    return prox_unchecked(v, lam, dim, method)


def prox_(
    v: torch.Tensor, lam: object, dim: object = None, method: object = "auto"
) -> torch.Tensor:
    """``weightshare.prox_`` of a plain tensor."""
    dim, lam, method = validate(v, lam, dim, method)
    with torch.no_grad():
        v.copy_(prox_unchecked(v.detach(), lam, dim, method))
    return v


def check_many(
    tensors: object, lams: object, dim: object, method: object
) -> tuple[list[torch.Tensor], list[checks.Lam], list[int | None], str]:
    """The static checks of ``prox_many`` (no value is read): tensors, strengths, dims, method."""
    tensor_list = checks.tensor_list(tensors)
    method = methods.check_method(method)
    raw = checks.strength_list(lams, len(tensor_list))
    lam_list: list[checks.Lam] = []
    dims: list[int | None] = []
    for i, (t, lam) in enumerate(zip(tensor_list, raw, strict=True)):
        checks.check_float(t, f"tensors[{i}]")
        methods.check_device(method, t)
        dims.append(checks.normalize_dim(t, dim))
        lam_list.append(checks.check_strength(lam, t, dims[-1], f"lams[{i}]"))
    return tensor_list, lam_list, dims, method


def check_many_values(tensors: list[torch.Tensor], lams: list[checks.Lam]) -> None:
    """The NaN/inf and negative-strength checks of ``prox_many`` (one host read per device)."""
    checked = [i for i, t in enumerate(tensors) if checks.should_validate(t)]
    if checked:
        checks.check_values(
            [tensors[i] for i in checked],
            [f"tensors[{i}]" for i in checked],
            [lams[i] for i in checked],
            [f"lams[{i}]" if len(tensors) > 1 else "lams" for i in checked],
        )


def prox_many(
    tensors: Sequence[torch.Tensor], lams: object, dim: object = None, method: object = "auto"
) -> list[torch.Tensor]:
    """``weightshare.prox_many`` of plain tensors."""
    tensor_list, lam_list, dims, method = check_many(tensors, lams, dim, method)
    check_many_values(tensor_list, lam_list)
    return prox_many_unchecked(tensor_list, lam_list, dims, method)


def prox_many_unchecked(
    tensors: list[torch.Tensor], lams: list[checks.Lam], dims: list[int | None], method: str
) -> list[torch.Tensor]:
    """The fused prox of validated tensors: one backend call per backend group."""
    if any(_needs_grad(t, lam) for t, lam in zip(tensors, lams, strict=True)):
        return [
            prox_unchecked(t, lam, d, method) for t, lam, d in zip(tensors, lams, dims, strict=True)
        ]
    results: list[torch.Tensor | None] = [None] * len(tensors)
    rows = [rows_.rows(t.detach(), d) for t, d in zip(tensors, dims, strict=True)]
    groups: dict[tuple[Backend, Hashable], list[int]] = {}
    for i, t in enumerate(tensors):
        if rows[i].numel():
            found = methods.backend_for(method, t)
            groups.setdefault((found, found.group(rows[i])), []).append(i)
        else:  # empty tensors
            results[i] = t.detach().clone()
    for (found, _), members in groups.items():
        outs = found.prox_packed(
            [rows[i] for i in members],
            [rows_.strength_rows(lams[i], tensors[i], dims[i]) for i in members],
        )
        for i, out in zip(members, outs, strict=True):
            results[i] = rows_.unrows(out, tensors[i].shape, dims[i]).contiguous()
    return [r for r in results if r is not None]


# ---------------------------------------------------------------------------------------------
# clusters and soft-thresholding


def clusters(w: torch.Tensor, dim: object = None) -> torch.Tensor:
    """``weightshare.clusters`` of a plain tensor."""
    checks.check_float(w, "w")
    dim = checks.normalize_dim(w, dim)
    if checks.should_validate(w):
        checks.check_values([w], ["w"])
    rows = rows_.rows(w.detach(), dim)
    b, d = rows.shape
    if b * d == 0:
        return torch.zeros(w.shape, dtype=torch.int64, device=w.device)
    xs, perm = torch.sort(rows, dim=1)
    out = torch.zeros_like(perm).scatter(1, perm, rows_.sorted_labels(xs))
    return rows_.unrows(out, w.shape, dim).contiguous()


def check_threshold(t: object, w: torch.Tensor) -> checks.Lam:
    """A soft threshold for ``w``: a number >= 0, or a real tensor broadcastable to ``w``."""
    if isinstance(t, torch.Tensor):
        checks.check_broadcast(t, w.shape, "t")
        return t
    return checks.check_strength(t, w, None, "t")


def soft_threshold(w: torch.Tensor, t: object) -> torch.Tensor:
    """``weightshare.soft_threshold`` of a plain tensor."""
    checks.check_float(w, "w")
    t = check_threshold(t, w)
    if checks.should_validate(w):
        checks.check_values([w], ["w"], [t], ["t"])
    return soft_threshold_unchecked(w, t)


def soft_threshold_unchecked(w: torch.Tensor, t: checks.Lam) -> torch.Tensor:
    """``soft_threshold`` without validation (never reads a value)."""
    if isinstance(t, torch.Tensor):
        t = t.to(device=w.device, dtype=w.dtype)
    return w.sign() * (w.abs() - t).clamp_min(0.0)
