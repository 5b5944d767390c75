"""Timing and record keeping shared by the GPU check's benchmarks (``gpu.py``, ``gpu_train.py``).

Times are medians of CUDA-event intervals after a warm-up on CUDA, of wall-clock intervals on the
CPU (a dry run). Records go to a JSON file that is rewritten after every record, so a benchmark
killed at its time limit keeps everything it measured.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def device_ms(
    fn: Callable[[], object], device: str, budget_s: float = 0.4, max_reps: int = 50
) -> float:
    """Median milliseconds of ``fn`` on ``device`` ("cuda" or "cpu"), after one warm-up call: at
    least 3 and at most ``max_reps`` timed calls, stopping once ``budget_s`` is spent (a dry run
    passes ``max_reps=1``)."""
    fn()
    on_cuda = device == "cuda"
    if on_cuda:
        torch.cuda.synchronize()
    times: list[float] = []
    spent = time.perf_counter()
    while len(times) < max_reps:
        if on_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= min(3, max_reps) and time.perf_counter() - spent > budget_s:
            break
    return statistics.median(times)


def meta(device: str) -> dict[str, str]:
    """The device and the versions, for the head of a table."""
    found = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "CPU (dry run)",
        "torch": torch.__version__,
    }
    try:
        import triton

        found["triton"] = triton.__version__
    except ImportError:  # pragma: no cover - the check needs Triton
        found["triton"] = "not installed"
    return found


class Recorder:
    """Collects records and rewrites ``path`` (``{"meta": ..., "records": [...]}``) after each."""

    def __init__(self, path: Path, device: str) -> None:
        self.path = path
        self.meta = meta(device)
        self.records: list[dict[str, Any]] = []
        self.flush()

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self.flush()

    def flush(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"meta": self.meta, "records": self.records}, indent=1))
        tmp.replace(self.path)
