r"""Canonical Huffman coding of integer streams, vectorized (spec page *Storage*, STORE-24 ..).

The format is the reference's (:mod:`weightshare.reference`, ``huffman_encode``): a canonical code
over the distinct values, written most significant bit first, cut into blocks whose bit offsets
are stored. The code lengths come from the reference's :func:`code_lengths` (a loop over the
alphabet, not the values), so both encoders write the same bytes.

Decoding is vectorized. The code starting at **every** bit position of the stream is found at once:
from a table of the next $\ell_{max}$ bits when the longest code has $\ell_{max} \le 16$ bits,
else by comparing the next 24 bits with the canonical limits (the left-aligned end of the codes of
each length); that gives the length, hence the next position; the symbols are looked up only where
the codes start. All blocks
then advance in lockstep, one value per step: a gather of the next position of every block. A
block must end exactly where the next one starts, so a wrong bit anywhere is caught.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .reference._args import check_int
from .reference._coding import MAX_CODE_LENGTH, check_code, code_lengths

__all__ = ["huffman_decode", "huffman_encode"]

_L = MAX_CODE_LENGTH


#: Values coded per chunk: the encoder's memory is a few dozen bytes per value of a chunk.
_CHUNK = 1 << 16
#: The bits decoded at once (whole blocks, at least one): bounds the decoder's transient memory.
_GROUP_BITS = 1 << 22
#: Codes up to this long are decoded with a table of the next ``2**bits`` bit patterns.
_TABLE_BITS = 16


def _windows(data: np.ndarray, bits: int) -> np.ndarray:
    """The next ``bits`` bits (<= 24) at every bit position $p$ of the stream: the 4 bytes from
    $p / 8$, shifted by $p \bmod 8$ (past the end the bits read 0)."""
    padded = np.concatenate([data, np.zeros(3, dtype=np.uint8)]).astype(np.uint32)
    size = data.size
    word = padded[:size] << 24 | padded[1 : size + 1] << 16 | padded[2 : size + 2] << 8
    word |= padded[3 : size + 3]
    shifted = word[:, None] << np.arange(8, dtype=np.uint32)  # uint32: the high bits drop out
    out: np.ndarray = (shifted >> np.uint32(32 - bits)).reshape(-1)
    return out


def _decoder(data: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, Any]:
    """``(window, length, rank_of)`` of a stream: the next bits at every bit position, the length
    of the code starting there (0 where they are no code) and a function from windows to the
    rank of their symbol in canonical (length, value) order."""
    order = np.argsort(lengths, kind="stable")
    sorted_lengths = lengths[order]
    top = int(sorted_lengths[-1])
    if top <= _TABLE_BITS:  # a table of the next `top` bits: each code fills 2**(top - l) rows
        spans = np.left_shift(1, top - sorted_lengths)
        used = int(spans.sum())
        table_length = np.zeros(1 << top, dtype=np.uint8)  # 0: no code (an incomplete code)
        table_length[:used] = np.repeat(sorted_lengths, spans)
        table_rank = np.zeros(1 << top, dtype=np.int64)
        table_rank[:used] = np.repeat(np.arange(order.size), spans)
        window = _windows(data, top)
        return window, table_length[window], table_rank.__getitem__
    # compare the next 24 bits with the left-aligned end of the codes of each length
    per_length = np.bincount(lengths, minlength=_L + 1)[1:]
    limit = np.cumsum(per_length << (_L - np.arange(1, _L + 1, dtype=np.int64)))
    lower = np.concatenate([[0], limit])  # the left-aligned first code of each length - 1
    base = np.concatenate([[0], np.cumsum(per_length)])  # the symbols of shorter codes
    window = _windows(data, _L).astype(np.int64)
    short = np.searchsorted(limit, window, side="right")  # length - 1; 24: no code

    def rank_of(w: np.ndarray) -> np.ndarray:
        k = np.searchsorted(limit, w, side="right")
        rank: np.ndarray = base[k] + ((w - lower[k]) >> (_L - 1 - k))
        return rank

    return window, np.where(short < _L, short + 1, 0), rank_of


def huffman_encode(values: Tensor, block_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Code ``values`` (any shape, C order): the reference's ``huffman_encode``, vectorized.

    Returns:
        ``(code, lengths, symbols, offsets)`` as CPU tensors (uint8, int64, int64, int64).
    """
    b = check_int(block_size, "block_size")
    if not isinstance(values, Tensor) or values.is_floating_point() or values.is_complex():
        raise TypeError("values must be an integer torch.Tensor")
    flat = values.detach().reshape(-1).long().cpu().numpy()
    if flat.size == 0 or int(flat.min()) < 0 or b < 1:
        raise ValueError("values must be a non-empty tensor of integers >= 0, block_size >= 1")
    symbols, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    lengths = code_lengths(counts)
    order = np.argsort(lengths, kind="stable")
    left = np.zeros(symbols.size, dtype=np.int64)  # the Kraft partial sums, left-aligned codes
    left[order[1:]] = np.cumsum(1 << (_L - lengths[order]))[:-1]
    codes = left >> (_L - lengths)
    n_i = lengths[inverse]
    starts = np.cumsum(n_i) - n_i
    return (
        torch.from_numpy(_write(codes[inverse], n_i)),
        torch.from_numpy(lengths),
        torch.from_numpy(symbols.astype(np.int64)),
        torch.from_numpy(np.ascontiguousarray(starts[::b])),
    )


