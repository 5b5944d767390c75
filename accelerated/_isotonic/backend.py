r"""The backend interface: one isotonic method and the whole prox of a batch of rows built on it.

A backend answers three calls, the only ones the prox pipeline makes:

* :meth:`Backend.prox_rows`: the prox of every row of one ``(B, d)`` tensor (sort, ramp,
  isotonic step, cast, unsort), with the sort permutation and the sorted float64 prox values
  the backward pass needs;
* :meth:`Backend.prox_packed`: the prox of several row sets at once, without autograd (the fused
  pass of ``prox_many`` and of the attach step); :meth:`Backend.group` says which row sets may
  share one call;
* ``Backend.isotonic``: the ``(B, n) -> (B, n)`` isotonic regression itself.

This base class is the torch-op pipeline around any ``isotonic`` function ("rounds", "search",
"hull"): ``torch.sort``, the ramp in float64, the kernel, a scatter; row sets of different
lengths take the ragged pass of ``ragged.prox_ragged`` (no padding to the longest). Backends
with their own pipeline ("pava" on the host, "triton") override what they fuse.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch

from .. import _rows
from .ragged import prox_ragged

#: ``(out rows, sort permutation, sorted float64 prox values)``
RowsResult = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class Backend:
    """The prox pipeline of one isotonic method in torch ops.

    Args:
        name: the method's name (``method=`` of the prox).
        isotonic: the row-wise isotonic regression, ``(B, n) -> (B, n)`` float32/float64.
    """

    def __init__(self, name: str, isotonic: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.name = name
        #: the row-wise isotonic regression of a contiguous ``(B, n)`` float tensor
        self.isotonic = isotonic

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def check_device(self, t: torch.Tensor) -> None:
        """Raise if the method cannot run on ``t``'s device (every device here)."""

    def group(self, rows: torch.Tensor) -> Hashable:
        """Row sets with equal keys may share one :meth:`prox_packed` call."""
        return (rows.dtype, rows.device)

    def prox_rows(
        self, rows: torch.Tensor, lam: float | torch.Tensor, with_z: bool = True
    ) -> RowsResult:
        """The prox of each row of ``rows`` (``(B, d)``, ``B·d > 0``) with strength ``lam`` (a
        float or a float64 ``(B, 1)`` column). ``with_z=False`` lets a backend skip the sorted
        values (they are only needed for the backward pass)."""
        d = rows.shape[1]
        xs, perm = torch.sort(rows, dim=1)
        z = xs.to(torch.float64)
        if is_active(d, lam):
            z = z - collapse_clamp(xs, lam) * _rows.ramp(d, rows.device)
            z = self.isotonic(z.contiguous())
        out = torch.zeros_like(rows).scatter(1, perm, z.to(rows.dtype))
        return out, perm, z

    def prox_packed(
        self, rows: list[torch.Tensor], lams: list[float | torch.Tensor]
    ) -> list[torch.Tensor]:
        """Prox of several non-empty ``(B_i, d_i)`` row sets of one :meth:`group` in one pass.

        Row sets of length 1 or with the strength 0 (a number) are copied (the identity,
        PROX-11). The others: when all have one length, one :meth:`prox_rows` of their
        concatenation; else the ragged pass of ``ragged.prox_ragged`` (one flat sort, the kernel
        on length classes, no padding to the longest), whose work is proportional to the values.
        """
        outs: list[torch.Tensor | None] = [
            r.clone() if not is_active(r.shape[1], lam) else None
            for r, lam in zip(rows, lams, strict=True)
        ]
        todo = [i for i, out in enumerate(outs) if out is None]
        if todo:
            chosen, chosen_lams = [rows[i] for i in todo], [lams[i] for i in todo]
            if len({r.shape[1] for r in chosen}) == 1:  # nothing ragged
                strengths = stacked_strengths(chosen, chosen_lams)
                out, _, _ = self.prox_rows(torch.cat(chosen), strengths, False)
                solved = list(out.split([r.shape[0] for r in chosen]))
            else:
                solved = self.prox_ragged(chosen, chosen_lams)
            for i, part in zip(todo, solved, strict=True):
                outs[i] = part
        return [out for out in outs if out is not None]

    def prox_ragged(
        self, rows: list[torch.Tensor], lams: list[float | torch.Tensor]
    ) -> list[torch.Tensor]:
        """The prox of row sets of different lengths (each longer than 1, each strength active):
        ``ragged.prox_ragged`` around :attr:`isotonic`. Backends with a segmented pipeline of
        their own override this."""
        return prox_ragged(self.isotonic, rows, lams)


def is_active(d: int, lam: float | torch.Tensor) -> bool:
    """Whether the prox can move a row of length ``d`` (else it is the identity)."""
    return d > 1 and (isinstance(lam, torch.Tensor) or lam != 0.0)


def collapse_clamp(xs: torch.Tensor, lam: float | torch.Tensor) -> torch.Tensor:
    r"""Per sorted row of ``xs`` (the padding, if any, at the row maximum), the float64 ``(B, 1)``
    strength ``min(lam, max - min)``: the same prox, since every $\lambda \ge \max - \min$
    collapses the row to its mean (PROX-5), but with ramp terms of the row's size, so that a huge
    λ still returns the mean (PROX-21). Sync-free."""
    span = xs[:, -1:].to(torch.float64) - xs[:, :1].to(torch.float64)
    if isinstance(lam, torch.Tensor):
        return torch.minimum(span, lam)
    return span.clamp(max=lam)


def stacked_strengths(
    rows: list[torch.Tensor], lams: list[float | torch.Tensor]
) -> float | torch.Tensor:
    """One float when every strength is the same float, else a float64 ``(sum B_i, 1)`` column."""
    floats = [lam for lam in lams if not isinstance(lam, torch.Tensor)]
    if len(floats) == len(lams) and len(set(floats)) == 1:
        return floats[0]
    device = rows[0].device
    return torch.cat(
        [
            torch.as_tensor(lam, dtype=torch.float64, device=device)
            .reshape(-1, 1)
            .expand(r.shape[0], 1)
            for r, lam in zip(rows, lams, strict=True)
        ]
    )
