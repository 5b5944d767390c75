r"""Sparse weights: the non-zero entries and where they are (spec page *Storage*, STORE-4).

A sparse weight of $n$ entries keeps its $z$ non-zero values (or, *sparse-tied*, a codebook of $K$
values and a label per non-zero) and their flat positions. In memory the positions are int32
(int64 beyond $2^{31}$ entries); in the state dict and the file the set of positions is stored in
the smaller of two layouts, both bit-packed (STORE-1):

- **bitmap**: one bit per entry, $\lceil n/8 \rceil$ bytes;
- **csr**: the weight viewed as $r \times c$ ($r$ = its first dimension), row pointers
  ($r + 1$ entries at $\lceil\log_2(z + 1)\rceil$ bits) and column indices ($z$ entries at
  $\lceil\log_2 c\rceil$ bits).

The rebuilt zeros are $+0.0$ (a $-0.0$ entry comes back as $+0.0$).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ._memory_format import in_format
from ._packing import bit_width, index_dtype, pack_bits, unpack_bits

#: The version of the extra-state dict of :class:`Sparse`; a newer one is refused.
SPARSE_VERSION = 1
LAYOUTS = ("bitmap", "csr")


def _rows_cols(shape: tuple[int, ...]) -> tuple[int, int]:
    rows = shape[0] if shape else 1
    return rows, (math.prod(shape) // rows if rows else 0)


def bitmap_bytes(shape: tuple[int, ...]) -> int:
    """Bytes of the bitmap layout of a weight of ``shape``."""
    return math.ceil(math.prod(shape) / 8)


def csr_bytes(shape: tuple[int, ...], nnz: int) -> int:
    """Bytes of the CSR layout (packed row pointers and column indices) for ``nnz`` non-zeros."""
    rows, cols = _rows_cols(shape)
    return math.ceil((rows + 1) * bit_width(nnz + 1) / 8) + math.ceil(
        nnz * bit_width(max(cols, 1)) / 8
    )


def mask_bytes(shape: tuple[int, ...], nnz: int) -> int:
    """Bytes of the smaller layout (the one :func:`encode_positions` picks)."""
    return min(bitmap_bytes(shape), csr_bytes(shape, nnz))


def nonzero_mask(w: Tensor) -> Tensor:
    """The mask of the non-zero entries ($-0.0$ and $+0.0$ are both zero)."""
    return w.detach() != 0


def encode_positions(positions: Tensor, shape: tuple[int, ...]) -> dict[str, Any]:
    """The packed layout (bitmap or csr, the smaller; bitmap on a tie) of sorted flat positions."""
    n, nnz = math.prod(shape), positions.numel()
    pos = positions.long().cpu()
    if bitmap_bytes(shape) <= csr_bytes(shape, nnz):
        mask = torch.zeros(n, dtype=torch.uint8)
        mask[pos] = 1
        return {"layout": "bitmap", "bitmap": pack_bits(mask, 1)}
    rows, cols = _rows_cols(shape)
    indptr = torch.zeros(rows + 1, dtype=torch.int64)
    indptr[1:] = torch.bincount(pos // cols, minlength=rows).cumsum(0)
    return {
        "layout": "csr",
        "indptr": pack_bits(indptr, bit_width(nnz + 1)),
        "indices": pack_bits(pos % cols, bit_width(max(cols, 1))),
    }


def decode_positions(
    packed: dict[str, Any], shape: tuple[int, ...], nnz: int, device: Any = None
) -> Tensor:
    """The sorted flat positions (int32/int64) of a layout from :func:`encode_positions`.

    Raises ``ValueError`` when the layout is unknown, a packed tensor has the wrong length, or it
    does not describe ``nnz`` distinct positions inside ``shape``.
    """
    n = math.prod(shape)
    layout = packed.get("layout")
    if layout == "bitmap":
        mask = unpack_bits(_uint8(packed, "bitmap"), 1, n)
        pos = torch.nonzero(mask).reshape(-1)
        if pos.numel() != nnz:
            raise ValueError(f"the bitmap marks {pos.numel()} non-zeros, expected {nnz}")
    elif layout == "csr":
        rows, cols = _rows_cols(shape)
        indptr = unpack_bits(_uint8(packed, "indptr"), bit_width(nnz + 1), rows + 1)
        indices = unpack_bits(_uint8(packed, "indices"), bit_width(max(cols, 1)), nnz)
        counts = indptr.diff()
        if int(indptr[0]) != 0 or int(indptr[-1]) != nnz or bool((counts < 0).any()):
            raise ValueError(f"the csr row pointers do not split {nnz} non-zeros into {rows} rows")
        if bool((indices >= cols).any()):
            raise ValueError(f"the csr column indices are not all < {cols}")
        row = torch.repeat_interleave(torch.arange(rows), counts)
        pos = row * cols + indices
        if nnz > 1 and not bool((pos.diff() > 0).all()):
            raise ValueError("the csr column indices are not increasing within each row")
    else:
        raise ValueError(f"unknown sparse layout {layout!r}; expected one of {LAYOUTS}")
    return pos.to(device=device, dtype=index_dtype(n))


def _uint8(packed: dict[str, Any], key: str) -> Tensor:
    t = packed.get(key)
    if not isinstance(t, Tensor) or t.dtype != torch.uint8:
        raise ValueError(f"the sparse layout needs a uint8 tensor {key!r}")
    return t.cpu()


class Sparse(nn.Module):
    r"""Parametrization: the non-zero values (or a codebook) to the weight, zeros elsewhere.

    The parametrized ``original`` is the $(z,)$ vector of non-zero values, or the $(K,)$ codebook
    when ``labels`` is given (each non-zero is ``codebook[label]``).

    Args:
        shape: The weight's shape.
        positions: The sorted flat positions of the non-zeros.
        labels: The codebook label of each non-zero, or ``None``.
        num_values: $K$, the codebook size (with ``labels``).
        memory_format: The memory format of the built weight (``channels_last`` for a
            ``channels_last`` weight).
    """

    positions: Tensor
    labels: Tensor | None

    def __init__(
        self,
        shape: tuple[int, ...],
        positions: Tensor,
        labels: Tensor | None = None,
        num_values: int | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        super().__init__()
        self.memory_format = memory_format
        self.shape = tuple(shape)
        self.numel = math.prod(self.shape)
        self.nnz = positions.numel()
        self.num_values = num_values
        self.register_buffer("positions", positions.to(index_dtype(self.numel)), persistent=False)
        if labels is not None and num_values is None:
            raise ValueError("labels need num_values")
        lab = None if labels is None else labels.to(index_dtype(num_values or 1))
        self.register_buffer("labels", lab, persistent=False)

    def forward(self, values: Tensor) -> Tensor:
        nz = values if self.labels is None else values[self.labels]
        flat = values.new_zeros(self.numel).index_put((self.positions,), nz)
        return in_format(flat.reshape(self.shape), self.memory_format)

    @torch.no_grad()
    def right_inverse(self, weight: Tensor) -> Tensor:
        """The stored values of ``weight``: its entries at the positions (codebook: their means)."""
        if tuple(weight.shape) != self.shape:
            raise ValueError(f"expected a weight of shape {self.shape}, got {tuple(weight.shape)}")
        nz = weight.reshape(-1)[self.positions]
        if self.labels is None:
            return nz.clone()
        k = self.num_values or 0
        lab = self.labels.long()
        sums = weight.new_zeros(k).index_add_(0, lab, nz)
        return sums / torch.bincount(lab, minlength=k).clamp_min(1).to(weight.dtype)

    def layout(self) -> dict[str, Any]:
        """The packed description: shape, nnz, codebook size, layout and its packed tensors."""
        state: dict[str, Any] = {
            "shape": list(self.shape),
            "nnz": self.nnz,
            "num_values": self.num_values,
            **encode_positions(self.positions, self.shape),
        }
        if self.labels is not None:
            state["labels"] = pack_bits(self.labels.cpu(), bit_width(self.num_values or 1))
        return state

    def get_extra_state(self) -> dict[str, Any]:
        return {"version": SPARSE_VERSION, **self.layout()}

    def set_extra_state(self, state: Any) -> None:
        positions, labels, k = from_layout(state, self.shape, self.positions.device)
        self.positions, self.labels, self.nnz, self.num_values = (
            positions,
            labels,
            len(positions),
            k,
        )

    def extra_repr(self) -> str:
        tied = "" if self.labels is None else f", num_values={self.num_values}"
        return f"shape={self.shape}, nnz={self.nnz}{tied}"


def from_layout(
    state: Any, shape: tuple[int, ...], device: Any = None
) -> tuple[Tensor, Tensor | None, int | None]:
    """``(positions, labels, num_values)`` of a packed description, validated against ``shape``."""
    if not isinstance(state, dict) or not {"shape", "nnz", "layout"} <= set(state):
        raise ValueError("a sparse state must be a dict with 'shape', 'nnz' and 'layout'")
    if state.get("version", SPARSE_VERSION) > SPARSE_VERSION:
        raise ValueError(
            f"the sparse state has version {state['version']}, newer than this weightshare's "
            f"{SPARSE_VERSION}: upgrade weightshare to load it"
        )
    if tuple(state["shape"]) != tuple(shape):
        raise ValueError(
            f"the sparse state is for shape {tuple(state['shape'])}, the weight has shape "
            f"{tuple(shape)}"
        )
    nnz, k = int(state["nnz"]), state.get("num_values")
    if not 0 <= nnz <= math.prod(shape):
        raise ValueError(f"the sparse state has {nnz} non-zeros for {math.prod(shape)} entries")
    positions = decode_positions(state, tuple(shape), nnz, device)
    labels = None
    if k is not None:
        k = int(k)
        if k < 1:
            raise ValueError(f"the sparse codebook must hold >= 1 value, got {k}")
        labels = unpack_bits(_uint8(state, "labels"), bit_width(k), nnz, dtype=index_dtype(k))
        bad = int((labels >= k).sum())
        if bad:
            raise ValueError(f"the sparse labels have {bad} entries outside [0, {k})")
        labels = labels.to(device)
    return positions, labels, k
