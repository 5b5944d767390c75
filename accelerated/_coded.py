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

import json
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
#: A part's entry in the safetensors header, besides its key, size and two offsets.
_ENTRY = len('"":{"dtype":"U8","shape":[],"data_offsets":[,]},')
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
    values: Tensor, key: str, domain: int, fixed: dict[str, Tensor]
) -> tuple[dict[str, int], dict[str, Tensor]] | None:
    """The coded stream ``key`` (``<name>.<stream>``) of ``values`` if it costs fewer bytes than
    the ``fixed`` parts (by file key), header entries included."""
    flat = values.reshape(-1).long().cpu()
    a = int(torch.unique(flat).numel())
    # every value takes >= 1 bit and every symbol 8 + log2(D) bits: skip a hopeless (or huge) code
    if (
        a * (8 + bit_width(domain)) + flat.numel() >= 8 * _cost(fixed, 1)
        or a > 1 << MAX_CODE_LENGTH
    ):
        return None
    code, lengths, symbols, offsets = huffman_encode(flat, BLOCK)
    desc = {"symbols": symbols.numel(), "bytes": code.numel(), "block": BLOCK}
    coded = {
        f"{key}_code": code,
        f"{key}_lengths": lengths.to(torch.uint8),
        f"{key}_symbols": pack_bits(symbols, bit_width(domain)),
        f"{key}_blocks": pack_bits(offsets, bit_width(8 * code.numel())),
    }
    described = 2 * len(json.dumps({key: desc})) + 2  # escaped in the header; "gaps" vs "csr"
    return (desc, coded) if _cost(coded, 20) + described < _cost(fixed, 1) else None


def _cost(parts: dict[str, Tensor], digits: int) -> int:
    """The bytes of ``parts`` (by file key) and of their header entries, with offsets of
    ``digits`` digits (20: an upper bound, 1: a lower bound)."""
    return sum(
        t.numel() * t.element_size() + _ENTRY + len(key) + len(str(t.numel())) + 2 * digits
        for key, t in parts.items()
    )


def gaps_of(positions: Tensor) -> Tensor:
    """The zeros before each of the sorted flat positions: $p_0$, then $p_i - p_{i-1} - 1$."""
    pos = positions.reshape(-1).long().cpu()
    return torch.diff(pos, prepend=pos.new_full((1,), -1)) - 1


def choose(
    name: str,
    meta: dict[str, Any],
    parts: dict[str, Tensor],
    labels: Tensor | None,
    positions: Tensor | None,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The record of the tied or sparse tensor ``name``, each stream coded where that is smaller.

    ``labels`` are the labels (``None`` for an untied sparse weight) and ``positions`` the sparse
    weight's sorted flat positions (``None`` for a tied one). The description gets a ``coding``
    field (empty when nothing is coded). A stream is coded when its parts and an upper bound of
    their header entries (offsets of 20 digits, the escaped description) take fewer bytes than the
    fixed-width parts and a lower bound of theirs, so coding never makes a file larger but by the
    ``coding`` field.
    """
    meta = dict(meta)
    keyed = {f"{name}.{p}": t for p, t in parts.items()}
    coding: dict[str, Any] = {}
    if labels is not None and labels.numel() and meta["num_values"] > 1:
        key = f"{name}.labels"
        found = _encode(labels, key, meta["num_values"], {key: keyed[key]})
        if found is not None:
            coding["labels"] = found[0]
            del keyed[key]
            keyed.update(found[1])
    if positions is not None and positions.numel():
        layout = [f"{name}.{p}" for p in _LAYOUT_PARTS if f"{name}.{p}" in keyed]
        fixed = {k: keyed[k] for k in layout}
        found = _encode(gaps_of(positions), f"{name}.gaps", math.prod(meta["shape"]), fixed)
        if found is not None:
            coding["gaps"] = found[0]
            for k in layout:
                del keyed[k]
            keyed.update(found[1])
            meta["layout"] = GAPS
    meta["coding"] = coding
    return meta, {k.removeprefix(f"{name}."): t for k, t in keyed.items()}


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
