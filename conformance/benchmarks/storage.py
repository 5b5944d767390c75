"""Storage benchmark: bytes stored and resident, and the cost of the hashed tables' options.

``python -m conformance.benchmarks.storage [--write]`` measures, in one run and on one CPU thread:

1. the issue's table: each structure's ``state_dict`` tensor bytes and ``ws.save`` file bytes,
   against the dense ``nn.Linear`` / ``nn.Conv2d`` of the same shape measured in the same run,
   and against its free parameters;
2. the hashed tables' options (spec HASH-14): forward + backward time of ``HashedLinear(784, 300,
   14700)`` (batch 64) and ``HashedConv2d(64, 64, 3, 2304)`` (batch 8, 16×16) with the tables
   resident as int64 + int8, resident as int32 + int8 (the choice), or regenerated in every
   forward, as ratios to the dense layer's time (median of ``torch.utils.benchmark``).

Byte counts are deterministic; times are medians on a shared machine (the ratios are what to read).
``--write`` writes ``spec/_snippets/storage.md``, included by ``spec/storage.md``.
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils import benchmark

import weightshare as ws
from weightshare import hashing
from weightshare import nn as wnn

from ._stamp import snippet_main

ROOT = Path(__file__).resolve().parents[2]
SNIPPET = ROOT / "spec" / "_snippets" / "storage.md"


def state_bytes(m: torch.nn.Module) -> int:
    """Tensor bytes of ``m.state_dict()`` (tensors inside extra state included)."""
    total = 0
    for v in m.state_dict().values():
        items = v.values() if isinstance(v, dict) else [v]
        total += sum(t.numel() * t.element_size() for t in items if torch.is_tensor(t))
    return total


def pickle_bytes(m: torch.nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    return buf.tell()


def file_bytes(m: torch.nn.Module) -> int:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.safetensors"
        ws.save(m, path)
        return path.stat().st_size


def _tied(k: int) -> torch.nn.Module:
    lin = torch.nn.Linear(784, 300)
    with torch.no_grad():
        lin.weight.copy_(torch.arange(300 * 784).reshape(300, 784) % k * 1e-3)
    return ws.tie(lin)


def _factorized_compressed() -> torch.nn.Module:
    lin = ws.factorize(torch.nn.Linear(784, 300), depth=3)
    with torch.no_grad():  # 5% of the collapsed weights survive, as after a sparse DWF run
        lin.parametrizations.weight.original0.mul_(torch.rand(300, 784) < 0.05)
    return ws.compress(lin)


def table_rows() -> list[tuple[str, int, int, int, int, int, int]]:
    """(module, dense, free parameters, state_dict, torch.save, file, resident) in bytes."""
    torch.manual_seed(0)
    lin, conv = torch.nn.Linear(784, 300), torch.nn.Conv2d(64, 64, 3)
    sym_dense = torch.nn.Linear(300, 300)
    cases = [
        ("HashedLinear(784, 300, num_buckets=14,700)", lin, wnn.HashedLinear(784, 300, 14_700),
         (14_700 + 300) * 4),
        ("Linear(784, 300), 1 distinct value, ws.tie", lin, _tied(1), 4 + 300 * 4),
        ("Linear(784, 300), 16 distinct values, ws.tie", lin, _tied(16),
         16 * 4 + 300 * 784 * 4 // 8 + 300 * 4),
        ("HashedConv2d(64, 64, 3, 2,304)", conv, wnn.HashedConv2d(64, 64, 3, 2_304),
         (2_304 + 64) * 4),
        ("factorize(Linear(784, 300), depth=3), training", lin,
         ws.factorize(torch.nn.Linear(784, 300), depth=3), (3 * 784 * 300 + 300) * 4),
        ("the same, 5% non-zero, ws.compress", lin, None, 0),
        ("symmetric(Linear(300, 300))", sym_dense, ws.symmetric(torch.nn.Linear(300, 300)),
         (300 * 301 // 2 + 300) * 4),
        ("hashed(Linear(784, 300), num_buckets=14,700)", lin,
         hashing.hashed(torch.nn.Linear(784, 300), num_buckets=14_700), (14_700 + 300) * 4),
    ]  # fmt: skip
    rows = []
    for name, dense, m, free in cases:
        if m is None:
            m = _factorized_compressed()
            nnz = int((m.weight != 0).sum())
            free = nnz * 4 + 300 * 4  # non-zero values + bias (the mask is extra, bitmap/CSR)
        resident = ws.storage(m).memory_bytes or 0
        sizes = (state_bytes(m), pickle_bytes(m), file_bytes(m), resident)
        rows.append((name, state_bytes(dense), free, *sizes))
    return rows


def _median(stmt, **globs) -> float:  # type: ignore[no-untyped-def]
    t = benchmark.Timer(stmt="f()", globals={"f": stmt}, num_threads=1)
    return t.blocked_autorange(min_run_time=0.5).median


def forward_rows() -> list[tuple[str, float, float, float, float]]:
    """(layer, dense, int64 tables, int32 tables, regenerated) seconds of forward + backward."""
    torch.manual_seed(0)
    cases = [
        ("HashedLinear(784, 300, 14,700), batch 64", (300, 784), 14_700, torch.randn(64, 784),
         lambda x, w: F.linear(x, w)),
        ("HashedConv2d(64, 64, 3, 2,304), 8×64×16×16", (64, 64, 3, 3), 2_304,
         torch.randn(8, 64, 16, 16), lambda x, w: F.conv2d(x, w, padding=1)),
    ]  # fmt: skip
    rows = []
    for name, shape, k, x, op in cases:
        values = torch.randn(k, requires_grad=True)
        dense = torch.randn(shape, requires_grad=True)
        i64, sign = hashing.uniform(shape, k, seed=1), hashing.sign(shape, seed=1)
        i32 = i64.int()

        def gathered(index, sign=sign, values=values, x=x, op=op):  # type: ignore[no-untyped-def]
            op(x, values[index] * sign.to(values.dtype)).sum().backward()

        def regenerated(shape=shape, k=k):  # type: ignore[no-untyped-def]
            gathered(hashing.uniform(shape, k, seed=1))

        times = [
            _median(lambda dense=dense, x=x, op=op: op(x, dense).sum().backward()),
            _median(lambda i=i64: gathered(i)),
            _median(lambda i=i32: gathered(i)),
            _median(regenerated),
        ]
        rows.append((name, *times))
    return rows


def render(table: list, forward: list, measured: str = "") -> str:
    """The storage tables, after ``measured`` (the :func:`._stamp.stamp` line, if given)."""
    out = [
        *([measured] if measured else []),
        "| module | dense layer B | free parameters B | `state_dict` B | `torch.save` B | "
        "`ws.save` file B | file / dense | file / free | resident B |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, dense, free, sd, pk, fb, resident in table:
        out.append(
            f"| {name} | {dense:,} | {free:,} | {sd:,} | {pk:,} | {fb:,} | "
            f"{fb / dense:.3f} | {fb / free:.3f} | {resident:,} |"
        )
    out += [
        "",
        "| layer, forward + backward | dense | tables int64 + int8 (9 B/weight) | "
        "int32 + int8 (5 B/weight, the choice) | regenerated each forward (0 B/weight) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, dense, t64, t32, regen in forward:
        out.append(
            f"| {name} | 1 ({dense * 1e3:.2f} ms) | {t64 / dense:.2f}× | {t32 / dense:.2f}× | "
            f"{regen / dense:.2f}× |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    return snippet_main(
        __doc__ or "",
        SNIPPET,
        lambda measured: render(table_rows(), forward_rows(), measured),
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
