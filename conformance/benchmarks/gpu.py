"""GPU benchmark of the prox: "triton" against ``torch.sort`` and the torch-op "hull"/"search".

``python -m conformance.benchmarks.gpu --out DIR`` (part of ``make gpu-check``) times, on one CUDA
device and in one run: single vectors of d = 2^16..2^26, a 4096 x 4096 batch of rows and a
``prox_many`` over every conv/linear weight of a ResNet-50, float32 and float64, random and chain
inputs; and the time per stage of one prox (sort, partition for ragged lists, tiles, merges,
slopes; ``stage_calls``, ``ragged_stage_calls``). Times are medians of CUDA-event intervals
after a warm-up; every ratio divides by a baseline measured in the same run. It writes
``gpu_bench.json`` and ``gpu_bench.md`` to DIR.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

SIZES = tuple(2**k for k in (16, 18, 20, 22, 24, 26))
#: the torch-op kernels are launch-bound: timed up to this size only
TORCH_OP_MAX = 2**20
BATCH = (4096, 4096)
LAM = 1.0


def resnet50_weight_shapes(scale: int = 1) -> list[tuple[int, ...]]:
    """Shapes of every conv and linear weight of torchvision's ResNet-50 (no torchvision needed);
    ``scale > 1`` divides every channel count (not the 3 input channels) and the classes by it,
    for CPU-sized ragged lists of the same spread of lengths."""
    if scale > 1:
        return [
            (s[0] // scale, s[1] if s[1] == 3 else s[1] // scale, *s[2:])
            for s in resnet50_weight_shapes()
        ]
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7)]
    inplanes = 64
    for planes, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            shapes += [(planes, inplanes, 1, 1), (planes, planes, 3, 3), (planes * 4, planes, 1, 1)]
            if b == 0:
                shapes.append((planes * 4, inplanes, 1, 1))  # downsample
            inplanes = planes * 4
    shapes.append((1000, 2048))
    return shapes


def cuda_ms(fn: Callable[[], object], budget_s: float = 0.4, max_reps: int = 50) -> float:
    """Median milliseconds of ``fn`` between CUDA events, after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    times: list[float] = []
    spent = time.perf_counter()
    while len(times) < max_reps:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
        if len(times) >= 3 and time.perf_counter() - spent > budget_s:
            break
    return statistics.median(times)


