r"""The prox of a ragged batch (row sets of different lengths) without padding to the longest.

All rows are laid end to end as segments of one flat tensor (``weightshare._segments``): one
flat sort and a stable partition put every row's values in order within its own span, and the
ramp, the strength and its collapse clamp (PROX-21) are computed per value from its segment.
The row-wise isotonic kernels take ``(B, n)`` tensors, so the rows go to the kernel in groups of
*length classes* (rows with equal ``⌈log₂ d⌉``; a class joins the group of longer rows above it
while the group stays within ``MERGE_BUDGET`` times its real values): a group is gathered into
one ``(rows, D)`` tensor, ``D`` its longest length, each row padded with its own largest ``z``
(which leaves the isotonic solution of its real part unchanged: the hull-algorithm padding
argument, ALG-7). The kernel sees fewer than ``2·N`` values for ``N`` real ones. Rows of length
1 are their own prox and skip the kernel. A gather puts every group's result back in segment
order, and one scatter through the sort permutation unsorts everything at once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from .. import _segments as segments
from .common import ceil_log2

Strength = float | torch.Tensor

#: a length class joins the group of longer rows above it while the group's padded size stays
#: within this many times its real values (set to 1 to keep every class on its own)
MERGE_BUDGET = 1.5


class Plan:
    """The kernel calls of a layout of segments: groups of length classes (cached per layout).

    Attributes:
        classes: per kernel call, ``(width D, segment indices (S_b,) int64, their offsets,
            their lengths)``.
        source: ``(S,)`` int64: where segment ``s``'s first result lies in the concatenation of
            ``z`` (length-1 segments: their own position) and every call's flat result.
    """

    def __init__(self, seg: segments.Segments) -> None:
        device = seg.device
        lengths = [d for c, d in seg.runs for _ in range(c)]
        members: dict[int, list[int]] = {}
        for s, d in enumerate(lengths):
            if d > 1:
                members.setdefault(ceil_log2(d), []).append(s)
        # from the longest class down, a class joins the group above it while the group's padded
        # size stays within MERGE_BUDGET times its real values (fewer kernel calls, bounded work)
        groups: list[list[int]] = []
        width = real = 0
        for key in sorted(members, reverse=True):
            rows = members[key]
            size = sum(lengths[s] for s in rows)
            if groups and (len(groups[-1]) + len(rows)) * width <= MERGE_BUDGET * (real + size):
                groups[-1] += rows
                real += size
            else:
                groups.append(list(rows))
                width, real = max(lengths[s] for s in rows), size
        source = seg.offsets.clone()
        self.classes: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        base = seg.total
        for group in groups:
            chosen = torch.tensor(group, dtype=torch.int64)
            width = max(lengths[s] for s in group)
            index = segments.to_device(chosen, device)
            starts = base + width * torch.arange(len(group), device=device)
            source.index_copy_(0, index, starts)
            self.classes.append((width, index, seg.offsets[index], seg.lengths[index]))
            base += width * len(group)
        self.source = source
        #: values the kernel is given (the padded classes)
        self.kernel_values = base - seg.total


@functools.lru_cache(maxsize=64)
def plan(runs: segments.Runs, device: torch.device) -> Plan:
    """The cached :class:`Plan` of a layout."""
    return Plan(segments.layout(runs, device))


def segment_strengths(
    rows: list[torch.Tensor], lams: list[Strength], device: torch.device
) -> Strength:
    """One float when every strength is the same float, else float64 ``(S,)`` per row."""
    floats = [lam for lam in lams if not isinstance(lam, torch.Tensor)]
    if len(floats) == len(lams) and len(set(floats)) == 1:
        return float(floats[0])
    parts = []
    for r, lam in zip(rows, lams, strict=True):
        if isinstance(lam, torch.Tensor):
            lam_t = lam.to(device=device, dtype=torch.float64).reshape(-1)
            parts.append(lam_t.expand(r.shape[0]))
        else:
            parts.append(torch.full((r.shape[0],), float(lam), dtype=torch.float64, device=device))
    return torch.cat(parts)


def prox_ragged(
    isotonic: Callable[[torch.Tensor], torch.Tensor],
    rows: list[torch.Tensor],
    lams: list[Strength],
) -> list[torch.Tensor]:
    """The prox of non-empty ``(B_i, d_i)`` row sets of one dtype and device (module docstring).

    Args:
        isotonic: the row-wise ``(B, n) -> (B, n)`` isotonic regression (float64 here).
        rows: the row sets.
        lams: per row set, a float or a float64 ``(B_i, 1)`` (or one-element) tensor.

    Returns:
        The ``(B_i, d_i)`` results, in the rows' dtype. No host read.
    """
    device, dtype = rows[0].device, rows[0].dtype
    runs = tuple((r.shape[0], r.shape[1]) for r in rows)
    seg = segments.layout(runs, device)
    work = plan(runs, device)
    flat = torch.cat([r.reshape(-1) for r in rows])
    ids = seg.ids()
    xs, perm = seg.sort(flat, ids)
    lo, hi = seg.first_last(xs)
    span = hi.to(torch.float64) - lo.to(torch.float64)
    lam = segment_strengths(rows, lams, device)
    clamped = span.clamp(max=lam) if isinstance(lam, float) else torch.minimum(span, lam)
    positions = seg.positions(ids)
    z = xs.to(torch.float64) - seg.spread(clamped, ids) * seg.ramp(ids, positions)
    del span, clamped
    results = [z]
    for width, _, starts, lengths in work.classes:
        k = torch.arange(width, device=device)
        real = k < lengths[:, None]
        gathered = z[starts[:, None] + torch.minimum(k, lengths[:, None] - 1)]
        top = torch.where(real, gathered, -torch.inf).amax(1, keepdim=True)
        results.append(isotonic(torch.where(real, gathered, top).contiguous()).reshape(-1))
        del gathered, real
    solved = torch.cat(results) if len(results) > 1 else z
    del results
    solved = solved[work.source[ids] + positions]
    out = torch.empty_like(flat).scatter_(0, perm, solved.to(dtype))
    return [
        part.view(b, d)
        for part, (b, d) in zip(out.split([b * d for b, d in runs]), runs, strict=True)
    ]
