"""GPU benchmark of the prox: "triton" against ``torch.sort`` and the torch-op "hull"/"search".

``python -m conformance.benchmarks.gpu --out DIR`` (part of ``make gpu-check``) times, on one CUDA
device and in one run: single vectors of d = 2^16..2^26, a 4096 x 4096 batch of rows and a
``prox_many`` over every conv/linear weight of a ResNet-50, float32 and float64, random and chain
inputs, and ``HashedLinear(4096, 4096, 2**20)`` forward + backward against ``nn.Linear`` (HASH-19);
and the time per stage of one prox (sort, partition for ragged lists, tiles, merges, slopes;
``stage_calls``, ``ragged_stage_calls``). Times are medians of CUDA-event intervals after a
warm-up; every ratio divides by a baseline measured in the same run. It writes
``gpu_bench.json`` (rewritten after every record, so a kill keeps what was measured) and
``gpu_bench.md`` to DIR.

``--dry-run`` runs the same code on the CPU at tiny sizes (Triton in its interpreter, wall-clock
timing): the GPU check's dry run, which proves the harness, not the speed.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from conformance.benchmarks import gpu_tables
from conformance.benchmarks.timing import Recorder, device_ms

SIZES = tuple(2**k for k in (16, 18, 20, 22, 24, 26))
#: the torch-op kernels are launch-bound: timed up to this size only
TORCH_OP_MAX = 2**20
BATCH = (4096, 4096)
LAM = 1.0


def resnet50_weight_shapes(scale: int = 1) -> list[tuple[int, ...]]:
    """Shapes of every conv and linear weight of torchvision's ResNet-50 (no torchvision needed);
    ``scale > 1`` divides every channel count (not the 3 input channels) and the classes by it,
    for CPU-sized ragged lists of the same spread of lengths."""
    from conformance.benchmarks.resnet import bottleneck_plan

    shapes = bottleneck_plan()
    if scale > 1:
        return [(s[0] // scale, s[1] if s[1] == 3 else s[1] // scale, *s[2:]) for s in shapes]
    return shapes


#: the device the benchmark runs on ("cpu" in a dry run) and the most timed calls per case
DEVICE = "cuda"
MAX_REPS = 50


def cuda_ms(fn: Callable[[], object], budget_s: float = 0.4) -> float:
    """Median milliseconds of ``fn`` on :data:`DEVICE`, after one warm-up call."""
    return device_ms(fn, DEVICE, budget_s, MAX_REPS)


def _input(kind: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    from conformance.strategies import chain

    numel = math.prod(shape)
    if kind == "chain":
        v = np.random.default_rng(0).permutation(chain(numel, LAM))
        return torch.from_numpy(v).to(DEVICE, dtype).view(shape)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    return torch.randn(shape, generator=g, device=DEVICE, dtype=torch.float64).to(dtype)


Record = Callable[[str, torch.dtype, str, str, float], None]


def _batch(record: Record, dtype: torch.dtype, shape: tuple[int, int]) -> None:
    import weightshare as ws

    x = _input("random", shape, dtype)
    name = f"{shape[0]}x{shape[1]}"
    record(name, dtype, "random", "sort", cuda_ms(lambda: torch.sort(x, dim=1)))
    for m in ("triton", "hull"):
        ms = cuda_ms(lambda m=m: ws.prox(x, LAM, dim=1, method=m), budget_s=0.2)
        record(name, dtype, "random", m, ms)


def _resnet50(record: Record, dtype: torch.dtype, shapes: list[tuple[int, ...]]) -> None:
    import weightshare as ws

    weights = [_input("random", s, dtype) for s in shapes]
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


def _ragged_stages(record: Record, dtype: torch.dtype, shapes: list[tuple[int, ...]]) -> None:
    weights = [_input("random", s, dtype) for s in shapes]
    for what, fn in ragged_stage_calls(weights, 1e-3).items():
        record("stages resnet50", dtype, "random", what, cuda_ms(fn, budget_s=0.2))


def _stages(record: Record, dtype: torch.dtype, d: int) -> None:
    x = _input("random", (1, d), dtype)
    case = f"stages d=2^{int(math.log2(d))}"
    for what, fn in stage_calls(x, LAM).items():
        record(case, dtype, "random", what, cuda_ms(fn, budget_s=0.2))


@dataclass(frozen=True)
class Sizes:
    """What one run measures."""

    vectors: tuple[int, ...] = SIZES
    batch: tuple[int, int] = BATCH
    #: ResNet-50's channel counts are divided by this (1: the real weights)
    resnet_divisor: int = 1
    #: how many of ResNet-50's 54 weights (in order) go into the ``prox_many`` case
    resnet_weights: int = 54
    memory: int | None = 2**26
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64)
    #: ``HashedLinear(n, n, K)``: (n, K)
    hashed: tuple[int, int] = (4096, 2**20)
    #: the sizes timed stage by stage
    stages: tuple[int, ...] = SIZES[::2]


QUICK = Sizes(vectors=SIZES[:3], memory=2**20, hashed=(1024, 2**16), stages=SIZES[:2])
#: Triton's interpreter takes about a second per prox whatever the size: a handful of cases
DRY_RUN = Sizes(vectors=(2**6,), batch=(2, 64), resnet_divisor=64, resnet_weights=6,
                memory=None, dtypes=(torch.float32,), hashed=(64, 2**10),
                stages=(2**6,))  # fmt: skip


def run(sizes: Sizes, record_to: Callable[[dict], None]) -> None:
    """Every case of ``sizes``, in one run; each record (milliseconds, memory ratio) is passed to
    ``record_to`` as soon as it is measured."""

    def record(case: str, dtype: torch.dtype, kind: str, what: str, ms: float) -> None:
        record_to({"case": case, "dtype": str(dtype), "input": kind, "what": what, "ms": ms})
        print(f"{case:>12} {dtype!s:>14} {kind:>6} {what:>8}: {ms:9.3f} ms", flush=True)

    with torch.no_grad():
        for dtype in sizes.dtypes:
            for kind in ("random", "chain"):
                for d in sizes.vectors:
                    _vector(record, dtype, kind, d)
            for d in sizes.stages:
                _stages(record, dtype, d)
            shapes = resnet50_weight_shapes(sizes.resnet_divisor)[: sizes.resnet_weights]
            _ragged_stages(record, dtype, shapes)
            _batch(record, dtype, sizes.batch)
            _resnet50(record, dtype, shapes)
        if sizes.memory is not None:
            record_to(_memory(sizes.memory))
    record_to(_hashed_linear(*sizes.hashed))


def _hashed_linear(n: int, k: int) -> dict:
    """``HashedLinear(n, n, K)`` forward + backward (batch 256, float32) against ``nn.Linear``,
    and against the gradient path before HASH-19 (autograd of ``values[index] * sign``)."""
    from weightshare import nn as wnn

    torch.manual_seed(0)
    x = torch.randn(256, n, device=DEVICE, requires_grad=True)
    dense = torch.nn.Linear(n, n, device=DEVICE)
    layer = wnn.HashedLinear(n, n, k, device=DEVICE)
    sign = layer.sign.to(torch.float32)  # type: ignore[union-attr]

    def old() -> None:
        weight = layer.values[layer.index] * sign
        torch.nn.functional.linear(x, weight, layer.bias).sum().backward()

    ms = {
        "dense": cuda_ms(lambda: dense(x).sum().backward()),
        "hashed": cuda_ms(lambda: layer(x).sum().backward()),
        "hashed-old": cuda_ms(old),
    }
    print(f"hashed linear {n}x{n} K=2^{int(math.log2(k))}: {ms}", flush=True)
    return {"case": f"HashedLinear({n}, {n}, 2^{int(math.log2(k))}) fwd+bwd, batch 256",
            "dtype": "torch.float32", "hashed_ms": ms,
            "hashed_over_dense": ms["hashed"] / ms["dense"],
            "old_over_dense": ms["hashed-old"] / ms["dense"]}  # fmt: skip


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


def main(argv: list[str] | None = None) -> int:
    global DEVICE, MAX_REPS
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="small sizes only (a smoke run)")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    args = parser.parse_args(argv)
    if args.dry_run:
        DEVICE, MAX_REPS = "cpu", 1
    elif not torch.cuda.is_available():
        print("no CUDA device: nothing to benchmark (--dry-run runs on the CPU)", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    recorder = Recorder(args.out / "gpu_bench.json", DEVICE)
    run(DRY_RUN if args.dry_run else QUICK if args.quick else Sizes(), recorder.add)
    text = gpu_tables.render_prox(recorder.meta, recorder.records)
    (args.out / "gpu_bench.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
