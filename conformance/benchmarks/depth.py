"""Depth measure of the isotonic kernels: dispatched aten ops and host syncs of one call.

Every dispatched tensor op has O(log d) depth on a parallel machine (elementwise, scan, reduction,
gather, scatter, sort), so the number of ops one call dispatches, times O(log d), bounds the depth
of the computation; a host synchronization additionally stalls the device queue. The counter is a
``TorchDispatchMode`` that sees every aten op below autograd.

``python -m conformance.benchmarks.depth`` prints the tables; ``--write`` regenerates
``spec/_snippets/depth.md`` and ``spec/_snippets/launches.md`` (the "triton" launch counts, taken
in Triton's interpreter: run it with ``TRITON_INTERPRET=1`` on a machine without CUDA), which
``conformance/test_algorithms.py`` checks are current.
For "search" and "hull" the op sequence depends only on the shape, so "search" (whose CPU run is
slow at large d) is counted on the ``meta`` device (no data, no arithmetic) and "hull" on a real
CPU run; the conformance test checks that the meta count equals the real count and that another
input gives the same ops.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[2]
SNIPPET = ROOT / "spec" / "_snippets" / "depth.md"

#: aten ops that copy a device value to the host, or whose output shape depends on data.
SYNC_OPS = frozenset(
    {
        "aten._local_scalar_dense",
        "aten.item",
        "aten.is_nonzero",
        "aten.nonzero",
        "aten.equal",
        "aten.allclose",
        "aten.masked_select",
        "aten.unique",
        "aten._unique",
        "aten._unique2",
        "aten.unique_consecutive",
        "aten.unique_dim",
        "aten.argwhere",
        "aten._assert_async",
    }
)
#: ops that sync only when called without a static output size.
_SYNC_WITHOUT_SIZE = {"aten.repeat_interleave": "output_size"}
#: views and metadata-only ops: no kernel is launched for them.
_FREE = frozenset(
    {
        "aten.view",
        "aten._unsafe_view",
        "aten.expand",
        "aten.slice",
        "aten.select",
        "aten.unsqueeze",
        "aten.squeeze",
        "aten.t",
        "aten.transpose",
        "aten.permute",
        "aten.alias",
        "aten.detach",
        "aten.as_strided",
        "aten.unbind",
        "aten.split",
        "aten.lift_fresh",
        "aten.empty",
        "aten.empty_like",
        "aten.empty_strided",
        "aten.sym_size",
        "aten.sym_stride",
        "aten.sym_numel",
        "aten.sym_storage_offset",
        "aten.is_same_size",
    }
)

#: sizes measured for the published table (chain input).
SIZES = (2**6, 2**8, 2**10, 2**12, 2**16, 2**20)
#: where each method is counted by default (same count either way for the sync-free ones)
DEFAULT_DEVICE = {"rounds": "cpu", "search": "meta", "hull": "cpu"}
#: "rounds" is data-dependent and needs d - 1 rounds on the chain: measured up to this size.
ROUNDS_MAX = 2**10
METHODS = ("rounds", "search", "hull")


class OpCounter(TorchDispatchMode):
    """Count the aten ops (launching a kernel) and host syncs dispatched inside the context."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.syncs = 0
        self.by_name: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        name = func.overloadpacket._qualified_op_name.replace("::", ".")
        if name not in _FREE:
            self.ops += 1
            self.by_name[name] += 1
        key = _SYNC_WITHOUT_SIZE.get(name)
        if name in SYNC_OPS or (key is not None and kwargs.get(key) is None):
            self.syncs += 1
        return func(*args, **kwargs)


def chain_rows(d: int, lam: float = 1.0) -> np.ndarray:
    """The isotonic input ``y`` of the chain family: sorted chain weights minus the ramp."""
    from conformance.strategies import chain

    x = np.sort(chain(d, lam))
    if d < 2:
        return x.reshape(1, d)
    k = np.arange(1, d + 1, dtype=np.float64)
    return (x - lam * (2.0 * k - d - 1.0) / (d - 1.0)).reshape(1, d)


