r"""Canonical Huffman coding of integer streams (NumPy only; spec page *Storage*, STORE-24 ..).

A stream of $n \ge 1$ non-negative integers is coded with a **canonical** prefix code over its
alphabet, the distinct values present in increasing order:

- the code **lengths** $\ell_s \in [1, 24]$ of the alphabet's symbols are those of a Huffman
  tree (:func:`code_lengths`), which determine the code: sort the symbols by (length, value); the
  code of the $j$-th is the $\ell_j$-bit integer $\lfloor \sum_{i<j} 2^{24-\ell_i} / 2^{24-\ell_j}
  \rfloor$ (the canonical code: shorter codes first, consecutive integers within a length);
- the codes of the values are written one after the other, **most significant bit first**, into a
  bit stream whose bit $j$ is bit $7 - (j \bmod 8)$ of byte $\lfloor j/8 \rfloor$ (NumPy's
  ``packbits`` default), the last byte padded with 0 bits;
- the stream is cut into blocks of ``block_size`` values; ``offsets`` holds the bit where each
  block starts (the first is 0), so blocks decode independently.

This module is the executable definition: the encoder writes the bits one code at a time and the
decoder reads them **one bit at a time**, extending the code until it is one of the canonical
codes of its length.
"""

from __future__ import annotations

import heapq
import itertools

import numpy as np

from ._args import check_int

__all__ = ["MAX_CODE_LENGTH", "code_lengths", "huffman_decode", "huffman_encode"]

#: The longest code: a decoder peeks at most this many bits (24 bits fit in 4 bytes at any shift).
MAX_CODE_LENGTH = 24


