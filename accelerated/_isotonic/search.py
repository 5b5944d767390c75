r"""The "search" isotonic kernel: the WSR paper's divide and conquer, batched and sync-free.

Re-derived from the algorithm's description (spec: ALG page), not from the official code.
The row is padded to $m = 2^L$ elements. At level $\ell = 1..L$ the elements are cut into
blocks of $2h = 2^\ell$ whose halves are already solved (their cluster ends are marked on the
cumulative-sum points). Merging two solved halves creates at most one new cluster: the last few
clusters of the left half pool with the first few of the right half. Its start is found by a
binary search over the left half's slots; each probe at slot $s$ takes the start $u$ of the
cluster holding $s$ and computes, over every cluster end $k$ of the block,
$A_u(k) = (S_k - S_u) / (k - u)$; the first minimiser $J$ is where the first isotonic block of
the suffix starting at $u$ ends. The predicate $J > $ (half boundary) is monotone in $s$; the
smallest true slot is the start of the pooled cluster, and the merge just clears the cluster ends
strictly inside $(u, J)$.

Cost: $L$ levels, $\lceil\log_2(h+1)\rceil + 1$ probes per level, every probe $O(m)$ work
and a constant number of ops: $O(\log^2 d)$ dispatched ops (each $O(\log d)$ depth, hence the
paper's $O(\log^3 d)$ depth) and $O(d \log^2 d)$ work. All blocks and rows move in lock step.
"""

from __future__ import annotations

import torch

from .backend import Backend
from .common import ceil_log2, check_rows, prefix_sums, previous_vertex, slopes


def _first_end(
    s: torch.Tensor,
    vertex: torch.Tensor,
    start: torch.Tensor,
    block: int,
) -> torch.Tensor:
    """For each block, the first end point minimising the mean of elements ``start..k-1``.

    Args:
        s: ``(B, m + 1)`` float64 prefix sums.
        vertex: ``(B, m + 1)`` bool cluster ends.
        start: ``(B, nb)`` int64 start points (one per block).
        block: the block length ``2h``.

    Returns:
        ``(B, nb)`` int64 absolute end points.
    """
    rows, nb = start.shape
    ends_s = s[:, 1:].view(rows, nb, block)
    ends_v = vertex[:, 1:].view(rows, nb, block)
    k = torch.arange(1, nb * block + 1, device=s.device, dtype=start.dtype).view(nb, block)
    u = start.unsqueeze(-1)
    mean = (ends_s - s.gather(1, start).unsqueeze(-1)).div_(k - u)
    mean.masked_fill_(~(ends_v & (k > u)), float("inf"))
    return mean.argmin(dim=-1).add_(k[:, 0])


def isotonic_search(y: torch.Tensor) -> torch.Tensor:
    r"""Row-wise non-decreasing isotonic regression by the paper's divide and conquer.

    Args:
        y: a contiguous ``(B, n)`` float32 or float64 tensor, ``n >= 1``, on any device.

    Returns:
        A new ``(B, n)`` tensor of ``y``'s dtype and device. Accumulation is float64; no host
        synchronization; the op sequence depends only on ``(B, n)``.
    """
    check_rows(y, "isotonic_search")
    rows, n = y.shape
    levels = ceil_log2(n)
    m = 1 << levels
    s, shift = prefix_sums(y, m)
    vertex = torch.ones(rows, m + 1, dtype=torch.bool, device=y.device)
    itype = torch.int32 if m < 2**30 else torch.int64  # point indices (halves the scans' bytes)
    index = torch.arange(m + 1, device=y.device, dtype=itype)
    for level in range(1, levels + 1):
        h = 1 << (level - 1)
        nb = m // (2 * h)
        first = torch.arange(0, m, 2 * h, device=y.device).expand(rows, nb)
        start_of = previous_vertex(vertex, index)
        # smallest slot t in [0, h) whose cluster is caught by the right half (h if none)
        lo = torch.zeros(rows, nb, dtype=torch.long, device=y.device)
        hi = torch.full((rows, nb), h, dtype=torch.long, device=y.device)
        for _ in range(ceil_log2(h + 1)):
            mid = (lo + hi).div_(2, rounding_mode="floor")
            u = start_of.gather(1, first + mid.clamp(max=h - 1))
            caught = _first_end(s, vertex, u, 2 * h) > first + h
            hi = torch.where(caught, mid, hi)
            lo = torch.where(caught, lo, mid + 1)
        u = start_of.gather(1, first + lo.clamp(max=h - 1))
        j = _first_end(s, vertex, u, 2 * h)
        j = torch.where((lo < h) & (j > first + h), j, u)  # no merge: empty interval
        k = index[1:].view(nb, 2 * h)
        inside = (k > u.unsqueeze(-1)) & (k < j.unsqueeze(-1))
        ends = vertex[:, 1:].view(rows, nb, 2 * h) & ~inside
        vertex = torch.cat([vertex[:, :1], ends.view(rows, m)], dim=1)
    return slopes(s, vertex, n, shift, y.dtype)


BACKEND = Backend("search", isotonic_search)
