r"""Entropy-coded parts of a file: tied labels and sparse positions (spec STORE-24 .. STORE-28).

``ws.save`` stores the labels of a tied or sparse-tied weight, and the positions of a sparse one as
the **gaps** between them (the zeros before each non-zero), either fixed-width (STORE-1, STORE-4)
or as a canonical Huffman stream (:mod:`._coding`), whichever takes fewer bytes. A coded stream
``<s>`` (``labels`` or ``gaps``) has four parts, all uint8 vectors, and a description
``{"symbols": A, "bytes": S, "block": B}`` under the tensor's ``coding`` field:

- ``<s>_code``: the $S$ bytes of the stream;
- ``<s>_lengths``: the code length of each of the $A$ symbols;
- ``<s>_symbols``: the symbols, increasing, packed at $\lceil\log_2 D\rceil$ bits ($D = K$ for
  labels, $n$ entries for gaps);
- ``<s>_blocks``: the bit offset of each block of $B$ values, packed at $\lceil\log_2 8S\rceil$
  bits.

The sizes are checked with the file (:mod:`._file_checks`); :func:`decode_labels` and
:func:`decode_gaps` check the code and the values before anything is built from them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._coding import huffman_decode, huffman_encode
from ._packing import bit_width, pack_bits, unpack_bits
from .reference._coding import MAX_CODE_LENGTH

__all__ = [
    "BLOCK",
    "GAPS",
    "STREAM_FIELDS",
    "choose",
    "decode_gaps",
    "decode_labels",
    "stream_sizes",
]

#: Values per block: the decoder takes this many lockstep steps; the offsets cost about
#: 20 bits per block, under 0.1 bit per value.
BLOCK = 256
#: The header bytes a part costs in the choice (its safetensors entry: name, dtype, shape, offsets).
PART_BYTES = 64
_LAYOUT_PARTS = ("bitmap", "indptr", "indices")
#: The sparse layout of coded positions.
GAPS = "gaps"
#: The fields of a coded stream's description.
STREAM_FIELDS = ("symbols", "bytes", "block")


def stream_sizes(
    desc: dict[str, int], stream: str, count: int, domain: int
) -> dict[str, tuple[str, int]]:
    """The bytes of each part of a checked stream description: ``{part: ("packed", bytes)}``."""
    a, size, block = desc["symbols"], desc["bytes"], desc["block"]
    blocks = -(-count // block)
    return {
        f"{stream}_code": ("packed", size),
        f"{stream}_lengths": ("packed", a),
        f"{stream}_symbols": ("packed", math.ceil(a * bit_width(domain) / 8)),
        f"{stream}_blocks": ("packed", math.ceil(blocks * bit_width(8 * size) / 8)),
    }


def _encode(
    values: Tensor, stream: str, domain: int, fixed: dict[str, Tensor]
) -> tuple[dict[str, int], dict[str, Tensor]] | None:
    """The coded stream of ``values`` if it costs fewer bytes than the ``fixed`` parts."""
    flat = values.reshape(-1).long().cpu()
    a = int(torch.unique(flat).numel())
    # every value takes >= 1 bit and every symbol 8 + log2(D) bits: skip a hopeless (or huge) code
    if a * (8 + bit_width(domain)) + flat.numel() >= 8 * _cost(fixed) or a > 1 << MAX_CODE_LENGTH:
        return None
    code, lengths, symbols, offsets = huffman_encode(flat, BLOCK)
    desc = {"symbols": symbols.numel(), "bytes": code.numel(), "block": BLOCK}
    coded = {
        f"{stream}_code": code,
        f"{stream}_lengths": lengths.to(torch.uint8),
        f"{stream}_symbols": pack_bits(symbols, bit_width(domain)),
        f"{stream}_blocks": pack_bits(offsets, bit_width(8 * code.numel())),
    }
    return (desc, coded) if _cost(coded) < _cost(fixed) else None


def _cost(parts: dict[str, Tensor]) -> int:
    return sum(t.numel() * t.element_size() + PART_BYTES for t in parts.values())


def gaps_of(positions: Tensor) -> Tensor:
    """The zeros before each of the sorted flat positions: $p_0$, then $p_i - p_{i-1} - 1$."""
    pos = positions.reshape(-1).long().cpu()
    return torch.diff(pos, prepend=pos.new_full((1,), -1)) - 1


def choose(
    meta: dict[str, Any], parts: dict[str, Tensor], labels: Tensor | None, positions: Tensor | None
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A tied or sparse record with each stream coded where that takes fewer bytes.

    ``labels`` are the labels (``None`` for an untied sparse weight) and ``positions`` the sparse
    weight's sorted flat positions (``None`` for a tied one). The description gets a ``coding``
    field (empty when nothing is coded); a stream is coded when its parts, counting
    :data:`PART_BYTES` of header each, take strictly fewer bytes than the fixed-width parts.
    """
    meta, parts = dict(meta), dict(parts)
    coding: dict[str, Any] = {}
    if labels is not None and labels.numel() and meta["num_values"] > 1:
        found = _encode(labels, "labels", meta["num_values"], {"labels": parts["labels"]})
        if found is not None:
            coding["labels"] = found[0]
            del parts["labels"]
            parts.update(found[1])
    if positions is not None and positions.numel():
        fixed: dict[str, Tensor] = {k: parts.pop(k) for k in _LAYOUT_PARTS if k in parts}
        found = _encode(gaps_of(positions), "gaps", math.prod(meta["shape"]), fixed)
        if found is None:
            parts.update(fixed)
        else:
            coding["gaps"] = found[0]
            parts.update(found[1])
            meta["layout"] = GAPS
    meta["coding"] = coding
    return meta, parts


def _decode(
    desc: dict[str, int], parts: dict[str, Tensor], stream: str, count: int, domain: int
) -> Tensor:
    a, size = desc["symbols"], desc["bytes"]
    symbols = unpack_bits(parts[f"{stream}_symbols"], bit_width(domain), a)
    if bool((symbols >= domain).any()):
        what = "labels" if stream == "labels" else "gaps"
        raise ValueError(f"coded {stream}: the symbols hold {what} outside [0, {domain})")
    blocks = -(-count // desc["block"])
    offsets = unpack_bits(parts[f"{stream}_blocks"], bit_width(8 * size), blocks)
    try:
        return huffman_decode(
            parts[f"{stream}_code"],
            parts[f"{stream}_lengths"],
            symbols,
            offsets,
            count,
            desc["block"],
        )
    except (TypeError, ValueError) as err:
        raise ValueError(f"coded {stream}: {err}") from None


def decode_labels(desc: dict[str, int], parts: dict[str, Tensor], count: int, k: int) -> Tensor:
    """The ``count`` labels of a coded ``labels`` stream, each checked $< K$ (int64)."""
    return _decode(desc, parts, "labels", count, k)


def decode_gaps(desc: dict[str, int], parts: dict[str, Tensor], count: int, numel: int) -> Tensor:
    """The sorted flat positions (int64) of a coded ``gaps`` stream, checked $< n$."""
    gaps = _decode(desc, parts, "gaps", count, numel)
    if float(gaps.double().sum()) + count > numel:  # before the exact sum, which could overflow
        raise ValueError(f"coded gaps: the positions run past the {numel} entries")
    positions = torch.cumsum(gaps + 1, 0) - 1
    if int(positions[-1]) >= numel:
        raise ValueError(f"coded gaps: the positions run past the {numel} entries")
    return positions
