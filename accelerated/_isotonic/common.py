r"""Shared pieces of the sync-free isotonic kernels ("search" and "hull").

Both kernels work on the *cumulative-sum diagram* of a row: points $P_k = (k, S_k)$ with
$S_0 = 0$ and $S_k = \sum_{t \le k} (y_t - \bar y)$, accumulated in float64 (the row mean
$\bar y$ is subtracted first to keep the prefix sums small). The isotonic solution is the slope of
the lower convex hull of these points; a kernel only has to decide which points are hull vertices
(equivalently: cluster ends). Rows are padded with their maximum, which leaves the solution on the
real part unchanged, so that block sizes are powers of two.

Everything here is made of fixed-shape tensor ops: no host synchronization, no data-dependent
shapes, so the number of dispatched ops depends only on the input's shape.
"""

from __future__ import annotations

import torch

_FLOAT = (torch.float32, torch.float64)


def check_rows(y: torch.Tensor, name: str) -> None:
    """Static checks of the kernel contract (shape and dtype only; never reads values)."""
    if y.dim() != 2 or y.shape[1] < 1:
        raise ValueError(f"{name} expects a (B, n) tensor with n >= 1, got shape {tuple(y.shape)}")
    if y.dtype not in _FLOAT:
        raise TypeError(f"{name} expects float32 or float64, got {y.dtype}")


def ceil_log2(n: int) -> int:
    """The smallest L with 2**L >= n (n >= 1)."""
    return max(0, (n - 1).bit_length())


def prefix_sums(y: torch.Tensor, elements: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 prefix sums of the centred, max-padded rows.

    Args:
        y: a ``(B, n)`` float tensor.
        elements: the padded row length ``m >= n``.

    Returns:
        ``(S, shift)``: ``S`` is ``(B, m + 1)`` float64 with ``S[:, 0] = 0`` and
        ``S[:, k] = sum_{t < k} z_t`` where ``z = y - shift`` padded with ``max(z)``;
        ``shift`` is the ``(B, 1)`` float64 row mean.
    """
    rows, n = y.shape
    shift = y.mean(dim=1, keepdim=True, dtype=torch.float64)
    z = y.to(torch.float64) - shift
    parts = [z.new_zeros(rows, 1), z]
    if elements > n:
        parts.append(z.amax(dim=1, keepdim=True).expand(rows, elements - n))
    # out of place only: torch.func.vmap has no batching rule for in-place scans
    s = torch.cat(parts, dim=1)
    del parts, z
    s = s.cumsum(dim=1)
    return s, shift


def previous_vertex(vertex: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """For every point, the index of the last vertex at or before it (0 if none)."""
    return torch.where(vertex, index, 0).cummax(dim=-1).values


def next_vertex(vertex: torch.Tensor, index: torch.Tensor, last: int) -> torch.Tensor:
    """For every point, the index of the first vertex at or after it (``last`` if none)."""
    marked = torch.where(vertex, index, last).flip(-1)
    return marked.cummin(dim=-1).values.flip(-1)


#: the final broadcast runs in this many column chunks for long rows (bounds its temporaries)
_FINAL_CHUNKS = 4
_CHUNKED_FROM = 1 << 20


def edge_slopes(
    s: torch.Tensor,
    left: torch.Tensor,
    right: torch.Tensor,
    shift: torch.Tensor,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Each element's value: the slope of the hull edge ``[left, right]`` that spans it, plus shift.

    Args:
        s: ``(B, m + 1)`` float64 prefix sums (points ``0..m``).
        left: ``(B, n)`` integer: for element ``i``, the last vertex at or before point ``i``.
        right: ``(B, n)`` integer: for element ``i``, the first vertex at or after point ``i + 1``.
        shift: ``(B, 1)`` float64 row means to add back.
        dtype: the result's dtype.

    Returns:
        ``(B, n)`` values of ``dtype``.
    """
    n = left.shape[1]
    step = -(-n // _FINAL_CHUNKS) if n >= _CHUNKED_FROM else n
    out = []
    for a in range(0, n, step):
        lo, hi = left[:, a : a + step], right[:, a : a + step]
        rise = s.gather(1, hi).sub_(s.gather(1, lo))
        out.append(rise.div_(hi - lo).add_(shift).to(dtype))
    return out[0] if len(out) == 1 else torch.cat(out, dim=1)


def slopes(
    s: torch.Tensor, vertex: torch.Tensor, n: int, shift: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Broadcast each hull edge's slope to the elements under it, then undo the centring.

    Args:
        s: ``(B, m + 1)`` float64 prefix sums (points ``0..m``).
        vertex: ``(B, m + 1)`` bool, the hull vertices (points ``0`` and ``m`` included).
        n: the number of real (unpadded) elements to return.
        shift: ``(B, 1)`` float64 row means to add back.
        dtype: the result's dtype.

    Returns:
        ``(B, n)`` values of ``dtype``: element ``i`` (between points ``i`` and ``i + 1``) gets
        the slope of the hull edge that spans it.
    """
    index = torch.arange(s.shape[1], device=s.device)
    left = previous_vertex(vertex[:, :n], index[:n])
    # if no vertex lies in 1..n, everything after the real part is collinear at the pad slope, so
    # the last point (always a vertex) spans the same edge
    right = next_vertex(vertex[:, 1 : n + 1], index[1 : n + 1], s.shape[1] - 1)
    return edge_slopes(s, left, right, shift, dtype)
