r"""The weight map $W = \xi \odot w[H]$ with a deterministic, atomics-free gradient (HASH-19).

The forward is a gather. The backward is $g_k = \sum_{i: H_i = k} \xi_i G_i$, summed in a fixed
order on every call:

- **on the CPU**, torch's ``index_add_`` (a serial loop over the entries in C order; faster on a
  CPU than a gather in bucket order, which misses the cache);
- **elsewhere** (CUDA), **bucket rows**: when the tables are built, the entries are laid out in
  bucket order in rows of a fixed width $w$, no row holding two buckets (padding reads an
  appended zero); the backward gathers $\xi \odot G$ into those rows and sums each row. A bucket
  with more than one row is summed again, the same way, over its row sums, until each bucket has
  one row: a few levels of "gather, then sum a small fixed-width dimension". No scatter, no
  atomics, no prefix sum, no sort per step; the same tree of additions on every call.
  float16/bfloat16 gradients are summed in float32.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = [
    "SERIAL_DEVICES",
    "Levels",
    "bucket_rows",
    "bucket_sum",
    "expand",
    "gather",
    "needs_rows",
    "row_sum",
    "serial_sum",
]

#: Device types whose bucket sum is the serial ``index_add_`` (others use the bucket rows).
SERIAL_DEVICES = frozenset({"cpu"})
#: ``(rows, width)`` of every level of the bucket rows.
Levels = tuple[tuple[int, int], ...]


#: The widest row: a level sums at most this many values per row.
MAX_WIDTH = 64


def _exclusive(counts: Tensor) -> Tensor:
    return counts.cumsum(0) - counts


def _first_width(counts: Tensor) -> int:
    """Level 0's width: least entries stored at levels 0 and (estimated) 1; ties: the wider."""
    best, best_cost = MAX_WIDTH, None
    for w in range(MAX_WIDTH, 1, -1):
        rows = (counts + w - 1) // w
        again = rows > 1
        level1 = int(again.sum()) * min(MAX_WIDTH, int(rows.max()))
        cost = int(rows.sum()) * w + (level1 if bool(again.any()) else 0)
        if best_cost is None or cost < best_cost:
            best, best_cost = w, cost
    return best


