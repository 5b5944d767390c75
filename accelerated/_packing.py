r"""Bit packing of integer labels in torch (spec page *Storage*, STORE-1).

The layout is the reference's (:mod:`weightshare.reference`, ``pack_bits``): label $i$ takes the
bits $[ib, (i+1)b)$ of a little-endian bit stream. Work is done in chunks of $2^{16}$ labels, so
the transient memory stays $O(2^{16} b)$ whatever the tensor's size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .reference._args import check_int
from .reference._packing import MAX_BITS
from .reference._packing import bit_width as bit_width

__all__ = ["bit_width", "index_dtype", "pack_bits", "unpack_bits"]

_CHUNK = 1 << 16  # labels per chunk: a multiple of 8, so every chunk starts on a byte


def index_dtype(num_values: int) -> torch.dtype:
    """The gather dtype for labels in ``[0, num_values)``: int32, or int64 beyond ``2**31``."""
    return torch.int32 if num_values <= 1 << 31 else torch.int64


def _check_bits(bits: object) -> int:
    b = check_int(bits, "bits")
    if not 0 <= b <= MAX_BITS:
        raise ValueError(f"bits must be in [0, {MAX_BITS}], got {b}")
    return b


def pack_bits(labels: Tensor, bits: int) -> Tensor:
    r"""Pack ``labels`` (any shape, C order) at ``bits`` bits each (STORE-1).

    Args:
        labels: An integer tensor with entries in $[0, 2^{b})$.
        bits: $b \in [0, 63]$.

    Returns:
        A uint8 vector of $\lceil n b / 8 \rceil$ bytes on ``labels``' device.
    """
    b = _check_bits(bits)
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    flat = labels.reshape(-1).long()
    outside = flat < 0 if b == MAX_BITS else (flat < 0) | (flat >= 1 << b)
    bad = int(outside.sum())
    if bad:
        raise ValueError(f"labels has {bad} entries outside [0, 2**{b})")
    out = torch.empty(math.ceil(flat.numel() * b / 8), dtype=torch.uint8, device=flat.device)
    shifts = torch.arange(b, device=flat.device)
    weights = torch.tensor([1 << j for j in range(8)], dtype=torch.uint8, device=flat.device)
    for start in range(0, flat.numel(), _CHUNK):
        chunk = flat[start : start + _CHUNK]
        stream = ((chunk.unsqueeze(1) >> shifts) & 1).to(torch.uint8).reshape(-1)
        pad = -stream.numel() % 8
        if pad:
            stream = torch.cat([stream, stream.new_zeros(pad)])
        first = start * b // 8
        out[first : first + stream.numel() // 8] = (stream.reshape(-1, 8) * weights).sum(
            1, dtype=torch.uint8
        )
    return out


def unpack_bits(data: Tensor, bits: int, count: int, *, dtype: torch.dtype = torch.int64) -> Tensor:
    r"""The ``count`` labels packed in ``data`` at ``bits`` bits each (inverse of ``pack_bits``).

    Args:
        data: A uint8 vector of exactly $\lceil \text{count} \cdot b / 8 \rceil$ bytes.
        bits: $b \in [0, 63]$.
        count: The number of labels $n \ge 0$.
        dtype: The integer dtype of the result (it must hold $2^b - 1$).

    Returns:
        A vector of ``count`` labels on ``data``'s device.
    """
    b, n = _check_bits(bits), check_int(count, "count")
    if n < 0:
        raise ValueError(f"count must be >= 0, got {n}")
    if not isinstance(data, Tensor):
        raise TypeError(f"data must be a torch.Tensor, got {type(data).__name__}")
    if data.dtype != torch.uint8 or data.ndim != 1:
        raise TypeError(
            f"data must be a uint8 vector, got dtype {data.dtype} and shape {tuple(data.shape)}"
        )
    want = math.ceil(n * b / 8)
    if data.numel() != want:
        raise ValueError(f"data has {data.numel()} bytes; {n} labels of {b} bits take {want} bytes")
    out = torch.empty(n, dtype=dtype, device=data.device)
    bit = torch.arange(8, device=data.device, dtype=torch.uint8)
    shifts = torch.arange(b, device=data.device)
    for start in range(0, n, _CHUNK):
        m = min(_CHUNK, n - start)
        first = start * b // 8
        raw = data[first : first + math.ceil(m * b / 8)]
        stream = ((raw.unsqueeze(1) >> bit) & 1).reshape(-1)[: m * b].reshape(m, b).long()
        out[start : start + m] = (stream << shifts).sum(1).to(dtype)
    return out