def kernel(method: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ``(B, n)`` isotonic kernel of a method."""
    from weightshare import _isotonic

    return _isotonic.kernel(method)


def count(fn: Callable[[], object]) -> OpCounter:
    """Run ``fn`` once under an ``OpCounter`` and return the counter."""
    with OpCounter() as counter:
        fn()
    return counter


@functools.cache
def measure(method: str, d: int, device: str | None = None) -> OpCounter:
    """Ops and syncs of one call of a method's kernel on the chain input of size d (cached)."""
    device = device or DEFAULT_DEVICE[method]
    if device == "meta":
        y = torch.empty(1, d, dtype=torch.float64, device="meta")
    else:
        y = torch.from_numpy(chain_rows(d)).to(device)
    fn = kernel(method)
    return count(lambda: fn(y))


@functools.cache
def measure_prox(method: str, d: int, device: str | None = None) -> OpCounter | None:
    """Ops and syncs of the whole prox pipeline (sort, ramp, isotonic, unsort), if it exists."""
    device = device or DEFAULT_DEVICE[method]
    try:
        from weightshare._prox import prox_unchecked
    except ImportError:
        return None
    if device == "meta":
        v = torch.empty(d, dtype=torch.float64, device="meta")
    else:
        from conformance.strategies import chain

        v = torch.from_numpy(chain(d, 1.0)).to(device)
    return count(lambda: prox_unchecked(v, 1.0, 0, method))


Row = tuple[str, int, int, int, float, str]


def table_rows() -> list[Row]:
    """(method, d, ops, syncs, ops / log2(d)^2, prox ops/syncs) of every published measurement."""
    rows = []
    for method in METHODS:
        for d in SIZES:
            if method == "rounds" and d > ROUNDS_MAX:
                continue
            c = measure(method, d)
            p = measure_prox(method, d)
            whole = "n/a" if p is None else f"{p.ops} / {p.syncs}"
            rows.append((method, d, c.ops, c.syncs, c.ops / math.log2(d) ** 2, whole))
    return rows


def render(rows: list[Row]) -> str:
    """The markdown table of ``table_rows``."""
    lines = [
        "| method | d | kernel ops | kernel host syncs | ops / log₂²d | whole prox: ops / syncs |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for method, d, ops, syncs, ratio, whole in rows:
        lines.append(
            f"| {method} | 2^{int(math.log2(d))} | {ops} | {syncs} | {ratio:.1f} | {whole} |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# "triton": device launches of one whole prox call

LAUNCH_SNIPPET = ROOT / "spec" / "_snippets" / "launches.md"
#: sizes of the published launch table (chain input)
TRITON_SIZES = tuple(2**k for k in range(6, 21, 2))
#: the kernels run (in the interpreter on a CPU) up to this size; beyond it the launch sequence,
#: which depends on the shape only, is recorded without running them
TRITON_RUN_MAX = 2**10
#: the "search" and "hull" columns of the launch table stop here
TORCH_OPS_MAX = 2**16


#: the default tunables' tile size and merge width (``triton_hull.TUNING``)
TRITON_TILE, TRITON_WIDTH = 4096, 16


def launch_budget(d: int) -> int:
    """The launches of one "triton" prox call of a length-d vector with the default tunables:
    ``full``, ``sort``, ``mean``, the tile kernel, ``cumsum_``, one merge kernel per level above
    the tiles (⌈log₁₆⌈(d + 1)/4096⌉⌉) and the slopes kernel."""
    levels, size = 0, TRITON_TILE
    while size < d + 1:
        size *= TRITON_WIDTH
        levels += 1
    return levels + 6


@functools.cache
def measure_triton(d: int, run: bool | None = None) -> tuple[OpCounter, list[str]]:
    """(aten ops, Triton kernel names) of one ``prox(v, 1.0, method="triton")`` on the chain.

    The custom-op boundary is removed while counting, so the torch ops inside it (sort, mean,
    scan) are counted too; each counted aten op and each Triton kernel is one device launch.
    """
    from conformance.strategies import chain
    from weightshare._isotonic import triton_hull
    from weightshare._prox import prox_unchecked

    run = d <= TRITON_RUN_MAX if run is None else run
    v = torch.from_numpy(chain(d, 1.0))
    with triton_hull.record_launches(run) as names, OpCounter() as counter:
        prox_unchecked(v, 1.0, 0, "triton")
    return counter, names


def render_launches() -> str:
    """The markdown table of the "triton" launch counts, beside "search" and "hull" ops."""
    lines = [
        "| d | triton: torch ops | triton: Triton kernels | triton: launches | formula "
        "| host syncs | search prox ops | hull prox ops |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for d in TRITON_SIZES:
        ops, names = measure_triton(d)
        # the torch-op kernels are counted where a CPU run is affordable
        search = measure_prox("search", d) if d <= TORCH_OPS_MAX else None
        hull = measure_prox("hull", d) if d <= TORCH_OPS_MAX else None
        lines.append(
            f"| 2^{int(math.log2(d))} | {ops.ops} | {len(names)} | {ops.ops + len(names)} "
            f"| {launch_budget(d)} | {ops.syncs} | {search.ops if search else '—'} "
            f"| {hull.ops if hull else '—'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--write", action="store_true", help="rewrite spec/_snippets/depth.md and launches.md"
    )
    args = parser.parse_args(argv)
    text = render(table_rows())
    launches = render_launches()
    if args.write:
        SNIPPET.write_text(text, encoding="utf-8")
        LAUNCH_SNIPPET.write_text(launches, encoding="utf-8")
    sys.stdout.write(text + "\n" + launches)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