def _level(items: Tensor, counts: Tensor, width: int, pad: int) -> tuple[Tensor, Tensor]:
    """``(layout, rows per group)``: ``items`` (grouped, ``counts`` per group) in rows of
    ``width`` that never hold two groups; ``pad`` fills the rest."""
    rows_g = (counts + width - 1) // width
    rows = int(rows_g.sum())
    group = torch.repeat_interleave(
        torch.arange(counts.numel(), device=items.device), counts, output_size=items.numel()
    )
    rank = torch.arange(items.numel(), device=items.device) - _exclusive(counts)[group]
    layout = torch.full((rows, width), pad, dtype=torch.int64, device=items.device)
    layout[_exclusive(rows_g)[group] + rank // width, rank % width] = items
    return layout.reshape(-1), rows_g


def bucket_rows(index: Tensor, num_buckets: int) -> tuple[Tensor, Levels]:
    """``(layout, levels)``: the bucket rows of a table, built once (a sort, a few passes).

    ``levels`` lists ``(rows, width)`` per level and ends with ``(K, 1)``, the final gather;
    ``layout`` concatenates every level's ``rows x width`` positions. Level 0 reads the $N$
    signed gradient entries (position $N$ is a zero) and writes its row sums to a buffer of all
    levels' row sums (whose last position is a zero); each later level reads that buffer and
    sums the rows of the buckets that still have more than one; the final gather reads each
    bucket's last row sum (a zero for an empty bucket; with no level, it reads the entries).
    int32 when the table has fewer than $2^{31} - 1$ entries, else int64.
    """
    flat = index.reshape(-1).long()
    n, k, dev = flat.numel(), num_buckets, flat.device
    order = torch.sort(flat, stable=True).indices  # the entries in bucket order
    counts = torch.bincount(flat, minlength=k)
    final = torch.full((k,), -1, dtype=torch.int64, device=dev)  # -1: the buffer's zero
    parts: list[Tensor] = []
    levels: list[tuple[int, int]] = []
    if int(counts.max()) <= 1:
        final[flat] = torch.arange(n, device=dev)
        final[counts == 0] = n
    else:
        width = _first_width(counts)
        layout, rows = _level(order, counts, width, n)
        parts.append(layout)
        levels.append((layout.numel() // width, width))
        start, total = _exclusive(rows), layout.numel() // width  # rows' buffer positions
        while True:
            final[rows == 1] = start[rows == 1]
            todo = torch.nonzero(rows > 1).reshape(-1)
            if todo.numel() == 0:
                break
            counts_t = rows[todo]
            width = min(MAX_WIDTH, int(counts_t.max()))
            items = torch.repeat_interleave(start[todo], counts_t) + (
                torch.arange(int(counts_t.sum()), device=dev)
                - torch.repeat_interleave(_exclusive(counts_t), counts_t)
            )
            layout, rows_t = _level(items, counts_t, width, -1)
            parts.append(layout)
            levels.append((layout.numel() // width, width))
            rows = torch.zeros_like(rows)
            rows[todo] = rows_t
            start = torch.zeros_like(start)
            start[todo] = _exclusive(rows_t) + total
            total += layout.numel() // width
        parts = [p.masked_fill(p < 0, total) for p in parts]
        final = final.masked_fill(final < 0, total)
    parts.append(final)
    levels.append((k, 1))
    dtype = torch.int32 if n < 2**31 - 1 else torch.int64
    return torch.cat(parts).to(dtype), tuple(levels)


def _flat_sign(sign: Tensor, dtype: torch.dtype) -> Tensor:
    """The sign table flat, in ``dtype`` if it is floating (an int table promotes exactly)."""
    return sign.reshape(-1).to(dtype) if sign.dtype.is_floating_point else sign.reshape(-1)


def _signed(grad: Tensor, sign: Tensor | None) -> Tensor:
    flat = grad.reshape(-1)
    return flat if sign is None else flat * _flat_sign(sign, flat.dtype)


def serial_sum(grad: Tensor, index: Tensor, sign: Tensor | None, num_buckets: int) -> Tensor:
    r"""$g_k$ by ``index_add_`` in C order (serial and deterministic on the CPU only)."""
    out = torch.zeros(num_buckets, dtype=grad.dtype, device=grad.device)
    return out.index_add_(0, index.reshape(-1), _signed(grad, sign))


def row_sum(grad: Tensor, sign: Tensor | None, layout: Tensor, levels: Levels) -> Tensor:
    r"""$g_k$ by the bucket rows of :func:`bucket_rows` (deterministic on every device).

    Args:
        grad: $G$, of the table's shape (any floating dtype).
        sign: $\xi$ (entries $\pm 1$) of the same shape, or ``None``.
        layout: The concatenated rows of every level (:func:`bucket_rows`).
        levels: ``(rows, width)`` of every level (:func:`bucket_rows`).

    Returns:
        The ``(K,)`` bucket sums in ``grad``'s dtype, on its device.
    """
    flat = grad.reshape(-1)
    n = flat.numel()
    acc = torch.float32 if flat.dtype in (torch.float16, torch.bfloat16) else flat.dtype
    x = flat.new_empty(n + 1, dtype=acc)  # the signed gradient, then a zero
    x[n] = 0
    if sign is None:
        x[:n].copy_(flat)
    else:
        torch.mul(flat, _flat_sign(sign, flat.dtype), out=x[:n])
    total = sum(rows for rows, _ in levels[:-1])
    sums = x.new_empty(total + 1)  # every level's row sums, then a zero
    sums[total] = 0
    start = at = 0
    for level, (rows, width) in enumerate(levels[:-1]):
        lay = layout[start : start + rows * width]
        src = x if level == 0 else sums
        torch.sum(src.index_select(0, lay).view(rows, width), 1, out=sums[at : at + rows])
        start, at = start + rows * width, at + rows
    out = (sums if total else x).index_select(0, layout[start:])
    return out.to(grad.dtype)


def needs_rows(device: torch.device) -> bool:
    """Whether the bucket sum on ``device`` reads the bucket rows (not a serial device)."""
    return device.type not in SERIAL_DEVICES


def bucket_sum(
    grad: Tensor,
    index: Tensor,
    sign: Tensor | None,
    layout: Tensor | None,
    levels: Levels | None,
    num_buckets: int,
) -> Tensor:
    r"""$g_k$: :func:`serial_sum` on the CPU, :func:`row_sum` elsewhere.

    ``layout`` and ``levels`` (:func:`bucket_rows` of ``index``) may be ``None``: then they are
    built here (a sort), off the CPU only.
    """
    if not needs_rows(grad.device):
        return serial_sum(grad, index, sign, num_buckets)
    if layout is None or levels is None:
        layout, levels = bucket_rows(index, num_buckets)
    return row_sum(grad, sign, layout, levels)


def expand(values: Tensor, index: Tensor, sign: Tensor | None) -> Tensor:
    r"""$\xi \odot w[H]$ without autograd: one gather, then the sign in place."""
    out = values.index_select(0, index.reshape(-1))
    if sign is not None:
        out = out.mul_(_flat_sign(sign, out.dtype))
    return out.view(index.shape)


class _Gather(torch.autograd.Function):
    """values -> xi * values[H]; its backward is :class:`_BucketSum` (twice differentiable)."""

    @staticmethod
    def forward(
        values: Tensor,
        index: Tensor,
        sign: Tensor | None,
        layout: Tensor | None,
        levels: Levels | None,
        num_buckets: int,
    ) -> Tensor:
        return expand(values, index, sign)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.save_for_backward(*inputs[1:4])
        ctx.levels, ctx.num_buckets = inputs[4], inputs[5]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        tables = (*ctx.saved_tensors, ctx.levels, ctx.num_buckets)
        summed = _BucketSum.apply(grad, *tables)  # type: ignore[no-untyped-call]
        return summed, None, None, None, None, None


class _BucketSum(torch.autograd.Function):
    """G -> the bucket sums of xi * G; its backward is :class:`_Gather`."""

    @staticmethod
    def forward(
        grad: Tensor,
        index: Tensor,
        sign: Tensor | None,
        layout: Tensor | None,
        levels: Levels | None,
        num_buckets: int,
    ) -> Tensor:
        return bucket_sum(grad, index, sign, layout, levels, num_buckets)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.save_for_backward(*inputs[1:4])
        ctx.levels, ctx.num_buckets = inputs[4], inputs[5]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        tables = (*ctx.saved_tensors, ctx.levels, ctx.num_buckets)
        spread = _Gather.apply(grad, *tables)  # type: ignore[no-untyped-call]
        return spread, None, None, None, None, None


def gather(
    values: Tensor,
    index: Tensor,
    sign: Tensor | None,
    layout: Tensor | None = None,
    levels: Levels | None = None,
) -> Tensor:
    r"""$\xi \odot w[H]$, differentiable in ``values`` through :func:`bucket_sum`.

    No checks: ``layout`` and ``levels`` must be :func:`bucket_rows` of ``index`` (or ``None``:
    then a backward off the CPU builds them first).
    """
    k = values.shape[0]
    out: Tensor = _Gather.apply(values, index, sign, layout, levels, k)  # type: ignore[no-untyped-call]
    return out
