"""Conformance of the parallel isotonic kernels (spec: algorithms.md, ids ALG-n).

Every kernel is checked against the textbook PAVA of the reference on the same NumPy data; the
depth tests count dispatched aten ops and host syncs with ``conformance.benchmarks.depth``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance.benchmarks import depth
from conformance.strategies import KINDS, vectors
from weightshare import _isotonic
from weightshare.reference import pava

KERNELS = ("rounds", "search", "hull", "triton")
#: the torch-op kernels whose every op is visible to the op counter (also on the meta device)
SYNC_FREE = ("search", "hull")
#: op budgets C in ops <= C * log2(d)^2 (fitted on the measured table, with headroom)
OP_BUDGET = {"search": 20.0, "hull": 60.0}


def _prox_api():  # type: ignore[no-untyped-def]
    try:
        from weightshare._prox import prox, prox_unchecked
    except ImportError:
        pytest.skip("weightshare._prox (the prox engineer's API) does not exist yet")
    return prox, prox_unchecked


def chain_y(d: int, lam: float) -> np.ndarray:
    """The isotonic input of the chain family: sorted chain weights minus the ramp."""
    return depth.chain_rows(d, lam)[0]


@st.composite
def rows(draw: st.DrawFn, max_rows: int = 4, max_size: int = 40) -> np.ndarray:
    """A (B, n) float64 array, n >= 1, every row of one named kind (plus the chain's y)."""
    b = draw(st.integers(1, max_rows))
    n = draw(st.integers(1, max_size))
    kind = draw(st.sampled_from((*KINDS, "chain_y")))
    if kind == "chain_y":
        lam = draw(st.sampled_from([0.1, 1.0, 5.0]))
        return np.stack([chain_y(n, lam)] * b)
    return np.stack([draw(vectors(min_size=n, max_size=n, kind=kind)) for _ in range(b)])


def expected(y: np.ndarray) -> np.ndarray:
    return np.stack([pava(r) for r in y])


def need(method: str, device: str) -> None:
    """Skip "triton" on CPU tensors unless its kernels were defined for Triton's interpreter."""
    if method == "triton" and device == "cpu":
        from weightshare._isotonic import triton_hull

        if not triton_hull.INTERPRET:
            pytest.skip("Triton kernels run on CPU tensors only under TRITON_INTERPRET=1")


def check(method: str, y: np.ndarray, dtype: torch.dtype, device: str) -> None:
    need(method, device)
    x = torch.from_numpy(y).to(dtype=dtype, device=device)
    out = _isotonic.kernel(method)(x)
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    # the reference sees the values the kernel saw (float32 rounding included)
    want = expected(x.double().cpu().numpy())
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    tol = 1e-9 if dtype == torch.float64 else 2e-6
    np.testing.assert_allclose(out.double().cpu().numpy(), want, rtol=tol, atol=tol * scale)


# ---------------------------------------------------------------------------------------------
# exactness


@pytest.mark.req("ALG-1", "ALG-2", "ALG-4", "ALG-5")
@pytest.mark.parametrize("method", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(y=rows())
def test_kernels_equal_pava(method: str, dtype: torch.dtype, device: str, y: np.ndarray) -> None:
    check(method, y, dtype, device)


@pytest.mark.req("ALG-6")
@pytest.mark.parametrize("method", KERNELS)
def test_rows_are_independent(method: str, device: str) -> None:
    need(method, device)
    rng = np.random.default_rng(7)
    y = np.stack([rng.normal(size=33), np.full(33, 1e6), chain_y(33, 1.0), -np.arange(33.0)])
    x = torch.from_numpy(y).to(device)
    fn = _isotonic.kernel(method)
    together = fn(x)
    for i in range(len(y)):
        torch.testing.assert_close(fn(x[i : i + 1]), together[i : i + 1], rtol=0, atol=0)


@pytest.mark.req("ALG-2", "ALG-7")
@pytest.mark.parametrize("method", (*SYNC_FREE, "triton"))
@pytest.mark.parametrize("n", [1, 2, 3, 4096, 5000])
def test_large_rows_match_scipy(method: str, n: int) -> None:
    from scipy.optimize import isotonic_regression

    need(method, "cpu")
    rng = np.random.default_rng(n)
    y = rng.normal(size=(3, n)) * 5 + np.linspace(0, 20, n)
    y[1] = np.repeat(rng.integers(-3, 3, size=n // 4 + 1), 4)[:n]  # long runs of ties
    want = np.stack([isotonic_regression(r).x for r in y])
    out = _isotonic.kernel(method)(torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(out, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())


@pytest.mark.req("ALG-12")
@pytest.mark.parametrize("method", KERNELS)
def test_bad_input_is_rejected(method: str) -> None:
    need(method, "cpu")
    fn = _isotonic.kernel(method)
    with pytest.raises(ValueError, match=r"\(5,\)"):
        fn(torch.zeros(5))
    with pytest.raises(ValueError, match=r"\(2, 0\)"):
        fn(torch.zeros(2, 0))
    with pytest.raises(TypeError, match="int64"):
        fn(torch.zeros(2, 3, dtype=torch.int64))


# ---------------------------------------------------------------------------------------------
# rounds: the worst case


@pytest.mark.req("ALG-3")
@pytest.mark.parametrize("d", [2, 3, 16, 100, 257])
def test_chain_forces_d_minus_1_rounds(d: int) -> None:
    y = torch.from_numpy(chain_y(d, 1.0)).view(1, d)
    counter = depth.count(lambda: _isotonic.kernel("rounds")(y))
    # the loop reads two scalars per pooling round and one for the final check
    assert counter.syncs == 2 * (d - 1) + 1
    check("rounds", y.numpy(), torch.float64, "cpu")


# ---------------------------------------------------------------------------------------------
# depth: dispatched ops and host syncs


@pytest.mark.req("ALG-4", "ALG-5", "ALG-9")
@pytest.mark.parametrize("method", SYNC_FREE)
def test_sync_free_and_polylog_ops(method: str) -> None:
    counts = {}
    for d in depth.SIZES:
        c = depth.measure(method, d)
        assert c.syncs == 0, (d, c.by_name)
        assert c.ops <= OP_BUDGET[method] * math.log2(d) ** 2, (d, c.ops)
        counts[d] = c.ops
    # the count grows like log^2, not like d: quadrupling log d at most ~16x the ops
    assert counts[2**20] <= 1.1 * (20 / 6) ** 2 * counts[2**6]


@pytest.mark.req("ALG-8", "ALG-9")
@pytest.mark.parametrize("method", SYNC_FREE)
@pytest.mark.parametrize("d", [1, 2, 37, 2**9, 1000])
def test_meta_count_equals_real_count(method: str, d: int) -> None:
    """The op sequence is data-independent: the meta-device count is the real one."""
    real = depth.measure(method, d, "cpu")
    rng = np.random.default_rng(d)
    other = torch.from_numpy(rng.normal(size=(1, d)))
    fn = _isotonic.kernel(method)
    assert depth.count(lambda: fn(other)).by_name == real.by_name
    assert depth.measure(method, d, "meta").by_name == real.by_name
    assert real.syncs == 0


@pytest.mark.req("ALG-3", "ALG-8")
def test_rounds_grow_linearly_on_chain() -> None:
    ops = {d: depth.measure("rounds", d).ops for d in (2**6, 2**8, 2**10)}
    assert ops[2**10] >= 0.9 * 16 * ops[2**6]


@pytest.mark.req("ALG-11")
def test_published_depth_table_is_current() -> None:
    committed = depth.SNIPPET.read_text(encoding="utf-8")
    assert committed == depth.render(depth.table_rows()), (
        "spec/_snippets/depth.md is stale: run python -m conformance.benchmarks.depth --write"
    )


@pytest.mark.req("ALG-9")
@pytest.mark.parametrize("method", SYNC_FREE)
def test_prox_pipeline_is_sync_free(method: str) -> None:
    _prox_api()
    for d in (2**10, 2**20):
        c = depth.measure_prox(method, d)
        assert c is not None and c.syncs == 0, (d, c and c.by_name)
        # sort, ramp and unsort add a constant number of ops to the kernel's
        assert c.ops <= depth.measure(method, d).ops + 40, (d, c.ops)


# ---------------------------------------------------------------------------------------------
# compile, vmap, CUDA graphs


@pytest.mark.req("ALG-10")
def test_hull_kernel_compiles_to_one_graph() -> None:
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    backend = CompileCounterWithBackend("aot_eager")
    fn = torch.compile(_isotonic.kernel("hull"), backend=backend, fullgraph=True)
    y = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 50)))
    torch.testing.assert_close(fn(y), _isotonic.kernel("hull")(y), rtol=0, atol=0)
    assert backend.frame_count == 1


@pytest.mark.req("ALG-10")
# torch 2.13's dynamo itself warns when it traces any autograd.Function (not our code)
@pytest.mark.filterwarnings(
    "ignore:<class 'torch.autograd.function.Function'> should not be instantiated"
    ":DeprecationWarning"
)
def test_prox_hull_compiles_fullgraph() -> None:
    prox, _ = _prox_api()
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    backend = CompileCounterWithBackend("aot_eager")
    fn = torch.compile(lambda v: prox(v, 0.5, method="hull"), backend=backend, fullgraph=True)
    v = torch.from_numpy(np.random.default_rng(1).normal(size=64))
    torch.testing.assert_close(fn(v), prox(v, 0.5, method="hull"), rtol=1e-12, atol=1e-12)
    assert backend.frame_count == 1


@pytest.mark.req("ALG-10")
@pytest.mark.parametrize("method", SYNC_FREE)
def test_vmap_matches_batched_call(method: str) -> None:
    prox, _ = _prox_api()
    v = torch.from_numpy(np.random.default_rng(2).normal(size=(5, 30)))
    mapped = torch.func.vmap(lambda row: prox(row, 0.7, method=method))(v)
    batched = prox(v, 0.7, dim=1, method=method)
    torch.testing.assert_close(mapped, batched, rtol=1e-12, atol=1e-12)


@pytest.mark.req("ALG-10")
@pytest.mark.parametrize("method", (*SYNC_FREE, "triton"))
def test_cuda_graph_capture(method: str, device: str) -> None:
    if device != "cuda":
        pytest.skip("CUDA graphs need a CUDA device")
    fn = _isotonic.kernel(method)
    y = torch.randn(3, 777, dtype=torch.float64, device=device)
    want = fn(y)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn(y)  # warm-up on the side stream, as capture requires
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(y)
    y.copy_(torch.randn_like(y))
    want = fn(y)
    graph.replay()
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# benchmark bodies run (tiny sizes, nothing timed)


@pytest.mark.req("ALG-11")
def test_benchmark_bodies_run() -> None:
    from conformance.benchmarks import test_bench_prox as bench

    for case in bench.smoke_cases():
        out = case.run()
        assert out is not None, case.name
    for ragged in bench.ragged_cases(scale=64):  # 54 tensors of 9..576 values
        assert ragged.run() is not None, ragged.name


# ---------------------------------------------------------------------------------------------
# "triton": launches, edge cases, integration (in Triton's interpreter without CUDA)


@pytest.mark.req("ALG-13", "ALG-16")
@pytest.mark.parametrize("d", depth.TRITON_SIZES)
def test_triton_launches_within_budget(d: int) -> None:
    need("triton", "cpu")
    from weightshare._isotonic import triton_hull

    ops, names = depth.measure_triton(d)
    levels = triton_hull.merge_levels(d + 1, triton_hull.TUNING)
    # the tile kernel, one merge kernel per level above the tiles, the slopes kernel
    assert names == ["_tile_kernel"] + ["_merge_kernel"] * levels + ["_slopes_kernel"], names
    assert ops.syncs == 0, ops.by_name
    assert ops.ops + len(names) == depth.launch_budget(d), (ops.by_name, names)


@pytest.mark.req("ALG-16")
def test_triton_launches_meet_the_issue_goal() -> None:
    """At most 14 launches at d = 2^16, and at most 4 more at 2^18 than at 2^12."""
    need("triton", "cpu")

    def launches(d: int) -> int:
        ops, names = depth.measure_triton(d, run=False)
        return ops.ops + len(names)

    assert launches(2**16) <= 14
    assert launches(2**18) - launches(2**12) <= 4


@pytest.mark.req("ALG-13")
@pytest.mark.parametrize("d", [2, 3, 64, 1000])
def test_triton_launches_depend_on_shape_only(d: int) -> None:
    """The recorded (not run) launch sequence is the one a real run makes, on any data."""
    need("triton", "cpu")
    real_ops, real_names = depth.measure_triton(d, run=True)
    dry_ops, dry_names = depth.measure_triton(d, run=False)
    assert real_names == dry_names
    assert real_ops.by_name == dry_ops.by_name
    from weightshare._isotonic import triton_hull
    from weightshare._prox import prox_unchecked

    other = torch.from_numpy(np.random.default_rng(d).normal(size=d))
    with triton_hull.record_launches() as names, depth.OpCounter() as ops:
        prox_unchecked(other, 0.3, 0, "triton")
    assert names == real_names and ops.by_name == real_ops.by_name


@pytest.mark.req("ALG-11", "ALG-13")
def test_published_launch_table_is_current() -> None:
    need("triton", "cpu")
    committed = depth.LAUNCH_SNIPPET.read_text(encoding="utf-8")
    assert committed == depth.render_launches(), (
        "spec/_snippets/launches.md is stale: run "
        "TRITON_INTERPRET=1 python -m conformance.benchmarks.depth --write"
    )


def _triton_cases() -> list[tuple[str, np.ndarray, float]]:
    rng = np.random.default_rng(11)
    return [
        ("random", rng.normal(size=257), 0.4),
        ("ties", np.repeat(rng.integers(-3, 3, size=40), 5).astype(float), 0.3),
        ("all equal", np.full(100, 2.5), 1.0),
        ("descending", -np.arange(128.0), 0.7),
        ("chain", depth.chain_rows(200, 1.0)[0], 1.0),
        ("huge lambda", rng.normal(size=77), 1e8),
        ("tiny lambda", rng.normal(size=77), 1e-12),
        ("one pair", np.array([1.0, 0.0]), 2.0),
        ("long", rng.normal(size=2**14 + 3), 1e-3),
    ]


@pytest.mark.req("ALG-13", "ALG-2")
@pytest.mark.parametrize("case", _triton_cases(), ids=lambda c: c[0])
def test_triton_prox_edge_cases(case: tuple[str, np.ndarray, float], device: str) -> None:
    need("triton", device)
    from weightshare.reference import prox_pava

    _, v, lam = case
    prox, _ = _prox_api()
    got = prox(torch.from_numpy(v).to(device), lam, method="triton").cpu().numpy()
    want = prox_pava(v, lam)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * (np.abs(v).max() + lam))


@pytest.mark.req("ALG-13")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_triton_rounds_like_torch(dtype: torch.dtype, device: str) -> None:
    """Low-precision results are the float64 result rounded as ``Tensor.to`` rounds it."""
    need("triton", device)
    prox, _ = _prox_api()
    x = torch.randn(4, 300, generator=torch.Generator().manual_seed(3)).to(dtype).to(device)
    got = prox(x, 0.05, dim=1, method="triton")
    want = prox(x.double(), 0.05, dim=1, method="triton").to(dtype)
    assert torch.equal(got, want)


@pytest.mark.req("ALG-13")
def test_triton_needs_cuda_or_the_interpreter() -> None:
    """Without the interpreter a CPU tensor is an error naming CUDA and TRITON_INTERPRET."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    code = (
        "import torch, weightshare as ws\n"
        "x = torch.ones(4)\n"
        "try:\n"
        "    ws.prox(x, 0.1, method='triton')\n"
        "except ValueError as e:\n"
        "    print('ERR', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("ERR") and "CUDA" in out and "TRITON_INTERPRET" in out, out


@pytest.mark.req("ALG-10", "ALG-13")
# torch 2.13's dynamo itself warns when it traces any autograd.Function (not our code)
@pytest.mark.filterwarnings(
    "ignore:<class 'torch.autograd.function.Function'> should not be instantiated"
    ":DeprecationWarning"
)
def test_triton_prox_compiles_fullgraph(device: str) -> None:
    """One graph: the custom ops are traceable (under the interpreter, as opaque ops)."""
    need("triton", device)
    prox, _ = _prox_api()
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    backend = CompileCounterWithBackend("aot_eager" if device == "cpu" else "inductor")
    fn = torch.compile(lambda v: prox(v, 0.5, method="triton"), backend=backend, fullgraph=True)
    v = torch.from_numpy(np.random.default_rng(1).normal(size=64)).to(device)
    torch.testing.assert_close(fn(v), prox(v, 0.5, method="hull"), rtol=1e-12, atol=1e-12)
    assert backend.frame_count == 1
    iso = torch.compile(_isotonic.kernel("triton"), backend=backend, fullgraph=True)
    y = v.view(2, 32)
    torch.testing.assert_close(iso(y), _isotonic.kernel("hull")(y), rtol=1e-12, atol=1e-12)


@pytest.mark.req("ALG-13")
def test_triton_prox_never_syncs_on_cuda(device: str) -> None:
    if device != "cuda":
        pytest.skip("the sync debug mode needs CUDA")
    from weightshare._prox import prox_unchecked

    v = torch.randn(3, 5000, device=device)
    prox_unchecked(v, 0.1, 1, "triton")  # warm-up (kernel compilation)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = prox_unchecked(v, 0.1, 1, "triton")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(out, prox_unchecked(v, 0.1, 1, "hull"), rtol=1e-6, atol=1e-6)


@pytest.mark.req("ALG-11")
def test_gpu_benchmark_cases_and_table() -> None:
    """The GPU benchmark's cases and its table (its timings need CUDA: make gpu-check)."""
    from conformance.benchmarks import gpu, gpu_tables

    shapes = gpu.resnet50_weight_shapes()
    assert len(shapes) == 54  # 53 convolutions and the classifier
    assert 25_400_000 < sum(math.prod(s) for s in shapes) < 25_600_000
    records = [
        {"case": "d=2^20", "dtype": "torch.float32", "input": "random", "what": w, "ms": ms}
        for w, ms in (("sort", 0.2), ("triton", 0.6), ("hull", 120.0), ("search", 30.0))
    ]
    records.append({"case": "memory d=2^26", "dtype": "torch.float32", "peak_extra_over_input": 7})
    records += [
        {"case": "stages d=2^20", "dtype": "torch.float32", "input": "random", "what": w, "ms": ms}
        for w, ms in (("sort", 0.2), ("tiles", 0.1), ("merges", 0.05), ("slopes", 0.15))
    ]
    table = gpu_tables.render(records)
    assert "| d=2^20 | float32 | random | 0.200 | 0.600 | 3.00 | 200.0 | 50.0 |" in table
    assert "| d=2^20 | float32 | 0.200 | — | 0.100 | 0.050 | 0.150 | 2.50 |" in table
    assert "7.00x the input's bytes" in table


@pytest.mark.req("ALG-11")
def test_gpu_benchmark_stages_compose_to_the_prox() -> None:
    """The per-stage callables of the GPU benchmark run (here in the interpreter) and, run in
    order, write the prox."""
    need("triton", "cpu")
    from conformance.benchmarks import gpu
    from weightshare._isotonic import triton_hull
    from weightshare.reference import prox_pava

    v = np.random.default_rng(4).normal(size=(1, 300))
    out = torch.full((1, 300), np.nan, dtype=torch.float64)
    with triton_hull.tuning(64, 8, 4):  # 5 tiles, 2 merge levels
        calls = gpu.stage_calls(torch.from_numpy(v), 0.3, out)
        assert list(calls) == ["sort", "tiles", "merges", "slopes"]
        for fn in calls.values():
            fn()
    np.testing.assert_allclose(out.numpy()[0], prox_pava(v[0], 0.3), rtol=0, atol=1e-12)
    parts = list(np.random.default_rng(6).normal(size=(3, 50)))
    parts[1] = parts[1][:7]
    flat = torch.full((107,), np.nan, dtype=torch.float64)
    with triton_hull.tuning(16, 4, 4):
        calls = gpu.ragged_stage_calls([torch.from_numpy(p) for p in parts], 0.3, flat)
        assert list(calls) == ["sort", "partition", "tiles", "merges", "slopes"]
        for fn in calls.values():
            fn()
    want = np.concatenate([prox_pava(p, 0.3) for p in parts])
    np.testing.assert_allclose(flat.numpy(), want, rtol=0, atol=1e-12)


@pytest.mark.req("ALG-13")
def test_triton_kernels_compile_for_a_gpu(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Triton's real compiler (not the interpreter) accepts every kernel variant, for sm_90."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile for real, not from a cache
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # Triton 3.9 warns when the default is left implicit
    run = subprocess.run(
        [sys.executable, "-m", "conformance._triton_aot"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    from conformance._triton_aot import variants

    assert run.stdout.count(": sm_90 ok") == len(variants()) == 22, run.stdout


# ---------------------------------------------------------------------------------------------
# "triton" with small tunables: several tiles and merge levels at interpreter-friendly sizes

#: (tile T, group G, merge width K)
SMALL_TUNINGS = [(16, 4, 2), (16, 4, 3), (16, 4, 4), (8, 2, 2)]


def _adversarial(d: int, seed: int) -> dict[str, np.ndarray]:
    """Equal-length rows of the adversarial families, by name."""
    rng = np.random.default_rng(seed)
    return {
        "random": rng.normal(size=d),
        "integers": rng.integers(-3, 4, size=d).astype(float),  # exact ties and collinearity
        "sorted": np.sort(rng.normal(size=d)),
        "reversed": np.sort(rng.normal(size=d))[::-1].copy(),
        "constant": np.full(d, 1.5),
        "chain": chain_y(d, 1.0) if d > 1 else np.zeros(d),
    }


@pytest.mark.req("ALG-17")
@pytest.mark.parametrize("tun", SMALL_TUNINGS, ids=str)
@pytest.mark.parametrize("d", [1, 2, 3, 15, 17, 70])
def test_triton_tunables_isotonic_equals_pava(tun: tuple[int, int, int], d: int) -> None:
    """Every family in one batch of rows, across tile boundaries (d = T ± 1) and merge levels."""
    need("triton", "cpu")
    from weightshare._isotonic import triton_hull

    if d == 70:  # the smallest d with two or more merge levels above the tiles
        d = {(16, 4, 2): 40, (16, 4, 3): 50, (8, 2, 2): 40}.get(tun, d)
    names, rows = zip(*_adversarial(d, d).items(), strict=True)
    y = np.stack(rows)
    with triton_hull.tuning(*tun):
        out = triton_hull.isotonic_triton(torch.from_numpy(y)).numpy()
    for name, got, row in zip(names, out, y, strict=True):
        np.testing.assert_allclose(got, pava(row), rtol=0, atol=1e-12, err_msg=name)


@pytest.mark.req("ALG-17")
@pytest.mark.parametrize("tun", SMALL_TUNINGS[:3], ids=str)
def test_triton_tunables_prox_equals_reference(tun: tuple[int, int, int]) -> None:
    """The prox with small tiles: strengths 0, tiny, moderate and huge; many short rows; a
    ragged list with a length-1 tensor among long ones."""
    need("triton", "cpu")
    from weightshare._isotonic import triton_hull
    from weightshare.reference import prox_pava

    prox, _ = _prox_api()
    from weightshare import prox_many

    rng = np.random.default_rng(5)
    v = rng.normal(size=37)
    short = rng.integers(-2, 3, size=(12, 5)).astype(float)
    ragged = [rng.normal(size=40), np.array([0.7]), rng.normal(size=19)]
    with triton_hull.tuning(*tun):
        for lam in (0.0, 1e-12, 0.4, 1e8):
            got = prox(torch.from_numpy(v), lam, method="triton").numpy()
            np.testing.assert_allclose(got, prox_pava(v, lam), rtol=0, atol=1e-9)
        got = prox(torch.from_numpy(short), 0.5, dim=1, method="triton").numpy()
        for g, r in zip(got, short, strict=True):
            np.testing.assert_allclose(g, prox_pava(r, 0.5), rtol=0, atol=1e-12)
        outs = prox_many([torch.from_numpy(r) for r in ragged], 0.3, method="triton")
        for g, r in zip(outs, ragged, strict=True):
            np.testing.assert_allclose(g.numpy(), prox_pava(r, 0.3), rtol=0, atol=1e-12)


@pytest.mark.req("ALG-17")
@pytest.mark.parametrize(
    "bad", [(12, 4, 2), (16, 3, 2), (16, 32, 2), (16, 1, 2), (16, 4, 1), (16, 4, 65)], ids=str
)
def test_triton_tunables_are_checked(bad: tuple[int, int, int]) -> None:
    need("triton", "cpu")
    from weightshare._isotonic import triton_hull

    before = triton_hull.TUNING
    with pytest.raises(ValueError, match=r"tile and group|merge width"):
        with triton_hull.tuning(*bad):
            pass
    assert triton_hull.TUNING == before


@pytest.mark.req("ALG-18")
@pytest.mark.parametrize("tun", [(16, 4, 2), (16, 4, 4), (4096, 32, 16)], ids=str)
def test_triton_ragged_is_one_unpadded_pipeline(tun: tuple[int, int, int]) -> None:
    """Ragged row sets: one tile kernel, merges per level of the longest segment, one slopes
    kernel over N + S points; equal to the reference per row with per-row strengths."""
    need("triton", "cpu")
    from weightshare._isotonic import triton_hull
    from weightshare.reference import prox_pava

    rng = np.random.default_rng(8)
    rows = [
        rng.normal(size=(2, 40)),
        rng.integers(-2, 3, size=(5, 3)).astype(float),  # many short rows, exact ties
        np.sort(rng.normal(size=(1, 70))),
        -np.arange(17.0).reshape(1, 17),
    ]
    lams: list[float | torch.Tensor] = [0.3, torch.tensor([0.5, 0.1, 2.0, 1e8, 0.0]), 0.2, 0.7]
    tensors = [torch.from_numpy(r) for r in rows]
    with triton_hull.tuning(*tun), triton_hull.record_launches() as names:
        outs = triton_hull.prox_ragged_triton(tensors, lams)
        layout = triton_hull._layout(
            tuple((r.shape[0], r.shape[1]) for r in rows), torch.device("cpu"), triton_hull.TUNING
        )
    levels = triton_hull.merge_levels(71, triton_hull.Tuning(*tun))
    assert names == ["_tile_kernel"] + ["_merge_kernel"] * levels + ["_slopes_kernel"]
    values = sum(r.size for r in rows)
    assert layout.points == values + sum(r.shape[0] for r in rows)  # N + S: nothing padded
    for out, r, lam in zip(outs, rows, lams, strict=True):
        strengths = lam.tolist() if isinstance(lam, torch.Tensor) else [lam] * r.shape[0]
        for got, row, s in zip(out.numpy(), r, strengths, strict=True):
            np.testing.assert_allclose(got, prox_pava(row, s), rtol=0, atol=1e-9)
