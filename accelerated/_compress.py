r"""``ws.compress``: every weight in its smallest exact form (spec page *Storage*, STORE-10).

For each floating parameter $w$ of $n$ entries ($s$ bytes each), $K$ distinct bit patterns, $z$
non-zeros (not $+0.0$) and $K_z$ distinct non-zero patterns, the stored bytes of each form are

- dense: $ns$;
- tied: $Ks + \lceil n \lceil\log_2 K\rceil / 8\rceil$ (codebook + packed labels);
- sparse: $zs + m$, with $m$ the smaller of the bitmap and CSR layouts (``_sparse``);
- sparse-tied: $K_z s + \lceil z \lceil\log_2 K_z\rceil / 8\rceil + m$.

The smallest wins (on a tie the earlier in this list). A $-0.0$ entry counts as $+0.0$ (it is
stored as $+0.0$); every other value is kept exactly (distinct means distinct bit patterns), so the
outputs after ``compress`` equal those before (``torch.equal``: only the sign of an exact zero
output can change). A factorized weight is first collapsed to the product of its
factors (computed as its forward computes it), entries below ``threshold`` set to 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from . import _checks as checks
from ._dropped import tracking
from ._factorization import Factorization, product
from ._memory_format import in_format
from ._packing import bit_width
from ._parametrized import original, parametrizations_of
from ._sparse import Sparse, mask_bytes, nonzero_mask
from ._structures import (
    Entry,
    Step,
    copy_into,
    current_memory_format,
    entries,
    make_plain,
    restructure,
)
from ._tie import Tied
from ._transaction import transaction

__all__ = ["FORMS", "compress", "form_bytes"]

FORMS = ("dense", "tied", "sparse", "sparse-tied")


@dataclass(frozen=True)
class _Counts:
    numel: int
    itemsize: int
    distinct: int
    nonzero: int
    distinct_nonzero: int


def _counts(w: Tensor) -> _Counts:
    nz = nonzero_mask(w).reshape(-1)
    patterns = _patterns(w)
    distinct = int(torch.unique(patterns).numel()) if w.numel() else 0
    nonzero = int(nz.sum())
    has_zero = nonzero < w.numel()
    return _Counts(w.numel(), w.element_size(), distinct, nonzero, distinct - int(has_zero))


def _patterns(w: Tensor) -> Tensor:
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[w.element_size()]
    return w.detach().contiguous().view(ints).reshape(-1)


def form_bytes(c: _Counts, form: str, shape: tuple[int, ...]) -> int:
    """The stored bytes of ``form`` for a weight with counts ``c`` (the formulas above)."""
    n, s, k, z, kz = c.numel, c.itemsize, c.distinct, c.nonzero, c.distinct_nonzero
    if form == "dense":
        return n * s
    if form == "tied":
        return k * s + math.ceil(n * bit_width(max(k, 1)) / 8)
    if form == "sparse":
        return z * s + mask_bytes(shape, z)
    return kz * s + math.ceil(z * bit_width(max(kz, 1)) / 8) + mask_bytes(shape, z)


def _choose(c: _Counts, shape: tuple[int, ...], max_values: int | None) -> str:
    allowed = ["dense", "sparse"]
    if max_values is None or c.distinct <= max_values:
        allowed.append("tied")
    if c.distinct_nonzero >= 1 and (max_values is None or c.distinct_nonzero <= max_values):
        allowed.append("sparse-tied")
    return min((f for f in FORMS if f in allowed), key=lambda f: form_bytes(c, f, shape))


def compress(
    module: nn.Module,
    *,
    threshold: float = 0.0,
    min_numel: int = 0,
    max_values: int | None = None,
) -> nn.Module:
    r"""Store every weight of ``module`` in its smallest exact form, in place (recursive).

    Each floating parameter becomes tied (codebook + bit-packed labels), sparse (non-zeros +
    bitmap or CSR), sparse-tied, or stays dense: whichever stores the fewest bytes (spec
    STORE-10). A factorized weight is collapsed first (entries with $|w| <$ ``threshold`` set to
    0; only exact zeros when ``threshold`` is 0). Hashed, symmetric, tied and sparse weights and
    all buffers are left as they are. The outputs equal those before (``torch.equal``, with
    ``threshold = 0``; a $-0.0$ entry is stored as $+0.0$). The compressed values stay trainable
    parameters. A tensor shared by several modules gets one structure that all of them see; each
    weight keeps its memory format; either every weight is compressed or nothing is changed.

    Args:
        module: The model (or one layer).
        threshold: The collapse threshold for factorized weights ($\ge 0$).
        min_numel: Leave weights with fewer entries dense (a collapsed weight stays collapsed).
        max_values: Leave a weight untied when it has more distinct values than this.

    Returns:
        ``module``.

    Raises:
        ValueError: A weight to compress holds NaN/inf (all such weights are named, with
            counts, and nothing is changed), or an argument is out of range.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"compress expects an nn.Module, got {type(module).__name__}")
    threshold = float(threshold)
    if not (math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"threshold must be finite and >= 0, got {threshold}")
    if isinstance(min_numel, bool) or not isinstance(min_numel, int) or min_numel < 0:
        raise ValueError(f"min_numel must be an int >= 0, got {min_numel!r}")
    if max_values is not None and (
        isinstance(max_values, bool) or not isinstance(max_values, int) or max_values < 1
    ):
        raise ValueError(f"max_values must be None or an int >= 1, got {max_values!r}")
    todo: list[tuple[Entry, Tensor]] = []
    bad: list[str] = []
    for e in entries(module):
        w = _candidate(e, threshold)
        if w is None:
            continue
        count = int((~torch.isfinite(w)).sum())
        if count:
            bad.append(checks.nonfinite_message(f"{e.name!r} of shape {tuple(w.shape)}", count))
        todo.append((e, w))
    if bad:
        raise ValueError(f"compress changed nothing: {'; '.join(bad)}")
    steps = [_step(e, w, min_numel, max_values) for e, w in todo]
    with tracking(module, "collapsed by ws.compress"), transaction(module):
        for step in steps:
            step()
    return module


