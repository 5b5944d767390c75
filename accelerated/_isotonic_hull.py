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

from ._isotonic_common import (
    ceil_log2,
    check_rows,
    edge_slopes,
    prefix_sums,
)


def _bridges(
    s: torch.Tensor, prev: torch.Tensor, nxt: torch.Tensor, h: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The bridge vertices ``(a*, c*)`` of every block of ``2h`` points (absolute indices).

    Tensors of shape ``(B, nb, 2)`` hold one value per block and side (A, C).
    """
    rows, points = s.shape
    nb = points // (2 * h)
    first = torch.arange(0, points, 2 * h, device=s.device).view(nb, 1)
    lower = torch.cat([first, first + h], dim=1).expand(rows, nb, 2)  # halves' first points
    upper = lower + (h - 1)  # halves' last points (always vertices, like the first ones)
    lo, hi = lower, upper
    sep = first.view(nb).to(torch.float64) + (h - 0.5)  # an abscissa strictly between halves
    for _ in range(2 * ceil_log2(h) + 2):
        mid = (lo + hi).div_(2, rounding_mode="floor")
        probe = prev.gather(1, mid.reshape(rows, -1)).long()
        left = prev.gather(1, (probe - 1).clamp_(min=0)).long()
        right = nxt.gather(1, (probe + 1).clamp_(max=points - 1)).long()
        idx = torch.stack([probe, left, right], dim=-1)  # (B, 2nb, 3): (a, a-, a+), (c, c-, c+)
        probe, left, right = (t.view(rows, nb, 2) for t in (probe, left, right))
        dx = idx.to(torch.float64).view(rows, nb, 6)
        dy = s.gather(1, idx.view(rows, -1)).view(rows, nb, 6)
        dx = dx - dx[..., :1]  # coordinates relative to a
        dy = dy - dy[..., :1]
        # strictly below the line a-c; a neighbour that does not exist is never below
        below = (dx[..., 3:4] * dy < dy[..., 3:4] * dx).view(rows, nb, 2, 3)[..., 1:]
        below = below & torch.stack([probe > lower, probe < upper], dim=-1)
        a_left, a_right = below[..., 0, 0], below[..., 0, 1]
        c_left, c_right = below[..., 1, 0], below[..., 1, 1]
        a_ok = ~(a_left | a_right)
        c_ok = ~(c_left | c_right)
        # ambiguous case: compare the lines through (a, a+) and (c-, c) at the separator
        gap = sep - probe[..., 0]  # from a to the separator
        line_a = dy[..., 2] / dx[..., 2] * gap
        line_c = dy[..., 3] + (dy[..., 3] - dy[..., 4]) / (dx[..., 3] - dx[..., 4]) * (
            gap - dx[..., 3]
        )
        ambiguous = a_right & c_left
        right_higher = line_c >= line_a
        done = a_ok & c_ok
        to_next = torch.stack([(a_right & c_ok) | (ambiguous & right_higher), c_right], dim=-1)
        to_prev = torch.stack([a_left, (a_ok & c_left) | (ambiguous & ~right_higher)], dim=-1)
        lo_to_probe = torch.stack([done, done | (a_right & c_ok)], dim=-1)
        hi_to_probe = torch.stack([done | (a_ok & c_left), done], dim=-1)
        lo = torch.where(to_next, right, torch.where(lo_to_probe, probe, lo))
        hi = torch.where(to_prev, left, torch.where(hi_to_probe, probe, hi)).maximum(lo)
    return lo[..., 0], lo[..., 1]


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
    # previous / next hull vertex of every point; every point starts as a vertex. A merge only
    # removes the points strictly between the bridge ends, whose neighbours become those ends.
    itype = torch.int32 if points < 2**31 else torch.int64
    index = torch.arange(points, device=y.device, dtype=itype)
    prev = index.expand(rows, points).clone()
    nxt = prev.clone()
    for level in range(2, levels + 1):  # level 1 merges point pairs: nothing to remove
        h = 1 << (level - 1)
        a, c = _bridges(s, prev, nxt, h)
        k = index.view(-1, 2 * h)
        inside = (k > a.unsqueeze(-1)) & (k < c.unsqueeze(-1))
        shape = (rows, -1, 2 * h)
        prev = torch.where(inside, a.to(itype).unsqueeze(-1), prev.view(shape)).view(rows, points)
        nxt = torch.where(inside, c.to(itype).unsqueeze(-1), nxt.view(shape)).view(rows, points)
    return edge_slopes(s, prev[:, :n], nxt[:, 1 : n + 1], shift).to(y.dtype)
