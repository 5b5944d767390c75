"""The empirical entropy bound of a stored model (EXP-66): what an ideal coder of the labels and
sparse positions that ``ws.save`` writes would take, beside the float values it stores as they are.

For every logical tensor of the model (``weightshare._structures.entries``, the tensors a file
holds): its float parts (a dense tensor, a codebook, the non-zero values, hashed values, factors)
count their bytes; a tied weight's labels count ``n * H(labels)`` bits and a sparse weight's
positions ``z * H(gaps)`` bits (and its labels ``z * H(labels)`` bits when it has a codebook), where
``H`` is the empirical (zero-order) entropy of the stream in bits per symbol and the **gaps** are
the zeros before each non-zero ($p_0$, then $p_i - p_{i-1} - 1$), as the coder codes them. The
file's safetensors header is not part of the bound; the page compares the file's payload (its
bytes without the header) with it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

#: the float parts of a file record (the others are packed integers)
_FLOAT_PARTS = ("", "values", "free")


def entropy_bits(values: Tensor) -> float:
    """``len(values) * H``: the empirical zero-order entropy of an integer stream, in bits."""
    flat = values.reshape(-1).long().cpu()
    n = flat.numel()
    if n == 0:
        return 0.0
    counts = torch.unique(flat, return_counts=True)[1].double()
    p = counts / n
    return float(-(counts * torch.log2(p)).sum())


def gaps(positions: Tensor) -> Tensor:
    """The zeros before each of the sorted flat positions: $p_0$, then $p_i - p_{i-1} - 1$ (the
    stream ``ws.save`` codes, STORE-24)."""
    from weightshare._coded import gaps_of

    out: Tensor = gaps_of(positions)
    return out


def entropy_bound(model: nn.Module) -> dict[str, Any]:
    """Bytes of the model's float parts and of its label and gap streams at their empirical
    entropy: ``{"bytes": total, "float_bytes": ..., "label_bytes": ..., "gap_bytes": ...}``."""
    from weightshare._sparse import Sparse
    from weightshare._structures import entries
    from weightshare._tie import Tied

    floats, label_bits, gap_bits = 0, 0.0, 0.0
    for e in entries(model):
        _, tensors = e.record()
        floats += sum(
            t.numel() * t.element_size()
            for part, t in tensors.items()
            if part in _FLOAT_PARTS or part.startswith("factor")
        )
        s = e.structure
        if isinstance(s, Tied):
            label_bits += entropy_bits(s.labels)
        elif isinstance(s, Sparse):
            gap_bits += entropy_bits(gaps(s.positions))
            if s.labels is not None:
                label_bits += entropy_bits(s.labels)
    label_bytes, gap_bytes = label_bits / 8, gap_bits / 8
    return {
        "bytes": floats + math.ceil(label_bytes + gap_bytes),
        "float_bytes": floats,
        "label_bytes": round(label_bytes, 1),
        "gap_bytes": round(gap_bytes, 1),
    }