def _write(codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The bytes of the codes written one after the other, most significant bit first, in
    chunks of :data:`_CHUNK` codes (the bits past the last whole byte carried to the next)."""
    out, carry = [], np.zeros(0, dtype=np.uint8)
    for start in range(0, codes.size, _CHUNK):
        c, n = codes[start : start + _CHUNK], lengths[start : start + _CHUNK]
        ends = np.cumsum(n)
        owner = np.repeat(np.arange(c.size), n)
        shift = ends[owner] - 1 - np.arange(int(ends[-1]), dtype=np.int64)
        bits = np.concatenate([carry, ((c[owner] >> shift) & 1).astype(np.uint8)])
        whole = bits.size - bits.size % 8
        out.append(np.packbits(bits[:whole]))
        carry = bits[whole:]
    out.append(np.packbits(carry))
    return np.concatenate(out)


def huffman_decode(
    code: Tensor, lengths: Tensor, symbols: Tensor, offsets: Tensor, count: int, block_size: int
) -> Tensor:
    """The ``count`` values coded in ``code``: the reference's ``huffman_decode``, vectorized.

    Checks the code and the offsets before decoding, and every block's end after (see the
    reference). Work and memory are linear in the stream's bits and ``count``.

    Returns:
        An int64 CPU tensor of ``count`` values.

    Raises:
        ValueError: The code, the offsets or the bits are invalid.
    """
    n, b = check_int(count, "count"), check_int(block_size, "block_size")
    if n < 1 or b < 1:
        raise ValueError(f"count and block_size must be >= 1, got {n} and {b}")
    data = code.detach().cpu().numpy()
    if data.dtype != np.uint8 or data.ndim != 1:
        raise TypeError(f"code must be a uint8 vector, got dtype {code.dtype}")
    lens = lengths.detach().cpu().long().numpy()
    syms = symbols.detach().cpu().long().numpy()
    check_code(lens, syms)
    starts = offsets.detach().cpu().long().numpy().reshape(-1)
    total, blocks = 8 * data.size, -(-n // b)
    if starts.size != blocks:
        raise ValueError(
            f"{n} values in blocks of {b} need {blocks} block offsets, got {starts.size}"
        )
    if starts[0] != 0 or bool((np.diff(starts) <= 0).any()) or int(starts[-1]) >= total:
        raise ValueError(f"the block offsets are not 0, increasing and below the {total} bits")
    counts = np.full(blocks, b, dtype=np.int64)
    counts[-1] = n - (blocks - 1) * b
    ranks, ends = [], np.empty(blocks, dtype=np.int64)
    first = 0
    while first < blocks:  # groups of blocks of at most _GROUP_BITS bits (at least one block)
        stop = max(first + 1, int(np.searchsorted(starts, starts[first] + _GROUP_BITS, "right")))
        base = int(starts[first]) // 8
        high = int(starts[stop]) if stop < blocks else total
        got, ends[first:stop] = _decode_blocks(
            data[base : -(-high // 8)], lens, starts[first:stop] - 8 * base, counts[first:stop],
            high - 8 * base,
        )  # fmt: skip
        ends[first:stop] += 8 * base
        bad = np.flatnonzero(ends[first : stop - (stop == blocks)] != starts[first + 1 : stop + 1])
        if bad.size:
            j = first + int(bad[0])
            raise ValueError(
                f"block {j} ends at bit {ends[j]}, but the next block starts at {starts[j + 1]}"
            )
        end = int(ends[-1])
        if stop == blocks and (
            not total - 8 < end <= total or int(data[-1]) & ((1 << (total - end)) - 1)
        ):
            raise ValueError(f"the last block ends at bit {end}, not in a last byte padded with 0")
        ranks.append(got())  # the blocks' codes are valid: their ranks
        first = stop
    rank = np.concatenate(ranks)
    return torch.from_numpy(syms[np.argsort(lens, kind="stable")[rank]])


def _decode_blocks(
    data: np.ndarray, lengths: np.ndarray, starts: np.ndarray, counts: np.ndarray, total: int
) -> tuple[Callable[[], np.ndarray], np.ndarray]:
    """``(ranks, ends)`` of blocks starting at the bits ``starts`` of ``data`` with ``counts``
    values each (only the last may have fewer), all in the first ``total`` bits: the bit where
    each block ends (past ``total``: not a code), and a function that returns the canonical ranks
    of their values, to call once the ends are checked."""
    window, length, rank_of = _decoder(data, lengths)
    index = np.int32 if total < 1 << 30 else np.int64
    sink = total + 1  # where a step out of the bits, or from a non-code, goes and stays
    nxt = np.full(total + _L + 2, sink, dtype=index)
    nxt[:total] = np.arange(total, dtype=index) + length[:total]
    if not bool(length[:total].all()):
        nxt[:total][length[:total] == 0] = sink
    steps = int(counts[0])
    lanes = np.empty((steps + 1, starts.size), dtype=index)  # row i: each block's i-th code
    lanes[0] = at = starts
    for i in range(steps):  # every block advances by one value
        lanes[i + 1] = at = nxt[at]
    ends = lanes[counts, np.arange(starts.size)].astype(np.int64)
    return lambda: rank_of(window[lanes[:steps].T.reshape(-1)[: int(counts.sum())]]), ends
