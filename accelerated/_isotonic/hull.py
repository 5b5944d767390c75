r"""The "hull" isotonic kernel: bottom-up lower-hull merge with a simultaneous bridge search.

The isotonic solution is the slope of the lower convex hull of the cumulative-sum points
$P_k = (k, S_k)$, $k = 0..N-1$, $N = 2^L \ge n + 1$ (spec: ALG page). Points are cut into aligned
blocks; at level $\ell$ every block of $2h = 2^\ell$ points merges the hulls of its halves
$A$ (left) and $C$ (right): the merged hull is $A$ up to the bridge vertex $a^*$, then $C$ from
the bridge vertex $c^*$, so the merge just clears the vertex marks strictly between them.

The bridge (lower common tangent) is found by a simultaneous binary search on both hulls
(Overmars and van Leeuwen): a search interval of point positions per hull whose ends are always
vertices; the probe of a hull is the last vertex at or before the interval's middle. With $\ell$
the line through the probes $a$, $c$ and "below" meaning strictly below (on the line counts as
above):

* $a^-$ below $\ell$: $a^* < a$. $c^+$ below $\ell$: $c^* > c$ (each alone is conclusive);
* $a$ supported ($a^\pm$ not below) and $c^-$ below: $a^* \le a$ and $c^* < c$;
* $a^+$ below and $c$ supported: $a^* > a$ and $c^* \ge c$;
* $a^+$ below and $c^-$ below: the edge lines through $a a^+$ and $c^- c$ are compared at the
  separating abscissa $x_m$ between the halves: if the right one is not lower there, $a^* > a$,
  else $c^* < c$;
* both supported: $(a, c)$ is the bridge.

Each step halves at least one interval, so $2\log_2 h + 2$ steps (run for every block, in lock
step) suffice. Per level: two scans for the previous/next vertex of every point plus
$O(\log h)$ steps of $O(1)$ work per block, so $O(N \log N)$ work and $O(\log^2 N)$ dispatched
ops in total, with no host synchronization.
"""

from __future__ import annotations

import torch

from .backend import Backend
from .common import ceil_log2, check_rows, edge_slopes, prefix_sums

#: at most this many bytes of bridge-search temporaries per point: low levels, which have many
#: small blocks, search their bridges in a few chunks of blocks (a constant number of extra ops)
_CHUNK_POINTS_PER_BLOCK = 64
_MIN_CHUNK_BLOCKS = 4096


