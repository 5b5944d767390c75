"""Hashed layers on the CPU: forward + backward against ``nn.Linear`` (spec: performance.md).

``pytest conformance/benchmarks -k hashed --benchmark-only`` times, in one run and at one size
(``HashedLinear(1024, 1024, 2**16)``, batch 64, float32), one forward + backward of:

- ``dense``: ``nn.Linear(1024, 1024)``, the baseline;
- ``hashed``: the layer as shipped (on a CPU the bucket gradient is the serial ``index_add_``);
- ``hashed-rows``: the same layer on the bucket rows (the path CUDA takes);
- ``hashed-old``: the gradient path before HASH-19, autograd of ``values[index] * sign`` (its
  backward is ``index_put_`` with accumulation).

Each case stores ``impl`` and the shape in ``extra_info``; ``report.py`` prints the ratios.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from weightshare import _bucket_sum
from weightshare import nn as wnn

IN, OUT, BUCKETS, BATCH = 1024, 1024, 2**16, 64
IMPLS = ("dense", "hashed", "hashed-rows", "hashed-old")


def make_step(impl: str) -> Callable[[], None]:
    """A zero-argument forward + backward of one layer of the benchmark's size."""
    torch.manual_seed(0)
    x = torch.randn(BATCH, IN)
    if impl == "dense":
        dense = torch.nn.Linear(IN, OUT)
        return lambda: dense(x).sum().backward()
    layer = wnn.HashedLinear(IN, OUT, BUCKETS)
    if impl == "hashed":
        return lambda: layer(x).sum().backward()
    if impl == "hashed-rows":

        def rows() -> None:
            serial = _bucket_sum.SERIAL_DEVICES
            _bucket_sum.SERIAL_DEVICES = frozenset()
            try:
                layer(x).sum().backward()
            finally:
                _bucket_sum.SERIAL_DEVICES = serial

        return rows
    assert impl == "hashed-old"
    assert layer.sign is not None

    def old() -> None:
        weight = layer.values[layer.index] * layer.sign.to(layer.values.dtype)  # type: ignore[union-attr]
        F.linear(x, weight, layer.bias).sum().backward()

    return old


@pytest.mark.parametrize("impl", IMPLS)
def test_hashed_linear_speed(benchmark, impl: str) -> None:  # type: ignore[no-untyped-def]
    step = make_step(impl)
    benchmark.group = f"hashed {OUT}x{IN} K=2^16 batch {BATCH}"
    benchmark.extra_info.update(
        suite="hashed", impl=impl, shape=[OUT, IN], num_buckets=BUCKETS, batch=BATCH,
        torch=torch.__version__, torch_threads=str(torch.get_num_threads()),
    )  # fmt: skip
    benchmark.pedantic(step, rounds=15, iterations=1, warmup_rounds=2)