def code_lengths(counts: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    r"""Huffman code lengths for symbol counts, limited to ``max_length`` bits.

    The tree is built by always merging the two lightest nodes; among equal weights the leaves
    come first in symbol order, then the merged nodes in the order they were made, so the lengths
    are deterministic. While the longest code exceeds ``max_length``, the counts are halved
    (rounding up, so none becomes 0) and the tree rebuilt. A single symbol gets length 1.

    Args:
        counts: The positive count of each symbol, $A \ge 1$ of them, $A \le 2^{\text{max}}$.
        max_length: The longest code allowed, in $[1, 24]$.

    Returns:
        An int64 vector of $A$ lengths in $[1, \text{max\_length}]$ with
        $\sum_s 2^{-\ell_s} \le 1$.
    """
    top = check_int(max_length, "max_length")
    if not 1 <= top <= MAX_CODE_LENGTH:
        raise ValueError(f"max_length must be in [1, {MAX_CODE_LENGTH}], got {top}")
    weights = [int(c) for c in np.asarray(counts).reshape(-1)]
    if not weights or min(weights) < 1:
        raise ValueError("counts must be a non-empty vector of positive integers")
    if len(weights) > 1 << top:
        raise ValueError(f"{len(weights)} symbols cannot have codes of at most {top} bits")
    while True:
        lengths = _huffman(weights)
        if max(lengths) <= top:
            return np.array(lengths, dtype=np.int64)
        weights = [(w + 1) // 2 for w in weights]


def _huffman(weights: list[int]) -> list[int]:
    """The depth of each leaf of the Huffman tree of ``weights`` (1 for a single leaf)."""
    a = len(weights)
    if a == 1:
        return [1]
    heap = [(w, i) for i, w in enumerate(weights)]  # (weight, node); nodes >= a are merged ones
    heapq.heapify(heap)
    parent = [0] * (2 * a - 1)
    node = a
    while len(heap) > 1:
        w1, n1 = heapq.heappop(heap)
        w2, n2 = heapq.heappop(heap)
        parent[n1] = parent[n2] = node
        heapq.heappush(heap, (w1 + w2, node))
        node += 1
    depth = [0] * (2 * a - 1)
    for n in range(2 * a - 3, -1, -1):  # the root is the last node; parents come after children
        depth[n] = depth[parent[n]] + 1
    return depth[:a]


def _canonical(lengths: np.ndarray) -> tuple[list[int], list[int], list[int]]:
    """``(count, first, base)`` per length $\\ell \\in [0, 24]$: the number of codes of length
    $\\ell$, the first code of that length, and how many symbols have shorter codes."""
    count = [0] * (MAX_CODE_LENGTH + 1)
    for n in lengths.tolist():
        count[n] += 1
    first, base = [0] * (MAX_CODE_LENGTH + 1), [0] * (MAX_CODE_LENGTH + 1)
    code = 0
    for n in range(1, MAX_CODE_LENGTH + 1):
        code = (code + count[n - 1]) << 1
        first[n], base[n] = code, base[n - 1] + count[n - 1]
    return count, first, base


def check_code(lengths: np.ndarray, symbols: np.ndarray) -> None:
    """The lengths are in $[1, 24]$ with a Kraft sum $\\le 1$ (exact, in integers) and the
    symbols strictly increasing, one per length."""
    if lengths.ndim != 1 or symbols.shape != lengths.shape or lengths.size == 0:
        raise ValueError(
            f"the code needs as many lengths as symbols, at least 1: got {lengths.size} lengths "
            f"and {symbols.size} symbols"
        )
    if int(lengths.min()) < 1 or int(lengths.max()) > MAX_CODE_LENGTH:
        raise ValueError(f"the code lengths must be in [1, {MAX_CODE_LENGTH}]")
    kraft = sum(1 << (MAX_CODE_LENGTH - n) for n in lengths.tolist())
    if kraft > 1 << MAX_CODE_LENGTH:
        raise ValueError(
            f"the code lengths violate Kraft's inequality: sum 2**-length = "
            f"{kraft}/2**{MAX_CODE_LENGTH} > 1"
        )
    if symbols.size > 1 and not bool((np.diff(symbols) > 0).all()):
        raise ValueError("the code's symbols are not strictly increasing")


def _check_values(values: np.ndarray, block_size: int) -> tuple[np.ndarray, int]:
    v = np.asarray(values)
    if not np.issubdtype(v.dtype, np.integer):
        raise TypeError(f"values must be an integer array, got dtype {v.dtype}")
    flat = v.reshape(-1).astype(np.int64)
    if flat.size == 0 or int(flat.min()) < 0:
        raise ValueError("values must be a non-empty array of integers >= 0")
    b = check_int(block_size, "block_size")
    if b < 1:
        raise ValueError(f"block_size must be >= 1, got {b}")
    return flat, b


def huffman_encode(
    values: np.ndarray, block_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Code ``values`` (any shape, C order) with the canonical Huffman code of their counts.

    Args:
        values: $n \\ge 1$ integers $\\ge 0$.
        block_size: Values per block ($\\ge 1$).

    Returns:
        ``(code, lengths, symbols, offsets)``: the uint8 bit stream, the code length (int64) of
        each symbol, the symbols (the distinct values, increasing, int64) and the bit offset
        (int64) of each of the $\\lceil n / \\text{block\\_size} \\rceil$ blocks.
    """
    flat, b = _check_values(values, block_size)
    symbols, counts = np.unique(flat, return_counts=True)
    lengths = code_lengths(counts)
    _, first, base = _canonical(lengths)
    order = sorted(range(symbols.size), key=lambda s: (int(lengths[s]), s))
    code_of: dict[int, tuple[int, int]] = {}
    for rank, s in enumerate(order):  # the rank-th symbol in (length, value) order
        n = int(lengths[s])
        code_of[int(symbols[s])] = (first[n] + rank - base[n], n)
    bits: list[int] = []
    offsets = []
    for i, v in enumerate(flat.tolist()):
        if i % b == 0:
            offsets.append(len(bits))
        c, n = code_of[v]
        bits.extend((c >> (n - 1 - j)) & 1 for j in range(n))
    code = np.packbits(np.array(bits, dtype=np.uint8))
    return code, lengths, symbols.astype(np.int64), np.array(offsets, dtype=np.int64)


def huffman_decode(
    code: np.ndarray,
    lengths: np.ndarray,
    symbols: np.ndarray,
    offsets: np.ndarray,
    count: int,
    block_size: int,
) -> np.ndarray:
    """The ``count`` values coded in ``code`` (inverse of :func:`huffman_encode`), checked.

    The code is checked first (lengths in $[1, 24]$, Kraft sum $\\le 1$, symbols increasing, one
    offset per block, the first 0, increasing, inside the stream); then each block is read one bit
    at a time and must end exactly where the next one starts (the last one in the last byte, its
    padding bits 0).

    Raises:
        ValueError: Any of these fails, or the bits are not a code.
    """
    n, b = check_int(count, "count"), check_int(block_size, "block_size")
    if n < 1 or b < 1:
        raise ValueError(f"count and block_size must be >= 1, got {n} and {b}")
    data = np.asarray(code)
    if data.dtype != np.uint8 or data.ndim != 1:
        raise TypeError(f"code must be a uint8 vector, got dtype {data.dtype}")
    lens, syms = np.asarray(lengths).astype(np.int64), np.asarray(symbols).astype(np.int64)
    check_code(lens, syms)
    starts = [int(o) for o in np.asarray(offsets).reshape(-1)]
    total = 8 * data.size
    blocks = -(-n // b)
    if len(starts) != blocks:
        raise ValueError(
            f"{n} values in blocks of {b} need {blocks} block offsets, got {len(starts)}"
        )
    if starts[0] != 0 or any(q <= p for p, q in itertools.pairwise(starts)) or starts[-1] >= total:
        raise ValueError(f"the block offsets are not 0, increasing and below the {total} bits")
    count_of, first, base = _canonical(lens)
    order = sorted(range(syms.size), key=lambda s: (int(lens[s]), s))
    bits = np.unpackbits(data).tolist()
    out: list[int] = []
    for j, start in enumerate(starts):
        pos = start
        for _ in range(min(b, n - j * b)):
            c = length = 0
            while True:
                if length == MAX_CODE_LENGTH or pos >= total:
                    raise ValueError(f"block {j} does not decode: no code at bit {pos}")
                c, length, pos = 2 * c + bits[pos], length + 1, pos + 1
                if first[length] <= c < first[length] + count_of[length]:
                    out.append(int(syms[order[base[length] + c - first[length]]]))
                    break
        end = starts[j + 1] if j + 1 < blocks else None
        if end is not None and pos != end:
            raise ValueError(f"block {j} ends at bit {pos}, but the next block starts at {end}")
        if end is None and (pos <= total - 8 or any(bits[pos:])):
            raise ValueError(f"the last block ends at bit {pos}, not in a last byte padded with 0")
    return np.array(out, dtype=np.int64)