def _bridges(
    s: torch.Tensor, last: torch.Tensor, nxt: torch.Tensor, h: int, start: int, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The bridge vertices ``(a*, c*)`` of ``count`` blocks of ``2h`` points from block ``start``.

    Args:
        s: ``(B, N)`` float64 prefix sums (the points' ordinates).
        last: ``(B, N)`` integer, the last vertex at or before every point (within its half).
        nxt: ``(B, N)`` integer, the first vertex at or after every point (within its half).
        h: the half-block length.
        start: the first block.
        count: the number of blocks.

    Returns:
        Two ``(B, count)`` tensors of ``last``'s dtype (absolute point indices).
    """
    rows, points = s.shape
    itype = last.dtype
    first = torch.arange(start * 2 * h, (start + count) * 2 * h, 2 * h, device=s.device)
    first = first.to(itype).view(count, 1)
    lower = torch.cat([first, first + h], dim=1).expand(rows, count, 2)  # per block: A, C
    upper = lower + (h - 1)  # a half's first and last points are always vertices
    lo, hi = lower, upper
    gap = first.view(count).to(torch.float64) + (h - 0.5)  # strictly between the halves
    probe = lo
    for _ in range(2 * ceil_log2(h) + 1):
        mid = (lo + hi) >> 1
        probe = last.gather(1, mid.view(rows, 2 * count)).view(rows, count, 2)
        # neighbours on the same hull; at a hull's end the probe itself (never "below")
        left = last.gather(1, (probe - 1).clamp(min=0).view(rows, 2 * count))
        left = left.view(rows, count, 2).maximum(lower)
        right = nxt.gather(1, (probe + 1).clamp(max=points - 1).view(rows, 2 * count))
        right = right.view(rows, count, 2).minimum(upper)
        idx = torch.stack([probe, left, right], dim=-1).view(rows, count, 6)  # a a- a+ c c- c+
        dx = idx.to(torch.float64)
        dy = s.gather(1, idx.view(rows, 6 * count)).view(rows, count, 6)
        dx = dx - dx[..., :1]  # relative to a
        dy = dy - dy[..., :1]
        below = dx[..., 3:4] * dy < dy[..., 3:4] * dx  # strictly below the line a-c
        a_left, a_right = below[..., 1], below[..., 2]
        c_left, c_right = below[..., 4], below[..., 5]
        # ambiguous case (a+ and c- below): compare the lines through (a, a+) and (c-, c) at the
        # separator; if the right one is not lower there, a* > a, else c* < c
        to_gap = gap - probe[..., 0]
        line_a = dy[..., 2] / dx[..., 2] * to_gap
        line_c = dy[..., 3] + (dy[..., 3] - dy[..., 4]) / (dx[..., 3] - dx[..., 4]) * (
            to_gap - dx[..., 3]
        )
        right_higher = line_c >= line_a
        move_a = a_right & torch.where(c_left, right_higher, ~c_right)
        move_c = c_left & torch.where(a_right, ~right_higher, ~a_left)
        lo = torch.where(torch.stack([move_a, c_right], dim=-1), right, lo)
        hi = torch.where(torch.stack([a_left, move_c], dim=-1), left, hi)
    # once both intervals are single vertices (or earlier) the probes are the bridge
    return probe[..., 0], probe[..., 1]


def isotonic_hull(y: torch.Tensor) -> torch.Tensor:
    r"""Row-wise non-decreasing isotonic regression as slopes of the lower convex hull.

    Args:
        y: a contiguous ``(B, n)`` float32 or float64 tensor, ``n >= 1``, on any device.

    Returns:
        A new ``(B, n)`` tensor of ``y``'s dtype and device. Accumulation is float64; no host
        synchronization; the op sequence depends only on ``(B, n)``.
    """
    check_rows(y, "isotonic_hull")
    rows, n = y.shape
    levels = ceil_log2(n + 1)
    points = 1 << levels
    s, shift = prefix_sums(y, points - 1)
    itype = torch.int32 if points < 2**30 else torch.int64
    index = torch.arange(points, device=y.device, dtype=itype)
    # every point starts as a vertex (singleton hulls); level 1 merges point pairs, which keeps
    # both, so the search starts at level 2 with the pairs' vertices linked
    last = index.expand(rows, points).clone()
    nxt = last.clone()
    cap = max(_MIN_CHUNK_BLOCKS, points // _CHUNK_POINTS_PER_BLOCK)
    for level in range(2, levels + 1):
        h = 1 << (level - 1)
        blocks = points // (2 * h)
        parts = [_bridges(s, last, nxt, h, b, min(cap, blocks - b)) for b in range(0, blocks, cap)]
        a = torch.cat([p[0] for p in parts], dim=1) if len(parts) > 1 else parts[0][0]
        c = torch.cat([p[1] for p in parts], dim=1) if len(parts) > 1 else parts[0][1]
        # drop the points strictly between the bridge ends: their neighbours become a*, c*
        k = index.view(blocks, 2 * h)
        a, c = a.unsqueeze(-1), c.unsqueeze(-1)
        inside = (k > a) & (k < c)
        last = torch.where(inside, a, last.view(rows, blocks, 2 * h)).view(rows, points)
        nxt = torch.where(inside, c, nxt.view(rows, blocks, 2 * h)).view(rows, points)
    # element i spans points i..i+1: the edge from its last vertex to the next one
    return edge_slopes(s, last[:, :n], nxt[:, 1 : n + 1], shift, y.dtype)


BACKEND = Backend("hull", isotonic_hull)
