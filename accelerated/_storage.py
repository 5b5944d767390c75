"""``ws.storage``: bytes per tensor, dense against as stored (spec page *Storage*, STORE-11).

``python -m weightshare storage FILE`` prints the table of a file written by ``ws.save``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

__all__ = ["Storage", "TensorStorage", "main", "storage"]


@dataclass(frozen=True)
class TensorStorage:
    """One logical tensor: its structure and its bytes.

    Attributes:
        name: The tensor's name (``0.weight``).
        kind: Its structure (``dense``, ``tied``, ``hashed``, ``symmetric``, ``factorized``,
            ``sparse``).
        numel: Its number of entries (the virtual weight's, for a shared one).
        dense_bytes: ``4 * numel``, the dense float32 tensor.
        memory_bytes: Bytes resident in memory (parameters and buffers, tables included);
            ``None`` when read from a file.
        file_bytes: Bytes of its tensors in the file.
    """

    name: str
    kind: str
    numel: int
    dense_bytes: int
    memory_bytes: int | None
    file_bytes: int

    @property
    def ratio(self) -> float:
        """``dense_bytes / file_bytes`` (inf for an empty file part)."""
        return self.dense_bytes / self.file_bytes if self.file_bytes else math.inf


@dataclass(frozen=True)
class Storage:
    """The storage table of a model or file; ``str()`` renders it as a Markdown table.

    Attributes:
        tensors: One row per logical tensor.
        header_bytes: The file's header (safetensors' JSON, with the weightshare metadata).
        cache_bytes: The process-wide cache's copies of the model's symmetric index tables
            (each table once; ``0`` for a file), counted in ``memory_bytes``.
    """

    tensors: tuple[TensorStorage, ...]
    header_bytes: int
    cache_bytes: int = 0

    @property
    def dense_bytes(self) -> int:
        """All tensors as dense float32."""
        return sum(t.dense_bytes for t in self.tensors)

    @property
    def memory_bytes(self) -> int | None:
        """All resident bytes, cached tables included (``None`` for a file)."""
        rows = [t.memory_bytes for t in self.tensors]
        if any(r is None for r in rows):
            return None
        return sum(r for r in rows if r is not None) + self.cache_bytes

    @property
    def file_bytes(self) -> int:
        """The file's size: every tensor plus the header."""
        return sum(t.file_bytes for t in self.tensors) + self.header_bytes

    @property
    def ratio(self) -> float:
        """``dense_bytes / file_bytes``."""
        return self.dense_bytes / self.file_bytes

    def __str__(self) -> str:
        def mem(b: int | None) -> str:
            return "—" if b is None else f"{b:,}"

        lines = [
            "| tensor | structure | entries | dense float32 B | memory B | file B | ratio |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for t in self.tensors:
            lines.append(
                f"| `{t.name}` | {t.kind} | {t.numel:,} | {t.dense_bytes:,} | "
                f"{mem(t.memory_bytes)} | {t.file_bytes:,} | {t.ratio:.2f}× |"
            )
        lines.append(f"| (header) | | | | | {self.header_bytes:,} | |")
        if self.cache_bytes:
            lines.append(f"| (cached tables) | | | | {self.cache_bytes:,} | | |")
        lines.append(
            f"| **total** | | {sum(t.numel for t in self.tensors):,} | {self.dense_bytes:,} | "
            f"{mem(self.memory_bytes)} | {self.file_bytes:,} | {self.ratio:.2f}× |"
        )
        return "\n".join(lines)


def storage(source: nn.Module | str | os.PathLike[str]) -> Storage:
    """The bytes of every tensor of a model (or of a file written by ``ws.save``).

    For a model, the file bytes are those ``ws.save`` would write (the model is serialized in
    memory to count them) and the memory bytes are the resident parameters and buffers; for a file
    only the file bytes are known. The process-wide cache's copies of the model's symmetric index
    tables are counted once, in ``cache_bytes`` and the total resident bytes.

    Args:
        source: A model, or the path of a ``.safetensors`` file written by ``ws.save``.

    Returns:
        A :class:`Storage` table.
    """
    from ._file_checks import group
    from ._serialize import METADATA_KEY, collect, read

    if isinstance(source, nn.Module):
        from safetensors.torch import save as to_bytes

        from ._structures import entries
        from ._symmetry import Symmetry, cached_bytes_of

        header, tensors = collect(source)
        metas = header["tensors"]
        size = len(to_bytes(tensors, metadata={METADATA_KEY: json.dumps(header)}))
        found = entries(source)
        memory = {e.name: _resident(e.parts().values()) for e in found}
        keys = [e.structure.table_key for e in found if isinstance(e.structure, Symmetry)]
        cached = cached_bytes_of(k for k in keys if k is not None)
    else:
        header, tensors = read(source, who="ws.storage")  # checked: every tensor described
        metas = header["tensors"]
        size = os.path.getsize(source)
        memory, cached = {}, 0
    groups, _ = group(metas, tensors)
    parts = {
        name: sum(t.numel() * t.element_size() for t in group_.values())
        for name, group_ in groups.items()
    }
    rows = tuple(
        TensorStorage(
            name,
            meta["kind"],
            math.prod(meta["shape"]),
            4 * math.prod(meta["shape"]),
            memory.get(name),
            parts[name],
        )
        for name, meta in metas.items()
    )
    return Storage(rows, size - sum(r.file_bytes for r in rows), cached)


def _resident(tensors: Iterable[Tensor]) -> int:
    seen: set[int] = set()
    total = 0
    for t in tensors:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
    return total


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m weightshare storage FILE [FILE ...]``: print each file's storage table."""
    parser = argparse.ArgumentParser(
        prog="python -m weightshare storage",
        description="Bytes per tensor of files written by ws.save: dense float32 against stored.",
    )
    parser.add_argument("files", nargs="+", help=".safetensors files written by ws.save")
    args = parser.parse_args(argv)
    for i, path in enumerate(args.files):
        try:
            table = storage(path)
        except (OSError, ValueError) as err:  # one line, whatever the file holds (STORE-16)
            print("error: " + " ".join(str(err).split()), file=sys.stderr)
            return 1
        print(("\n" if i else "") + f"{path}\n\n{table}")
    return 0
