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

from ._isotonic_common import ceil_log2, check_rows, edge_slopes, prefix_sums


def _bridges(
    s: torch.Tensor, last: torch.Tensor, links: torch.Tensor, h: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The bridge vertices ``(a*, c*)`` of every block of ``2h`` points (absolute int64 indices).

    Args:
        s: ``(B, N)`` float64 prefix sums (the points' ordinates).
        last: ``(B, N)`` integer, the last vertex at or before every point (within its half).
        links: ``(B, 2N)`` integer, interleaved previous/next vertex of every vertex (a half's
            first/last vertex links to itself).
        h: the half-block length.

    Returns:
        Two ``(B, N / 2h)`` int64 tensors.
    """
    rows, points = s.shape
    nb = points // (2 * h)
    first = torch.arange(0, points, 2 * h, device=s.device).view(nb, 1)
    lo = torch.cat([first, first + h], dim=1).expand(rows, nb, 2)  # per block: sides A, C
    hi = lo + (h - 1)
    gap = first.view(nb).to(torch.float64) + (h - 0.5)  # an abscissa strictly between halves
    step = torch.tensor([0, 1], device=s.device)
    probe = lo
    for _ in range(2 * ceil_log2(h) + 1):
        mid = (lo + hi) >> 1
        probe = last.gather(1, mid.view(rows, 2 * nb))
        near = links.gather(1, probe.unsqueeze(-1).mul(2).add(step).view(rows, 4 * nb))
        # per block: (a, a-, a+, c, c-, c+)
        idx = torch.cat([probe.unsqueeze(-1), near.view(rows, 2 * nb, 2)], dim=-1).long()
        probe = idx[..., 0].view(rows, nb, 2)
        dx = idx.view(rows, nb, 6).to(torch.float64)
        dy = s.gather(1, idx.view(rows, 6 * nb)).view(rows, nb, 6)
        dx = dx - dx[..., :1]  # relative to a
        dy = dy - dy[..., :1]
        # strictly below the line a-c (a missing neighbour is the probe itself: never below)
        below = dx[..., 3:4] * dy < dy[..., 3:4] * dx
        a_left, a_right, c_left, c_right = below[..., 1], below[..., 2], below[..., 4], below[..., 5]
        # ambiguous case (a+ and c- below): compare the lines through (a, a+) and (c-, c) at the
        # separator; if the right one is not lower there, a* > a, else c* < c
        to_gap = gap - probe[..., 0]
        line_a = dy[..., 2] / dx[..., 2] * to_gap
        line_c = dy[..., 3] + (dy[..., 3] - dy[..., 4]) / (dx[..., 3] - dx[..., 4]) * (
            to_gap - dx[..., 3]
        )
        right_higher = line_c >= line_a
        move_a = a_right & ~c_right & (~c_left | right_higher)
        move_c = c_left & ~a_left & (~a_right | ~right_higher)
        lo = torch.where(torch.stack([move_a, c_right], dim=-1), idx[..., 2].view(rows, nb, 2), lo)
        hi = torch.where(torch.stack([a_left, move_c], dim=-1), idx[..., 1].view(rows, nb, 2), hi)
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
    itype = torch.int32 if 2 * points < 2**31 else torch.int64
    index = torch.arange(points, device=y.device, dtype=itype)
    # every point starts as a vertex, its own last vertex, linked to itself (singleton hulls).
    # Level 1 merges point pairs: both stay vertices, so start from level 2 with linked pairs.
    last = index.expand(rows, points).clone()
    links = torch.stack([index, index], dim=-1).view(1, points, 2).repeat(rows, 1, 1)
    pairs = links.view(rows, -1, 2, 2)
    pairs[:, :, 0, 1] = pairs[:, :, 1, 1]  # left point's next: the right one
    pairs[:, :, 1, 0] = pairs[:, :, 0, 0]  # right point's previous: the left one
    links = links.view(rows, 2 * points)
    for level in range(2, levels + 1):
        h = 1 << (level - 1)
        a, c = _bridges(s, last, links, h)
        # drop the points strictly between the bridge ends; link a* <-> c*
        k = index.view(-1, 2 * h)
        inside = (k > a.unsqueeze(-1)) & (k < c.unsqueeze(-1))
        last = torch.where(inside, a.to(itype).unsqueeze(-1), last.view(rows, -1, 2 * h))
        last = last.view(rows, points)
        links.scatter_(1, 2 * a + 1, c.to(itype))
        links.scatter_(1, 2 * c, a.to(itype))
    nxt = links.view(rows, points, 2)[..., 1]
    # element i spans points i..i+1: its edge starts at last[i] and ends at next(last[i])
    left = last[:, :n].long()
    right = nxt.gather(1, left)
    return edge_slopes(s, left, right, shift).to(y.dtype)
