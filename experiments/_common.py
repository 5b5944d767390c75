"""What every experiment shares: the run context, seeding, dependency checks and result files."""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch


class MissingDependencyError(RuntimeError):
    """An experiment needs a ``weightshare`` API that is not available (yet)."""


def require(module: str, *names: str, experiment: str) -> Any:
    """Import ``module`` and check that it defines ``names``; raise a clear error otherwise."""
    try:
        mod = importlib.import_module(module)
        for name in names:
            getattr(mod, name)
    except (ImportError, AttributeError) as err:
        wanted = ", ".join(f"{module}.{n}" for n in names) or module
        raise MissingDependencyError(
            f"experiment {experiment!r} needs {wanted}, which is not available: {err}"
        ) from err
    return mod


@dataclass
class Context:
    """Where and how one experiment runs."""

    name: str
    preset: str
    out_dir: Path
    device: torch.device
    seeds: int
    data_dir: Path | None = None
    progress: bool = True
    dataset: str = "digits"
    started: float = field(default_factory=time.perf_counter)
    #: the finished runs of earlier sittings (``experiments._journal.Journal``, EXP-64), or None
    journal: Any = None
    #: the scopes of this context's ``protocol.Runs`` (each must be its own)
    scopes: set[str] = field(default_factory=set)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator for batch order."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - legacy global state, seeded for third-party code
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


@contextlib.contextmanager
def deterministic(device: torch.device, threads: int | None) -> Iterator[None]:
    """Deterministic kernels (where torch has them) and a fixed thread count, restored after."""
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    old_threads = torch.get_num_threads()
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # On CUDA some scatter kernels have no deterministic version: warn instead of failing.
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.set_num_threads(old_threads)


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and (population, ddof=0) standard deviation of a list of numbers."""
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "n": len(arr)}


def fmt(ms: dict[str, float], scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± std`` (in percent by default)."""
    return f"{ms['mean'] * scale:.{digits}f} ± {ms['std'] * scale:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def public(run: dict[str, Any]) -> dict[str, Any]:
    """A run's results without its private entries (keys starting with ``_``, e.g. weights)."""
    return {k: v for k, v in run.items() if not k.startswith("_")}


def strict_json(value: Any) -> Any:
    """``value`` with every NaN/inf float replaced by None, so it is valid (strict) JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value


def write_results(ctx: Context, summary: dict[str, Any], table: str) -> list[Path]:
    """Write ``summary.json`` (strict JSON: NaN/inf become null) and ``table.md``."""
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    summary = strict_json({**summary, "runtime_s": round(ctx.elapsed(), 1)})
    (ctx.out_dir / "summary.json").write_text(
        json.dumps(summary, indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8"
    )
    (ctx.out_dir / "table.md").write_text(table, encoding="utf-8")
    return sorted(ctx.out_dir.iterdir())


def progress(iterable: Iterable[Any], ctx: Context, desc: str) -> Any:
    """A tqdm bar over ``iterable`` (silent when ``ctx.progress`` is off)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, disable=not ctx.progress, leave=False, dynamic_ncols=True)