def _candidate(e: Entry, threshold: float) -> Tensor | None:
    """The dense value of a weight ``compress`` handles, else ``None``."""
    if e.kind == "factorized":
        depth = cast(Factorization, parametrizations_of(e.owner, e.attr)[0]).depth
        with torch.no_grad():
            w = product([original(e.owner, e.attr, d) for d in range(depth)])
            return torch.where(w.abs() < threshold, torch.zeros_like(w), w)
    if e.kind == "dense" and e.attr in e.owner._parameters:
        p = e.owner._parameters[e.attr]
        if p is not None and p.is_floating_point() and p.numel() > 0:
            return p.detach()
    return None


def _step(e: Entry, w: Tensor, min_numel: int, max_values: int | None) -> Step:
    fmt = current_memory_format(e)
    w = w + 0.0  # -0.0 becomes +0.0, nothing else changes
    shape = tuple(w.shape)
    form = "dense" if w.numel() < min_numel else _choose(_counts(w), shape, max_values)
    flat = w.reshape(-1)
    if form == "dense":
        if e.kind == "dense":
            return lambda: None
        return lambda: _collapse(e, w)
    if form == "tied":
        patterns, labels = torch.unique(_patterns(w), return_inverse=True)
        values = patterns.view(w.dtype)
        tied = Tied(in_format(labels.reshape(shape), fmt), values.numel())
        return restructure(e, tied, True, [values])
    positions = torch.nonzero(nonzero_mask(w).reshape(-1)).reshape(-1)
    if form == "sparse":
        structure = Sparse(shape, positions, memory_format=fmt)
        return restructure(e, structure, True, [flat[positions]])
    patterns, labels = torch.unique(_patterns(w)[positions], return_inverse=True)
    values = patterns.view(w.dtype)
    structure = Sparse(shape, positions, labels, values.numel(), memory_format=fmt)
    return restructure(e, structure, True, [values])


def _collapse(e: Entry, w: Tensor) -> None:
    parametrize.remove_parametrizations(e.owner, e.attr, leave_parametrized=True)
    weight = getattr(e.owner, e.attr)
    copy_into(weight, w)
    make_plain(e, weight)
