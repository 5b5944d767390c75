"""Entropy coding benchmark: LeNet-300-100's file, coded against fixed-width (spec STORE-24 ..).

``python -m conformance.benchmarks.coding [--write]`` builds LeNet-300-100 (784-300-100-10) with
every weight compressed sparse-tied at about 8 % non-zeros drawn from a peaked 32-value codebook,
saves it with and without coding, and measures in one run on one torch thread:

1. per weight, the bytes of its labels and positions fixed-width (packed labels, bitmap or CSR)
   and coded (the streams and their code models), against the empirical entropy of its labels and
   gaps; and both files' sizes;
2. the median and the fastest time of ``ws.load`` of each file into a freshly built plain model
   (the two files loaded alternately, the model built outside the timed part).

Byte counts are deterministic; times are medians on a shared machine (the ratio is what to read).
``--write`` writes ``spec/_snippets/coding.md``, included by ``spec/storage.md``.
"""

from __future__ import annotations

import itertools
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open

import weightshare as ws

from ._stamp import snippet_main

ROOT = Path(__file__).resolve().parents[2]
SNIPPET = ROOT / "spec" / "_snippets" / "coding.md"
SIZES = (784, 300, 100, 10)
DENSITY = 0.08
VALUES = 32


def plain() -> torch.nn.Sequential:
    """LeNet-300-100, plain (the model a file is loaded into)."""
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(SIZES)):
        layers += [torch.nn.Linear(a, b)] + ([torch.nn.ReLU()] if i < len(SIZES) - 2 else [])
    return torch.nn.Sequential(*layers)


def lenet(seed: int = 0) -> torch.nn.Sequential:
    """LeNet-300-100 compressed sparse-tied: ~8 % non-zeros from a peaked 32-value codebook."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = plain()
    book = torch.randn(VALUES, generator=g)
    probs = torch.softmax(torch.linspace(3, -3, VALUES), 0)  # the most common value 400x the rarest
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                n = layer.weight.numel()
                labels = torch.multinomial(probs, n, replacement=True, generator=g)
                mask = torch.rand(n, generator=g) < DENSITY
                layer.weight.copy_((book[labels] * mask).reshape(layer.weight.shape))
    return ws.compress(model)


def _entropy_bytes(values: torch.Tensor) -> float:
    counts = torch.unique(values, return_counts=True)[1].double()
    return float(-(counts * torch.log2(counts / counts.sum())).sum()) / 8


def _parts(path: Path) -> dict[str, int]:
    with safe_open(path, "pt") as f:
        return {
            k: f.get_slice(k).get_shape()[0] if f.get_slice(k).get_shape() else 1 for k in f.keys()
        }


def size_rows(
    model: torch.nn.Module, fixed: Path, coded: Path
) -> list[tuple[str, int, int, int, float]]:
    """(weight, non-zeros, fixed-width bytes, coded bytes, entropy bytes) of labels + positions."""
    from weightshare._coded import gaps_of

    fixed_parts, coded_parts = _parts(fixed), _parts(coded)
    rows = []
    for name, layer in model.named_children():
        if not isinstance(layer, torch.nn.Linear):
            continue
        s = layer.parametrizations.weight[0]
        key = f"{name}.weight."
        structural = ("labels", "bitmap", "indptr", "indices", "gaps")
        f_bytes = sum(
            n
            for k, n in fixed_parts.items()
            if k.startswith(key) and k[len(key) :].startswith(structural)
        )
        c_bytes = sum(
            n
            for k, n in coded_parts.items()
            if k.startswith(key) and k[len(key) :].startswith(structural)
        )
        entropy = _entropy_bytes(gaps_of(s.positions))
        if s.labels is not None:
            entropy += _entropy_bytes(s.labels)
        rows.append(
            (f"`{name}.weight` {tuple(layer.weight.shape)}", s.nnz, f_bytes, c_bytes, entropy)
        )
    return rows


def load_times(paths: list[Path], rounds: int = 60) -> list[tuple[float, float]]:
    """(median, fastest) seconds of ``ws.load`` of each file into a fresh plain model (the files
    loaded alternately)."""
    times: list[list[float]] = [[] for _ in paths]
    for r in range(rounds + 3):
        for i, path in enumerate(paths):
            model = plain()
            start = time.perf_counter()
            ws.load(model, path)
            if r >= 3:  # warm-up
                times[i].append(time.perf_counter() - start)
    return [(statistics.median(t), min(t)) for t in times]


def render(
    rows: list, files: tuple[int, int], times: list[tuple[float, float]], measured: str = ""
) -> str:
    out = [
        *([measured] if measured else []),
        "| weight | non-zeros | labels + positions, fixed-width B | coded B | entropy B | "
        "coded / entropy |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, nnz, f_bytes, c_bytes, entropy in rows:
        out.append(
            f"| {name} | {nnz:,} | {f_bytes:,} | {c_bytes:,} | {math.ceil(entropy):,} | "
            f"{c_bytes / entropy:.2f} |"
        )
    f_total, c_total = sum(r[2] for r in rows), sum(r[3] for r in rows)
    e_total = sum(r[4] for r in rows)
    out.append(
        f"| **all** | {sum(r[1] for r in rows):,} | {f_total:,} | {c_total:,} | "
        f"{math.ceil(e_total):,} | {c_total / e_total:.2f} |"
    )
    (fixed_t, fixed_min), (coded_t, coded_min) = times
    out += [
        "",
        "| LeNet-300-100 file | bytes | `ws.load`, median | fastest |",
        "| --- | ---: | ---: | ---: |",
        f"| fixed-width (`coding=False`, version 1) | {files[0]:,} | {fixed_t * 1e3:.2f} ms | "
        f"{fixed_min * 1e3:.2f} ms |",
        f"| coded (version 2) | {files[1]:,} | {coded_t * 1e3:.2f} ms | {coded_min * 1e3:.2f} ms |",
        f"| coded / fixed-width | {files[1] / files[0]:.3f} | {coded_t / fixed_t:.2f}× | "
        f"{coded_min / fixed_min:.2f}× |",
    ]
    return "\n".join(out) + "\n"


def measure(measured: str = "") -> str:
    """The tables: sizes and load times of LeNet-300-100 saved with and without coding."""
    model = lenet()
    with tempfile.TemporaryDirectory() as d:
        fixed, coded = Path(d) / "fixed.safetensors", Path(d) / "coded.safetensors"
        ws.save(model, fixed, coding=False)
        ws.save(model, coded)
        rows = size_rows(model, fixed, coded)
        files = (fixed.stat().st_size, coded.stat().st_size)
        times = load_times([fixed, coded])
    return render(rows, files, times, measured)


def main(argv: list[str] | None = None) -> int:
    return snippet_main(__doc__ or "", SNIPPET, measure, argv)


if __name__ == "__main__":
    sys.exit(main())
