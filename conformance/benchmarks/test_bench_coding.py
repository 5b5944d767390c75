"""Loading an entropy-coded file against the fixed-width one (spec: storage.md, STORE-24 ..).

``pytest conformance/benchmarks -k coding --benchmark-only`` times ``ws.load`` of LeNet-300-100
(784-300-100-10, compressed sparse-tied at ~8 % non-zeros from a peaked 32-value codebook) saved
with ``coding=False`` and with coding, into a freshly built plain model (built in the setup, not
timed). The goal is a coded load at most 2x the fixed-width one; the ratio is reported, not tested.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import weightshare as ws

from .coding import lenet, plain


@pytest.mark.parametrize("coding", [False, True], ids=["fixed-width", "coded"])
def test_load_lenet_300_100(benchmark, tmp_path: Path, coding: bool) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "lenet.safetensors"
    ws.save(lenet(), path, coding=coding)
    benchmark.group = "ws.load LeNet-300-100, sparse-tied 8 %"
    benchmark.extra_info.update(
        suite="coding", coding=coding, file_bytes=path.stat().st_size,
        torch=torch.__version__, torch_threads=str(torch.get_num_threads()),
    )  # fmt: skip
    benchmark.pedantic(
        ws.load, setup=lambda: ((plain(), path), {}), rounds=30, iterations=1, warmup_rounds=3
    )
