r"""The "rounds" isotonic kernel: parallel pool-adjacent-violators rounds.

All rows are handled at once as one flat list of blocks (a block never crosses a row). Every round
pools each maximal run of adjacent blocks whose means strictly decrease into one block, all runs at
once (segment sums with ``index_add_``), and stops when no adjacent pair violates the order. Any
order of pooling adjacent violators reaches the isotonic solution, so the result is exact; the
number of rounds depends on the data: a few in practice, $d - 1$ on the chain family (spec: ALG
page). The loop's stopping test reads one boolean on the host per round; this is the documented
worst case, not a sync-free kernel.
"""

from __future__ import annotations

import torch

from .backend import Backend
from .common import check_rows


def isotonic_rounds(y: torch.Tensor) -> torch.Tensor:
    r"""Row-wise non-decreasing isotonic regression by parallel PAV rounds.

    Args:
        y: a contiguous ``(B, n)`` float32 or float64 tensor, ``n >= 1``, on any device.

    Returns:
        A new ``(B, n)`` tensor of ``y``'s dtype and device (block sums accumulated in float64).
    """
    check_rows(y, "isotonic_rounds")
    rows, n = y.shape
    total = rows * n
    sums = y.reshape(total).to(torch.float64, copy=True)
    sizes = torch.ones(total, dtype=torch.float64, device=y.device)
    row = torch.arange(rows, device=y.device).repeat_interleave(n, output_size=total)
    while True:
        means = sums / sizes
        violate = (means[:-1] > means[1:]) & (row[:-1] == row[1:])
        if not bool(violate.any()):
            break
        starts = torch.ones_like(row, dtype=torch.bool)
        starts[1:] = ~violate
        group = starts.cumsum(0).sub_(1)
        count = int(group[-1]) + 1
        sums = sums.new_zeros(count).index_add_(0, group, sums)
        sizes = sizes.new_zeros(count).index_add_(0, group, sizes)
        row = row[starts]
    values = means.repeat_interleave(sizes.long(), output_size=total)
    return values.view(rows, n).to(y.dtype)


BACKEND = Backend("rounds", isotonic_rounds)
