r"""Bit packing of non-negative integer labels (NumPy only; spec page *Storage*, STORE-1).

Label $i$ of a flat array occupies the $b$ bits $[ib, (i+1)b)$ of a bit stream, least significant
bit first; bit $j$ of the stream is bit $j \bmod 8$ of byte $\lfloor j/8 \rfloor$ (NumPy's
``packbits(..., bitorder="little")``). $n$ labels take $\lceil nb/8 \rceil$ bytes; the padding
bits of the last byte are 0.
"""

from __future__ import annotations

import math

import numpy as np

from ._args import check_int

__all__ = ["bit_width", "pack_bits", "unpack_bits"]

#: The widest label a stream may hold (labels are non-negative int64).
MAX_BITS = 63


def bit_width(num_values: int) -> int:
    r"""$b = \lceil \log_2 K \rceil$, the bits per label for $K \ge 1$ values (0 when $K = 1$).

    Args:
        num_values: $K \ge 1$.

    Returns:
        The bit width, ``(K - 1).bit_length()``.
    """
    k = check_int(num_values, "num_values")
    if k < 1:
        raise ValueError(f"num_values must be >= 1, got {k}")
    return (k - 1).bit_length()


def _check_bits(bits: object) -> int:
    b = check_int(bits, "bits")
    if not 0 <= b <= MAX_BITS:
        raise ValueError(f"bits must be in [0, {MAX_BITS}], got {b}")
    return b


def pack_bits(labels: np.ndarray, bits: int) -> np.ndarray:
    r"""Pack ``labels`` (any shape, C order) at ``bits`` bits each (STORE-1).

    Args:
        labels: Integers in $[0, 2^{b})$.
        bits: $b \in [0, 63]$.

    Returns:
        A uint8 vector of $\lceil n b / 8 \rceil$ bytes.
    """
    b = _check_bits(bits)
    x = np.asarray(labels)
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"labels must be an integer array, got dtype {x.dtype}")
    flat = x.ravel().astype(np.int64)
    outside = flat < 0 if b == MAX_BITS else (flat < 0) | (flat >= 1 << b)
    bad = int(np.count_nonzero(outside))
    if bad:
        raise ValueError(f"labels has {bad} entries outside [0, 2**{b})")
    stream = (flat[:, None] >> np.arange(b, dtype=np.int64)) & 1
    return np.packbits(stream.astype(np.uint8).ravel(), bitorder="little")


def unpack_bits(data: np.ndarray, bits: int, count: int) -> np.ndarray:
    r"""The ``count`` labels packed in ``data`` at ``bits`` bits each (inverse of ``pack_bits``).

    Args:
        data: A uint8 vector of exactly $\lceil \text{count} \cdot b / 8 \rceil$ bytes.
        bits: $b \in [0, 63]$.
        count: The number of labels $n \ge 0$.

    Returns:
        An int64 vector of ``count`` labels.
    """
    b, n = _check_bits(bits), check_int(count, "count")
    if n < 0:
        raise ValueError(f"count must be >= 0, got {n}")
    d = np.asarray(data)
    if d.dtype != np.uint8 or d.ndim != 1:
        raise TypeError(f"data must be a uint8 vector, got dtype {d.dtype} and shape {d.shape}")
    want = math.ceil(n * b / 8)
    if d.size != want:
        raise ValueError(f"data has {d.size} bytes; {n} labels of {b} bits take {want} bytes")
    stream = np.unpackbits(d, bitorder="little")[: n * b].reshape(n, b).astype(np.int64)
    labels: np.ndarray = (stream << np.arange(b, dtype=np.int64)).sum(axis=1, dtype=np.int64)
    return labels
