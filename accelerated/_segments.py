r"""Ragged batches: vectors of different lengths laid end to end in one flat tensor (segments).

A :class:`Segments` describes consecutive segments of a flat ``(N,)`` tensor by their lengths,
given in run-length form (``count`` segments of ``length`` values, for each row set of a ragged
batch). Its small per-segment tensors (lengths, offsets) are made once per layout and device and
cached, so that a pass over the same shapes (the attach step, a CUDA graph capture) never copies
from the host again. Everything else is torch ops on the values' device, with no host read.

:func:`sort_segments` sorts every segment within its own span: one flat stable ``torch.sort`` of
all ``N`` values, then a stable partition by segment id, which is a second stable sort of the
sorted values' segment ids (int16/int32 keys where they fit, so a radix sort runs over a few bits
only) and two gathers. Cost: two sorts and three gathers of ``N`` elements, and about
``4 · itemsize + 26`` bytes of temporaries per element; no padding, whatever the lengths.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

#: ``(count, length)`` pairs: ``count`` consecutive segments of ``length`` values each
Runs = tuple[tuple[int, int], ...]


def _key_dtype(segments: int) -> torch.dtype:
    """The narrowest integer dtype that holds segment ids ``0..segments-1`` (sort keys)."""
    if segments <= 1 << 15:
        return torch.int16
    if segments <= 1 << 31:
        return torch.int32
    return torch.int64


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor copied to ``device`` without blocking (through pinned memory on CUDA, so
    the copy is no synchronization, TRAIN-20)."""
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


class Segments:
    """The layout of consecutive segments of a flat tensor, with its per-segment device tensors.

    Args:
        runs: ``(count, length)`` pairs (``length >= 1``), in the flat order.
        device: where the per-segment tensors live.
    """

    def __init__(self, runs: Runs, device: torch.device) -> None:
        if any(c < 0 or d < 1 for c, d in runs):
            raise ValueError(f"segments need counts >= 0 and lengths >= 1, got {runs}")
        self.runs = runs
        self.device = device
        #: the number of segments S and of values N
        self.count = sum(c for c, _ in runs)
        self.total = sum(c * d for c, d in runs)
        host = torch.tensor([d for _, d in runs], dtype=torch.int64)
        reps = torch.tensor([c for c, _ in runs], dtype=torch.int64)
        lengths = host.repeat_interleave(reps, output_size=self.count)
        #: ``(S,)`` int64: each segment's length and the flat index of its first value
        self.lengths = to_device(lengths, device)
        self.offsets = to_device(lengths.cumsum(0) - lengths, device)

    def ids(self) -> torch.Tensor:
        """``(N,)`` int64: the segment of every flat position."""
        every = torch.arange(self.count, device=self.device)
        return every.repeat_interleave(self.lengths, output_size=self.total)

    def positions(self, ids: torch.Tensor) -> torch.Tensor:
        """``(N,)`` int64: every value's index within its own segment (``ids`` from :meth:`ids`)."""
        return torch.arange(self.total, device=self.device) - self.offsets[ids]

    def ramp(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        r"""``(N,)`` float64 ramp of each segment's own length $d$: $(2k - d + 1)/(d - 1)$ for
        $k = 0..d-1$ (0 for $d = 1$), the coefficients of ``_rows.ramp`` per segment."""
        d = self.lengths.to(torch.float64)[ids]
        return (2.0 * positions.to(torch.float64) - (d - 1.0)) / (d - 1.0).clamp_min(1.0)

    def spread(self, per_segment: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """``(N,)``: the ``(S,)`` tensor ``per_segment`` broadcast to every value of its segment."""
        return per_segment.reshape(self.count)[ids]

    def first_last(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(S,)`` each: the first and the last value of every segment of the flat ``values``
        (after :func:`sort_segments`: each segment's minimum and maximum)."""
        return values[self.offsets], values[self.offsets + self.lengths - 1]

    def sort(
        self, values: torch.Tensor, ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`sort_segments` on this layout (``ids`` from :meth:`ids`, made if not given)."""
        if values.shape != (self.total,):
            raise ValueError(
                f"sort_segments expects a flat tensor of {self.total} values for segments of "
                f"total length {self.total}, got shape {tuple(values.shape)}"
            )
        if self.total == 0:
            return values.clone(), torch.zeros(0, dtype=torch.int64, device=values.device)
        xs, order = torch.sort(values, stable=True)
        if len(self.runs) == 1 and self.runs[0][0] == 1:  # one segment: nothing to partition
            return xs, order
        if ids is None:
            ids = self.ids()
        keys = ids.to(_key_dtype(self.count))[order]
        _, part = torch.sort(keys, stable=True)
        return xs[part], order[part]


@functools.lru_cache(maxsize=64)
def layout(runs: Runs, device: torch.device) -> Segments:
    """The cached :class:`Segments` of ``runs`` on ``device`` (the small per-segment tensors are
    copied to the device once per layout)."""
    return Segments(runs, device)


def runs_of(lengths: Sequence[int]) -> Runs:
    """Run-length ``(count, length)`` pairs of a sequence of segment lengths."""
    out: list[tuple[int, int]] = []
    for d in lengths:
        if out and out[-1][1] == d:
            out[-1] = (out[-1][0] + 1, d)
        else:
            out.append((1, int(d)))
    return tuple(out)


def sort_segments(
    values: torch.Tensor, lengths: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each segment of a flat tensor within its own span.

    Args:
        values: a ``(N,)`` tensor (any dtype ``torch.sort`` takes, any device).
        lengths: the segments' lengths (each ``>= 1``, summing to ``N``), in order.

    Returns:
        ``(sorted values, permutation)``: the int64 ``(N,)`` permutation ``perm`` has
        ``sorted == values[perm]``; segment ``i`` keeps its span, sorted ascending, with ties in
        their original order (stable). One flat stable sort plus a stable partition by segment id
        (module docstring); no host read.
    """
    if values.dim() != 1:
        raise ValueError(f"sort_segments expects a 1-D tensor, got shape {tuple(values.shape)}")
    if sum(lengths) != values.shape[0]:
        raise ValueError(
            f"sort_segments: the lengths sum to {sum(lengths)} but values has {values.shape[0]}"
        )
    return layout(runs_of(lengths), values.device).sort(values)
