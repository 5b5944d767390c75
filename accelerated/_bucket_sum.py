r"""The weight map $W = \xi \odot w[H]$ with a deterministic, atomics-free gradient (HASH-19).

The forward is a gather. The backward is $g_k = \sum_{i: H_i = k} \xi_i G_i$, summed in a fixed
order on every call:

- **on the CPU**, torch's ``index_add_`` (a serial loop over the entries in C order; faster on a
  CPU than a gather in bucket order, which misses the cache);
- **elsewhere** (CUDA), a segment sum over the entries in **bucket order**: a permutation of the
  flat positions sorted by bucket, computed once with the tables (:func:`bucket_order`), makes
  each bucket a contiguous segment. No scatter, no atomics, no sort per step. float64 gradients
  are summed segment by segment (``torch.segment_reduce``); narrower ones as the difference of a
  float64 prefix sum at the segment ends (a few bandwidth-bound kernels), whose absolute error is
  at most about $2 n\,u_{64} \sum_i |G_i|$ ($u_{64} = 2^{-53}$, $n$ entries): below the rounding
  of the float32 result unless a bucket's sum is below ~$10^{-8}$ of $\sum_i |G_i|$.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "SERIAL_DEVICES",
    "bucket_order",
    "bucket_sum",
    "expand",
    "gather",
    "segment_sum",
    "serial_sum",
]

#: Device types whose bucket sum is the serial ``index_add_`` (others use the segment sum).
SERIAL_DEVICES = frozenset({"cpu"})


def bucket_order(index: Tensor, num_buckets: int) -> tuple[Tensor, Tensor]:
    """``(order, offsets)`` of a table: its flat positions sorted by bucket (stable), and the
    ``K + 1`` starts of the buckets' segments in that order (the last is the table's size).

    Both are int32 when the table has fewer than $2^{31}$ entries, else int64.
    """
    flat = index.reshape(-1)
    dtype = torch.int32 if flat.numel() < 2**31 else torch.int64
    order = torch.sort(flat, stable=True).indices.to(dtype)
    counts = torch.bincount(flat.long(), minlength=num_buckets)
    offsets = F.pad(counts.cumsum(0), (1, 0)).to(dtype)
    return order, offsets


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


def segment_sum(grad: Tensor, sign: Tensor | None, order: Tensor, offsets: Tensor) -> Tensor:
    r"""$g_k$ as segment sums of $\xi \odot G$ in bucket order (deterministic on every device).

    Args:
        grad: $G$, of the table's shape (any floating dtype).
        sign: $\xi$ (entries $\pm 1$) of the same shape, or ``None``.
        order: The flat positions sorted by bucket (:func:`bucket_order`).
        offsets: The ``K + 1`` segment starts (:func:`bucket_order`).

    Returns:
        The ``(K,)`` bucket sums in ``grad``'s dtype, on its device.
    """
    g = _signed(grad, sign).index_select(0, order)
    if g.dtype == torch.float64:
        lengths = offsets.diff().to(torch.int64)
        return torch.segment_reduce(g, "sum", lengths=lengths, unsafe=True)
    prefix = g.new_zeros(g.numel() + 1, dtype=torch.float64)  # prefix[j] = sum of g[:j]
    torch.cumsum(g, 0, dtype=torch.float64, out=prefix[1:])
    sums = prefix.index_select(0, offsets[1:]) - prefix.index_select(0, offsets[:-1])
    return sums.to(g.dtype)


def needs_order(device: torch.device) -> bool:
    """Whether the bucket sum on ``device`` reads the bucket order (not a serial device)."""
    return device.type not in SERIAL_DEVICES


def bucket_sum(
    grad: Tensor,
    index: Tensor,
    sign: Tensor | None,
    order: Tensor | None,
    offsets: Tensor | None,
    num_buckets: int,
) -> Tensor:
    r"""$g_k$: :func:`serial_sum` on the CPU, :func:`segment_sum` elsewhere.

    ``order`` and ``offsets`` (:func:`bucket_order` of ``index``) may be ``None`` on the CPU.
    """
    if not needs_order(grad.device):
        return serial_sum(grad, index, sign, num_buckets)
    if order is None or offsets is None:
        order, offsets = bucket_order(index, num_buckets)
    return segment_sum(grad, sign, order, offsets)


def expand(values: Tensor, index: Tensor, sign: Tensor | None) -> Tensor:
    r"""$\xi \odot w[H]$ without autograd: one gather, then the sign in place."""
    out = values.index_select(0, index.reshape(-1))
    if sign is not None:
        out = out.mul_(_flat_sign(sign, out.dtype))
    return out.view(index.shape)


class _Gather(torch.autograd.Function):
    """values -> xi * values[H]; its backward is :class:`_BucketSum` (twice differentiable)."""

    @staticmethod
    def forward(  # type: ignore[override]
        values: Tensor,
        index: Tensor,
        sign: Tensor | None,
        order: Tensor | None,
        offsets: Tensor | None,
        num_buckets: int,
    ) -> Tensor:
        return expand(values, index, sign)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.save_for_backward(*inputs[1:5])
        ctx.num_buckets = inputs[5]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        tables = (*ctx.saved_tensors, ctx.num_buckets)
        return _BucketSum.apply(grad, *tables), None, None, None, None, None


class _BucketSum(torch.autograd.Function):
    """G -> the bucket sums of xi * G; its backward is :class:`_Gather`."""

    @staticmethod
    def forward(  # type: ignore[override]
        grad: Tensor,
        index: Tensor,
        sign: Tensor | None,
        order: Tensor | None,
        offsets: Tensor | None,
        num_buckets: int,
    ) -> Tensor:
        return bucket_sum(grad, index, sign, order, offsets, num_buckets)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.save_for_backward(*inputs[1:5])
        ctx.num_buckets = inputs[5]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        tables = (*ctx.saved_tensors, ctx.num_buckets)
        return _Gather.apply(grad, *tables), None, None, None, None, None


def gather(
    values: Tensor,
    index: Tensor,
    sign: Tensor | None,
    order: Tensor | None = None,
    offsets: Tensor | None = None,
) -> Tensor:
    r"""$\xi \odot w[H]$, differentiable in ``values`` through :func:`bucket_sum`.

    No checks: ``order`` and ``offsets`` must be :func:`bucket_order` of ``index`` (or ``None``:
    then a backward off the CPU sorts the table first).
    """
    out: Tensor = _Gather.apply(values, index, sign, order, offsets, values.shape[0])
    return out