def _input(kind: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    from conformance.strategies import chain

    numel = math.prod(shape)
    if kind == "chain":
        v = np.random.default_rng(0).permutation(chain(numel, LAM))
        return torch.from_numpy(v).to("cuda", dtype).view(shape)
    g = torch.Generator(device="cuda").manual_seed(0)
    return torch.randn(shape, generator=g, device="cuda", dtype=torch.float64).to(dtype)


Record = Callable[[str, torch.dtype, str, str, float], None]


def _batch(record: Record, dtype: torch.dtype) -> None:
    import weightshare as ws

    x = _input("random", BATCH, dtype)
    name = f"{BATCH[0]}x{BATCH[1]}"
    record(name, dtype, "random", "sort", cuda_ms(lambda: torch.sort(x, dim=1)))
    for m in ("triton", "hull"):
        ms = cuda_ms(lambda m=m: ws.prox(x, LAM, dim=1, method=m), budget_s=0.2)
        record(name, dtype, "random", m, ms)


def _resnet50(record: Record, dtype: torch.dtype) -> None:
    import weightshare as ws

    weights = [_input("random", s, dtype) for s in resnet50_weight_shapes()]
    flat = torch.cat([w.reshape(-1) for w in weights])
    ms = cuda_ms(lambda: torch.sort(flat))  # the goal's baseline: one sort of the concatenation
    record("resnet50", dtype, "random", "sort", ms)
    for m in ("triton", "hull"):
        ms = cuda_ms(lambda m=m: ws.prox_many(weights, 1e-3, method=m), budget_s=0.2)
        record("resnet50", dtype, "random", m, ms)


def _vector(record: Record, dtype: torch.dtype, kind: str, d: int) -> None:
    import weightshare as ws

    v = _input(kind, (d,), dtype)
    case = f"d=2^{int(math.log2(d))}"
    record(case, dtype, kind, "sort", cuda_ms(lambda: torch.sort(v)))
    record(case, dtype, kind, "triton", cuda_ms(lambda: ws.prox(v, LAM, method="triton")))
    if d <= TORCH_OP_MAX:
        for m in ("hull", "search"):
            ms = cuda_ms(lambda m=m: ws.prox(v, LAM, method=m), budget_s=0.2)
            record(case, dtype, kind, m, ms)


#: the stages of one "triton" prox, in pipeline order ("partition" only for ragged lists)
STAGES = ("sort", "partition", "tiles", "merges", "slopes")


def stage_calls(
    x: torch.Tensor, lam: float, out: torch.Tensor | None = None
) -> dict[str, Callable[[], object]]:
    """One callable per stage of the "triton" prox of the ``(B, d)`` rows ``x``, each running
    that stage alone on the inputs the stages before it produced (for timing); the slopes stage
    writes the prox into ``out`` (a new buffer if None)."""
    from weightshare._isotonic import triton_hull as th

    lam_t = torch.full((1,), lam, dtype=torch.float64, device=x.device)
    xs, perm = torch.sort(x, dim=1)
    shift = xs.mean(dim=1, dtype=torch.float64)
    tiles = th._tiles(xs, lam_t, shift, True)
    info = th._levels(tiles, x.shape[1])
    out = torch.empty_like(x) if out is None else out
    return {
        "sort": lambda: torch.sort(x, dim=1),
        "tiles": lambda: th._tiles(xs, lam_t, shift, True),
        "merges": lambda: th._levels(tiles, x.shape[1]),
        "slopes": lambda: th._slopes(tiles, info, shift, out, perm, False),
    }


def ragged_stage_calls(
    tensors: list[torch.Tensor], lam: float, out: torch.Tensor | None = None
) -> dict[str, Callable[[], object]]:
    """As :func:`stage_calls` for the ragged pass of ``prox_many`` over ``tensors`` (each its own
    vector): the flat stable sort, the stable partition by segment id (a stable sort of the
    sorted values' int32 ids and two gathers), tiles, merges and slopes; the slopes stage writes
    the concatenated prox into ``out`` (a new flat buffer if None)."""
    from weightshare import _segments as segments
    from weightshare._isotonic import triton_hull as th

    device = tensors[0].device
    runs = tuple((1, t.numel()) for t in tensors)
    seg = segments.layout(runs, device)
    geo = th._layout(runs, device, th.TUNING)
    flat = torch.cat([t.reshape(-1) for t in tensors])
    ids = seg.ids()
    _, order = torch.sort(flat, stable=True)
    keys = ids.to(torch.int32)[order]

    def partition() -> tuple[torch.Tensor, torch.Tensor]:
        _, part = torch.sort(keys, stable=True)
        moved = order[part]
        return flat[moved], moved

    xs, perm = seg.sort(flat, ids)
    sums = torch.zeros(seg.count, dtype=torch.float64, device=device)
    shift = sums.index_add_(0, ids, xs.to(torch.float64)).div_(seg.lengths)
    lam_t = torch.full((1,), lam, dtype=torch.float64, device=device)
    tiles = th._tiles(xs, lam_t, shift, True, geo)
    info = th._levels(tiles, 0, geo)
    out = torch.empty_like(flat) if out is None else out
    return {
        "sort": lambda: torch.sort(flat, stable=True),
        "partition": partition,
        "tiles": lambda: th._tiles(xs, lam_t, shift, True, geo),
        "merges": lambda: th._levels(tiles, 0, geo),
        "slopes": lambda: th._slopes(tiles, info, shift, out, perm, False, geo, ids),
    }


def _ragged_stages(record: Record, dtype: torch.dtype) -> None:
    weights = [_input("random", s, dtype) for s in resnet50_weight_shapes()]
    for what, fn in ragged_stage_calls(weights, 1e-3).items():
        record("stages resnet50", dtype, "random", what, cuda_ms(fn, budget_s=0.2))


def _stages(record: Record, dtype: torch.dtype, d: int) -> None:
    x = _input("random", (1, d), dtype)
    case = f"stages d=2^{int(math.log2(d))}"
    for what, fn in stage_calls(x, LAM).items():
        record(case, dtype, "random", what, cuda_ms(fn, budget_s=0.2))


def run(quick: bool = False) -> list[dict]:
    """Every case, in one run; returns the records (milliseconds, memory ratio)."""
    records: list[dict] = []

    def record(case: str, dtype: torch.dtype, kind: str, what: str, ms: float) -> None:
        records.append({"case": case, "dtype": str(dtype), "input": kind, "what": what, "ms": ms})
        print(f"{case:>12} {dtype!s:>14} {kind:>6} {what:>8}: {ms:9.3f} ms", flush=True)

    with torch.no_grad():
        for dtype in (torch.float32, torch.float64):
            for kind in ("random", "chain"):
                for d in SIZES[:3] if quick else SIZES:
                    _vector(record, dtype, kind, d)
            for d in SIZES[:2] if quick else SIZES[::2]:
                _stages(record, dtype, d)
            _ragged_stages(record, dtype)
            _batch(record, dtype)
            _resnet50(record, dtype)
        records.append(_memory(2**20 if quick else 2**26))
    return records


def _memory(d: int) -> dict:
    """Peak extra CUDA memory of one float32 "triton" prox, as a multiple of the input bytes."""
    import weightshare as ws

    v = _input("random", (d,), torch.float32)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = ws.prox(v, LAM, method="triton")
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return {"case": f"memory d=2^{int(math.log2(d))}", "dtype": "torch.float32",
            "peak_extra_over_input": peak / v.nbytes}  # fmt: skip


def _ratio(records: list[dict], case: str, dtype: str, kind: str, num: str, den: str) -> float:
    ms = {r["what"]: r["ms"] for r in records
          if r.get("case") == case and r["dtype"] == dtype and r.get("input") == kind}  # fmt: skip
    return ms[num] / ms[den] if num in ms and den in ms else float("nan")


def render(records: list[dict]) -> str:
    """Markdown: one row per case with the times and the ratios the goals name."""
    lines = [
        "| case | dtype | input | sort ms | triton ms | triton / sort | hull / triton "
        "| search / triton |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    seen = []
    for r in records:
        key = (r["case"], r["dtype"], r.get("input"))
        if "ms" not in r or key in seen or r["case"].startswith("stages"):
            continue
        seen.append(key)
        case, dtype, kind = key
        ms = {x["what"]: x["ms"] for x in records
              if (x["case"], x["dtype"], x.get("input")) == key}  # fmt: skip
        cells = [
            f"{ms.get('sort', float('nan')):.3f}",
            f"{ms.get('triton', float('nan')):.3f}",
            f"{_ratio(records, case, dtype, kind, 'triton', 'sort'):.2f}",
            f"{_ratio(records, case, dtype, kind, 'hull', 'triton'):.1f}",
            f"{_ratio(records, case, dtype, kind, 'search', 'triton'):.1f}",
        ]
        head = f"| {case} | {dtype.removeprefix('torch.')} | {kind} | "
        lines.append(head + " | ".join(cells) + " |")
    lines += _render_stages(records)
    for r in records:
        if "peak_extra_over_input" in r:
            lines.append(f"\nPeak extra memory, {r['case']} float32: "
                         f"{r['peak_extra_over_input']:.2f}x the input's bytes.")  # fmt: skip
    return "\n".join(lines) + "\n"


def _render_stages(records: list[dict]) -> list[str]:
    """Markdown lines: milliseconds per stage of one "triton" prox (sum of the stages too)."""
    cases: dict[tuple[str, str], dict[str, float]] = {}
    for r in records:
        if "ms" in r and r["case"].startswith("stages"):
            cases.setdefault((r["case"], r["dtype"]), {})[r["what"]] = r["ms"]
    if not cases:
        return []
    lines = ["", "| stages | dtype | " + " | ".join(STAGES) + " | sum / sort |",
             "| --- | --- |" + " ---: |" * (len(STAGES) + 1)]  # fmt: skip
    for (case, dtype), ms in cases.items():
        cells = [f"{ms[s]:.3f}" if s in ms else "—" for s in STAGES]
        ratio = sum(ms.values()) / ms["sort"] if "sort" in ms else float("nan")
        lines.append(f"| {case.removeprefix('stages ')} | {dtype.removeprefix('torch.')} | "
                     + " | ".join(cells) + f" | {ratio:.2f} |")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="small sizes only (a smoke run)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to benchmark", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    records = run(args.quick)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:  # pragma: no cover - the check needs Triton
        pass
    result = json.dumps({"meta": meta, "records": records}, indent=1)
    (args.out / "gpu_bench.json").write_text(result)
    text = f"Device: {meta['device']}, torch {meta['torch']}, triton {meta.get('triton')}\n\n"
    text += render(records)
    (args.out / "gpu_bench.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
