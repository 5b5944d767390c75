"""Storage (spec page ``storage``): packing, compact state dicts, ws.compress, ws.save / ws.load."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import weightshare as ws
import weightshare.reference as ref
from weightshare import hashing
from weightshare import nn as wnn
from weightshare._sparse import Sparse

FIXTURE_OK = [HealthCheck.function_scoped_fixture]
KIB = 1024


def _sd_bytes(module: torch.nn.Module) -> int:
    """Bytes of the tensors in a state dict (tensors nested in extra state included)."""
    total = 0
    for v in module.state_dict().values():
        if isinstance(v, torch.Tensor):
            total += v.numel() * v.element_size()
        elif isinstance(v, dict):
            total += sum(t.numel() * t.element_size() for t in v.values() if torch.is_tensor(t))
    return total


def _pickled(module: torch.nn.Module) -> dict:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _snapshot(module: torch.nn.Module) -> tuple[str, dict]:
    """The structure (repr) and every tensor, to check that a failed call changed nothing."""
    tensors = {n: t.detach().clone() for n, t in module.named_parameters()}
    tensors.update({n: t.clone() for n, t in module.named_buffers()})
    return repr(module), tensors


def _same(a: tuple[str, dict], b: tuple[str, dict]) -> bool:
    return (
        a[0] == b[0]
        and a[1].keys() == b[1].keys()
        and all(a[1][k].dtype == b[1][k].dtype and torch.equal(a[1][k], b[1][k]) for k in a[1])
    )


# ------------------------------------------------------------------------------------------------
# STORE-1: bit packing


@pytest.mark.req("STORE-1")
@settings(max_examples=40)
@given(data=st.data(), bits=st.integers(0, 63), n=st.integers(0, 200))
def test_pack_bits_matches_reference(data, bits: int, n: int) -> None:
    hi = (1 << bits) - 1
    labels = data.draw(hnp.arrays(np.int64, n, elements=st.integers(0, hi)))
    packed = ref.pack_bits(labels, bits)
    assert packed.dtype == np.uint8 and packed.shape == (math.ceil(n * bits / 8),)
    # the layout: label i's bit j is bit (i*b + j) of the little-endian stream
    stream = np.unpackbits(packed, bitorder="little")
    for i in range(min(n, 5)):
        for j in range(bits):
            assert stream[i * bits + j] == (int(labels[i]) >> j) & 1
    assert not stream[n * bits :].any()  # padding bits are 0
    np.testing.assert_array_equal(ref.unpack_bits(packed, bits, n), labels)
    got = ws.pack_bits(torch.from_numpy(labels), bits)
    np.testing.assert_array_equal(got.numpy(), packed)
    np.testing.assert_array_equal(ws.unpack_bits(got, bits, n).numpy(), labels)


@pytest.mark.req("STORE-1")
def test_pack_bits_large_and_errors() -> None:
    labels = torch.randint(0, 2**13, (200_003,))  # several chunks
    packed = ws.pack_bits(labels, 13)
    np.testing.assert_array_equal(packed.numpy(), ref.pack_bits(labels.numpy(), 13))
    assert torch.equal(ws.unpack_bits(packed, 13, labels.numel()), labels)
    assert [ref.bit_width(k) for k in (1, 2, 3, 4, 5, 2**16, 2**16 + 1)] == [0, 1, 2, 2, 3, 16, 17]
    for pack in (ref.pack_bits, lambda x, b: ws.pack_bits(torch.from_numpy(x), b)):
        with pytest.raises(ValueError, match=r"1 entries outside \[0, 2\*\*2\)"):
            pack(np.array([0, 4]), 2)
        with pytest.raises(ValueError, match="bits must be in"):
            pack(np.array([0]), 64)
    with pytest.raises(TypeError, match="integer"):
        ws.pack_bits(torch.zeros(3), 2)
    with pytest.raises(ValueError, match="3 bytes; 4 labels of 2 bits take 1 bytes"):
        ws.unpack_bits(torch.zeros(3, dtype=torch.uint8), 2, 4)
    with pytest.raises(ValueError, match="3 bytes; 4 labels of 2 bits take 1 bytes"):
        ref.unpack_bits(np.zeros(3, dtype=np.uint8), 2, 4)


# ------------------------------------------------------------------------------------------------
# STORE-2, STORE-3: compact state dicts that load with weights_only


@pytest.mark.req("STORE-2")
def test_tied_labels_int32_in_memory_packed_in_state_dict() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(50, 30)
    with torch.no_grad():
        lin.weight.copy_(torch.randint(0, 5, (30, 50)).float())
    ws.tie(lin)
    tied = lin.parametrizations.weight[0]
    assert tied.labels.dtype == torch.int32
    packed = lin.state_dict()["parametrizations.weight.0.labels"]
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(1500 * 3 / 8)
    # an identically built (same labels) model loads it, also through weights_only
    other = torch.nn.Linear(50, 30)
    with torch.no_grad():
        other.weight.copy_(lin.weight)
    ws.tie(other)
    with torch.no_grad():
        other.parametrizations.weight[0].labels.copy_(tied.labels.flip(0))
    other.load_state_dict(_pickled(lin))
    assert torch.equal(other.parametrizations.weight[0].labels, tied.labels)
    assert torch.equal(other.weight, lin.weight)
    # a packed stream of another length is refused, naming the key
    state = lin.state_dict()
    state["parametrizations.weight.0.labels"] = packed[:-1]
    with pytest.raises(RuntimeError, match=r"weight\.0\.labels: data has 562 bytes"):
        other.load_state_dict(state)


def _every_module(dtype: torch.dtype = torch.float32) -> list[tuple[str, object]]:
    """(name, builder) of every structure we ship; builders take a seed."""

    def tied(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        lin = torch.nn.Linear(12, 7, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(torch.randint(0, 4, (7, 12)).to(dtype))
        return ws.tie(lin)

    def sparse(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        lin = torch.nn.Linear(12, 7, dtype=dtype)
        with torch.no_grad():
            lin.weight.mul_(torch.rand(7, 12) < 0.1)
        return ws.compress(lin)

    def build(name: str):  # type: ignore[no-untyped-def]
        def make(seed: int) -> torch.nn.Module:
            torch.manual_seed(seed)
            if name == "HashedLinear":
                return wnn.HashedLinear(12, 7, 9, seed=3, dtype=dtype)
            if name == "HashedConv2d":
                return wnn.HashedConv2d(3, 4, 3, 11, hash="neighborhood", radius=1, dtype=dtype)
            lin = torch.nn.Linear(12, 12, dtype=dtype)
            if name == "hashed":
                return hashing.hashed(lin, num_buckets=10, hash="dirichlet", alpha=0.5, seed=2)
            if name == "symmetric":
                return ws.symmetric(lin)
            return ws.factorize(lin, depth=3)

        return make

    names = ["HashedLinear", "HashedConv2d", "hashed", "symmetric", "factorized"]
    return [*((n, build(n)) for n in names), ("tied", tied), ("sparse", sparse)]


def _input(module: torch.nn.Module, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    if isinstance(module, wnn.HashedConv2d):
        return torch.randn(2, 3, 6, 6, dtype=dtype)
    return torch.randn(3, getattr(module, "in_features", 12), dtype=dtype)


@pytest.mark.req("STORE-3")
@pytest.mark.parametrize("name,builder", _every_module())
def test_state_dict_loads_weights_only_into_identical_model(name: str, builder) -> None:
    saved = builder(0)
    state = _pickled(saved)  # torch.load(weights_only=True)
    fresh = builder(0)
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)  # another state, same construction
    fresh.load_state_dict(state)
    x = _input(saved)
    assert torch.equal(fresh(x), saved(x))
    # no int64 per weight anywhere in the state dict
    for k, v in saved.state_dict().items():
        if torch.is_tensor(v) and not v.is_floating_point():
            assert v.element_size() == 1, (name, k, v.dtype)


# ------------------------------------------------------------------------------------------------
# STORE-12: the measured table (deterministic byte counts)


@pytest.mark.req("STORE-12")
def test_byte_counts_of_the_issue_table(tmp_path: Path) -> None:
    def file_bytes(m: torch.nn.Module) -> int:
        ws.save(m, tmp_path / "m.safetensors")
        return (tmp_path / "m.safetensors").stat().st_size

    free = 14_700 * 4 + 300 * 4
    h = wnn.HashedLinear(784, 300, 14_700)
    assert _sd_bytes(h) <= 1.02 * free
    assert file_bytes(h) <= 1.02 * free + 4 * KIB
    conv = wnn.HashedConv2d(64, 64, 3, 2_304)
    assert _sd_bytes(conv) <= 1.02 * (2_304 + 64) * 4
    assert file_bytes(conv) <= 1.02 * (2_304 + 64) * 4 + 4 * KIB
    for k in (1, 2, 37, 4096):
        lin = torch.nn.Linear(784, 300)
        with torch.no_grad():
            lin.weight.copy_(torch.arange(300 * 784).reshape(300, 784) % k * 0.01)
        ws.tie(lin)
        bound = 4 * k + 300 * 784 * ref.bit_width(k) / 8
        assert _sd_bytes(lin) - 300 * 4 <= 1.05 * bound, k
        assert file_bytes(lin) - 300 * 4 <= 1.05 * bound + 4 * KIB, k
    hp = hashing.hashed(torch.nn.Linear(784, 300), num_buckets=14_700)
    assert _sd_bytes(hp) <= 1.02 * free and file_bytes(hp) <= 1.02 * free + 4 * KIB
    sym = ws.symmetric(torch.nn.Linear(300, 300))
    assert _sd_bytes(sym) <= 1.02 * (300 * 301 // 2 + 300) * 4
    # a factorized weight keeps its D factors while training, and is sparse once compressed
    f = ws.factorize(torch.nn.Linear(784, 300), depth=3)
    assert _sd_bytes(f) == 3 * 784 * 300 * 4 + 300 * 4
    with torch.no_grad():
        f.parametrizations.weight.original0.mul_(torch.rand(300, 784) < 0.05)
    ws.compress(f)
    nnz = int((f.weight != 0).sum())
    assert nnz < 0.06 * 784 * 300
    assert file_bytes(f) <= 1.02 * (4 * nnz + 300 * 4 + 784 * 300 / 8) + 4 * KIB


# ------------------------------------------------------------------------------------------------
# STORE-4: sparse layouts


@pytest.mark.req("STORE-4")
@pytest.mark.parametrize("density", [0.0, 0.01, 0.3, 1.0])
def test_sparse_layout_is_the_smaller_and_exact(density: float, tmp_path: Path) -> None:
    from weightshare._sparse import bitmap_bytes, csr_bytes

    torch.manual_seed(5)
    lin = torch.nn.Linear(200, 50, bias=False)
    with torch.no_grad():
        lin.weight.mul_(torch.rand(50, 200) < density)
        lin.weight[0, :3] = torch.tensor([-0.0, 1.5, 2.5])  # -0.0 is a zero
    dense = lin.weight.detach().clone()
    nnz = int((dense != 0).sum())
    ws.compress(lin, max_values=1)  # not tied: plain sparse (unless dense is smaller)
    ws.save(lin, tmp_path / "s.safetensors")
    meta = json.loads(safe_open(tmp_path / "s.safetensors", "pt").metadata()["weightshare"])[
        "tensors"
    ]["weight"]
    bitmap, csr = bitmap_bytes((50, 200)), csr_bytes((50, 200), nnz)
    if meta["kind"] == "dense":
        assert 4 * 10_000 <= 4 * nnz + min(bitmap, csr)
    else:
        assert meta["kind"] == "sparse" and meta["nnz"] == nnz
        assert meta["layout"] == ("bitmap" if bitmap <= csr else "csr")
        t = load_file(tmp_path / "s.safetensors")
        stored = sum(v.numel() * v.element_size() for v in t.values())
        assert stored == 4 * nnz + min(bitmap, csr)
    assert torch.equal(lin.weight, dense)
    # the formulas
    assert bitmap == 1250
    assert csr == math.ceil(51 * ref.bit_width(nnz + 1) / 8) + math.ceil(nnz * 8 / 8)


@pytest.mark.req("STORE-4")
def test_sparse_layout_errors() -> None:
    from weightshare._sparse import decode_positions, encode_positions

    pos = torch.tensor([1, 5, 6, 40])
    layouts = {}
    for shape in ((5, 10), (1, 1000), (50,)):
        packed = encode_positions(pos, shape)
        layouts[packed["layout"]] = (packed, shape)
        assert torch.equal(decode_positions(packed, shape, 4).long(), pos)
    assert set(layouts) == {"bitmap", "csr"}
    bitmap, shape = layouts["bitmap"]
    with pytest.raises(ValueError, match="marks 4 non-zeros, expected 3"):
        decode_positions(bitmap, shape, 3)
    csr, shape = layouts["csr"]
    assert shape == (1, 1000)
    with pytest.raises(ValueError, match="row pointers do not split 4 non-zeros into 1 rows"):
        decode_positions({**csr, "indptr": ws.pack_bits(torch.tensor([0, 3]), 3)}, shape, 4)
    with pytest.raises(ValueError, match="unknown sparse layout 'coo'"):
        decode_positions({"layout": "coo"}, (5, 10), 4)


# ------------------------------------------------------------------------------------------------
# STORE-5 .. STORE-9: the file


def _model(dtype: torch.dtype = torch.float32, structured: bool = True) -> torch.nn.Sequential:
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        wnn.HashedLinear(10, 8, 13, seed=4, dtype=dtype),
        torch.nn.Linear(8, 8, dtype=dtype),
        torch.nn.Linear(8, 8, dtype=dtype),
        torch.nn.BatchNorm1d(8, dtype=dtype),
    )
    if structured:
        with torch.no_grad():
            m[1].weight.copy_(torch.randint(0, 3, (8, 8)).to(dtype))
        ws.tie(m[1])
        ws.symmetric(m[2])
    return m


@pytest.mark.req("STORE-5")
def test_file_format(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    m = _model()
    ws.save(m, path)
    with safe_open(path, "pt") as f:
        header = json.loads(f.metadata()["weightshare"])
        keys = set(f.keys())
    assert header["format_version"] == 1
    assert keys == {
        "0.weight.values", "0.bias", "1.weight.values", "1.weight.labels", "1.bias",
        "2.weight.free", "2.bias", "3.weight", "3.bias", "3.running_mean", "3.running_var",
        "3.num_batches_tracked",
    }  # fmt: skip
    metas = header["tensors"]
    assert metas["0.weight"] == {
        "kind": "hashed", "shape": [8, 10], "dtype": "float32", "num_buckets": 13,
        "hash": "uniform", "seed": 4, "signed": True, "hash_kwargs": {}, "callable": False,
    }  # fmt: skip
    assert metas["1.weight"] == {
        "kind": "tied", "shape": [8, 8], "dtype": "float32", "num_values": 3, "bits": 2
    }  # fmt: skip
    assert metas["2.weight"]["symmetry"] == "symmetric" and metas["2.weight"]["num_free"] == 36
    assert metas["3.bias"] == {"kind": "dense", "shape": [8], "dtype": "float32"}
    # a plain safetensors reader sees the compact tensors, no pickle
    plain = load_file(path)
    assert plain["1.weight.labels"].dtype == torch.uint8 and plain["1.weight.labels"].numel() == 16
    assert torch.equal(plain["0.weight.values"], m[0].values.detach())


# random structured models for the identity property


@st.composite
def _layers(draw: st.DrawFn) -> list[tuple]:
    kinds = ["dense", "tied", "hashed_layer", "hashed", "symmetric", "factorized", "sparse"]
    out = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(kinds))
        n_in, n_out = draw(st.integers(1, 9)), draw(st.integers(1, 9))
        if kind == "symmetric":
            n_out = n_in
        extra: dict = {}
        if kind == "tied":
            if draw(st.booleans()) and draw(st.booleans()):
                n_in, n_out = 256, draw(st.sampled_from([1, 256]))  # K up to 2**16
            extra["k"] = draw(st.integers(1, n_in * n_out))
        if kind in ("hashed_layer", "hashed"):
            extra["hash"] = draw(st.sampled_from(["uniform", "dirichlet", "neighborhood", "dense"]))
            extra["k"] = n_in * n_out if extra["hash"] == "dense" else draw(st.integers(1, 20))
            extra["signed"] = draw(st.booleans())
        if kind == "factorized":
            extra["depth"] = draw(st.integers(1, 3))
        if kind == "sparse":
            extra["density"] = draw(st.sampled_from([0.0, 0.2, 0.9]))
            extra["codebook"] = draw(st.booleans())
        out.append((kind, n_in, n_out, extra))
    return out


def _build(layers: list[tuple], dtype: torch.dtype, structured: bool, seed: int):
    torch.manual_seed(seed)
    mods: list[torch.nn.Module] = []
    for kind, n_in, n_out, extra in layers:
        if kind == "hashed_layer":
            kw = {"hash": extra["hash"], "signed": extra["signed"], "seed": seed, "dtype": dtype}
            kw.update({"dirichlet": {"alpha": 0.3}, "neighborhood": {"radius": 2}}.get(
                extra["hash"], {}))  # fmt: skip
            mods.append(wnn.HashedLinear(n_in, n_out, extra["k"], **kw))
            continue
        lin = torch.nn.Linear(n_in, n_out, dtype=dtype)
        mods.append(lin)
        if not structured:
            continue
        w = lin.weight
        if kind == "tied":
            labels = torch.randperm(w.numel()).reshape(w.shape) % extra["k"]
            ws.tie(lin, labels=labels)
        elif kind == "hashed":
            kw = {"dirichlet": {"alpha": 0.3}, "neighborhood": {"radius": 2}}.get(extra["hash"], {})
            hashing.hashed(lin, num_buckets=extra["k"], hash=extra["hash"], seed=seed,
                           signed=extra["signed"], **kw)  # fmt: skip
        elif kind == "symmetric":
            ws.symmetric(lin)
        elif kind == "factorized":
            ws.factorize(lin, depth=extra["depth"])
        elif kind == "sparse":
            with torch.no_grad():  # a fixed count of zeros, so every seed compresses to sparse
                zeros = max(1, round(w.numel() * (1 - extra["density"])))
                keep = torch.ones(w.numel(), dtype=torch.bool)
                keep[torch.randperm(w.numel())[:zeros]] = False
                w.mul_(keep.reshape(w.shape))
                if extra["codebook"]:
                    w.copy_(torch.round(w * 4) / 4)
            ws.compress(lin, max_values=None if extra["codebook"] else 1)
    return torch.nn.Sequential(*mods, torch.nn.Linear(layers[-1][2], 2, dtype=dtype))


def _chain_ok(layers: list[tuple]) -> list[tuple]:
    """Make each layer's input width the previous output width."""
    out, width = [], layers[0][1]
    for kind, _, n_out, extra in layers:
        if kind == "symmetric":
            n_out = width
        if kind == "tied":
            extra = {**extra, "k": min(extra["k"], width * n_out)}
        if kind in ("hashed_layer", "hashed") and extra["hash"] == "dense":
            extra = {**extra, "k": width * n_out}
        out.append((kind, width, n_out, extra))
        width = n_out
    return out


@pytest.mark.req("STORE-6")
@settings(max_examples=25, deadline=None, suppress_health_check=FIXTURE_OK)
@example(layers=[("tied", 256, 256, {"k": 2**16})], dtype=torch.bfloat16, fresh_structured=False)
@example(
    layers=[("tied", 4, 4, {"k": 1}), ("sparse", 4, 3, {"density": 0.2, "codebook": True})],
    dtype=torch.float16,
    fresh_structured=True,
)
@given(
    layers=_layers(),
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
    fresh_structured=st.booleans(),
)
def test_load_of_save_is_the_identity(tmp_path: Path, layers, dtype, fresh_structured) -> None:
    layers = _chain_ok(layers)
    saved = _build(layers, dtype, True, seed=1)
    path = tmp_path / "m.safetensors"
    ws.save(saved, path)
    fresh = _build(layers, dtype, fresh_structured, seed=2)
    assert ws.load(fresh, path) is fresh
    x = torch.randn(3, layers[0][1], dtype=dtype)
    with torch.no_grad():
        assert torch.equal(fresh(x), saved(x))
    assert repr(fresh) == repr(saved)
    for (n, a), (_, b) in zip(
        sorted(fresh.state_dict().items()), sorted(saved.state_dict().items()), strict=True
    ):
        if torch.is_tensor(a):
            assert a.dtype == b.dtype and torch.equal(a, b), n
    # saving the loaded model writes the same tensors
    ws.save(fresh, tmp_path / "again.safetensors")
    again, first = load_file(tmp_path / "again.safetensors"), load_file(path)
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)


@pytest.mark.req("STORE-6")
def test_load_applies_structures_to_a_plain_model(tmp_path: Path) -> None:
    saved = _model()
    ws.factorize(saved[1], "bias", depth=2)
    path = tmp_path / "m.safetensors"
    ws.save(saved, path)
    fresh = _model(structured=False)
    ws.load(fresh, path)
    saved.eval(), fresh.eval()
    x = torch.randn(4, 10)
    assert torch.equal(fresh(x), saved(x))
    assert fresh[1].parametrizations.weight[0].num_values == 3
    # a hashed layer's file also loads into a plain Linear (as the hashed parametrization)
    h = wnn.HashedLinear(6, 4, 7, hash="dirichlet", alpha=0.4, seed=9)
    ws.save(h, path)
    lin = ws.load(torch.nn.Linear(6, 4), path)
    assert torch.equal(lin(x[:, :6]), h(x[:, :6]))
    # a callable hash travels with its table
    table = torch.arange(24).reshape(4, 6) % 5
    c = wnn.HashedLinear(6, 4, 5, hash=lambda shape, k, *, seed, device: table)
    ws.save(c, path)
    into = ws.load(wnn.HashedLinear(6, 4, 5), path)
    assert torch.equal(into.index, table.int()) and torch.equal(into(x[:, :6]), c(x[:, :6]))
    assert torch.equal(ws.load(torch.nn.Linear(6, 4), path)(x[:, :6]), c(x[:, :6]))


@pytest.mark.req("STORE-7")
def test_load_errors_change_nothing(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    ws.save(_model(), path)
    cases: list[tuple[torch.nn.Module, Path, str]] = []
    # another shape, naming the tensor and both shapes
    other = _model()
    other[2] = torch.nn.Linear(8, 6)
    cases.append((other, path, r"'2.weight' has shape \(8, 8\) in the file but \(6, 8\)"))
    # a missing and an extra tensor
    short = torch.nn.Sequential(*list(_model(structured=False))[:3])
    cases.append((short, path, r"\['3.bias', '3.num_batches_tracked'.*are not in the model"))
    longer = torch.nn.Sequential(*_model(structured=False), torch.nn.Linear(8, 2))
    cases.append((longer, path, r"no tensor for \['4.bias', '4.weight'\]"))
    # another structure
    fact = _model(structured=False)
    ws.factorize(fact[1], depth=2)
    cases.append((fact, path, "'1.weight': it is factorized in the model but tied in the file"))
    # a corrupted header, no weightshare metadata, a newer format version
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    cases.append((_model(structured=False), bad, "not a readable safetensors file"))
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, plain)
    cases.append((_model(structured=False), plain, "no 'weightshare' metadata"))
    tensors = load_file(path)
    with safe_open(path, "pt") as f:
        header = json.loads(f.metadata()["weightshare"])
    newer = tmp_path / "newer.safetensors"
    save_file(tensors, newer, {"weightshare": json.dumps({**header, "format_version": 3})})
    cases.append((_model(structured=False), newer, "format version 3, newer than"))
    # a corrupted part: labels beyond K, a truncated part, a missing part
    labels = tensors["1.weight.labels"]
    for i, (part, match) in enumerate(
        [
            (torch.full_like(labels, 255), r"'1.weight'.*entries outside \[0, 3\)"),
            (labels[:-1].clone(), "'1.weight': part 'labels' has 15 bytes, expected 16"),
            (None, "'1.weight': the file has no part 'labels'"),
        ]
    ):
        broken = {k: v for k, v in tensors.items() if k != "1.weight.labels"}
        if part is not None:
            broken["1.weight.labels"] = part
        corrupt = tmp_path / f"corrupt{i}.safetensors"
        save_file(broken, corrupt, {"weightshare": json.dumps(header)})
        cases.append((_model(structured=False), corrupt, match))
    for model, where, match in cases:
        before = _snapshot(model)
        with pytest.raises(ValueError, match=match):
            ws.load(model, where)
        assert _same(_snapshot(model), before), match


@pytest.mark.req("STORE-8")
def test_save_refuses_what_it_cannot_describe(tmp_path: Path) -> None:
    class Double(torch.nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return 2 * w

    lin = torch.nn.Linear(3, 2)
    torch.nn.utils.parametrize.register_parametrization(lin, "weight", Double())
    with pytest.raises(ValueError, match="'weight' is parametrized by Double"):
        ws.save(lin, tmp_path / "x.safetensors")

    class Stateful(torch.nn.Linear):
        def get_extra_state(self) -> dict:
            return {"step": 3}

        def set_extra_state(self, state: dict) -> None:
            pass

    with pytest.raises(ValueError, match=r"'0._extra_state' \(Stateful\) has extra state"):
        ws.save(torch.nn.Sequential(Stateful(2, 2)), tmp_path / "x.safetensors")
    fn = lambda shape, k, *, seed, device, table: table  # noqa: E731
    weird = wnn.HashedLinear(3, 2, 6, hash=fn, table=torch.arange(6).reshape(2, 3))
    with pytest.raises(ValueError, match="description of 'weight' is not JSON"):
        ws.save(weird, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.req("STORE-9")
def test_load_keeps_the_model_dtype(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    saved = _model(torch.float64)
    ws.save(saved, path)
    fresh = ws.load(_model(torch.float32, structured=False), path)
    assert fresh[1].parametrizations.weight.original.dtype == torch.float32
    saved.eval(), fresh.eval()
    x = torch.randn(2, 10, dtype=torch.float64)
    torch.testing.assert_close(fresh(x.float()), saved(x).float())


# ------------------------------------------------------------------------------------------------
# STORE-10: compress


@pytest.mark.req("STORE-10")
def test_compress_picks_the_smallest_exact_form(tmp_path: Path) -> None:
    from weightshare._compress import FORMS, _choose, _counts, form_bytes

    torch.manual_seed(3)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 32),  # 4 distinct values: tied
        torch.nn.Linear(32, 32),  # 3% non-zero random values: sparse
        torch.nn.Linear(32, 16),  # random: dense
        torch.nn.Linear(16, 16),  # 10% non-zeros from 3 values: sparse-tied
        wnn.HashedLinear(16, 8, 20),
    )
    ws.symmetric(model[2], "bias", kind="chunk", chunks=2)
    with torch.no_grad():
        model[0].weight.copy_(torch.randint(-2, 2, (32, 64)) * 0.5)
        model[0].weight[0, 0] = -0.0
        model[1].weight.mul_(torch.rand(32, 32) < 0.03)
        model[3].weight.copy_(torch.randint(1, 4, (16, 16)) * (torch.rand(16, 16) < 0.1))
    x = torch.randn(5, 64)
    before = model(x)
    weights = [m.weight.detach().clone() for m in model[:4]]
    for w in weights:
        c = _counts(w + 0.0)
        best = min(form_bytes(c, f, tuple(w.shape)) for f in FORMS)
        assert form_bytes(c, _choose(c, tuple(w.shape), None), tuple(w.shape)) == best
    assert ws.compress(model) is model
    kinds = [type(m.parametrizations.weight[0]).__name__ if hasattr(m, "parametrizations")
             and "weight" in m.parametrizations else "dense" for m in model[:4]]  # fmt: skip
    assert kinds == ["Tied", "Sparse", "dense", "Sparse"]
    assert model[1].parametrizations.weight[0].labels is None
    assert model[3].parametrizations.weight[0].num_values == 3
    assert isinstance(model[2].parametrizations.bias[0], ws.symmetry.Symmetry)  # left as is
    assert torch.equal(model(x), before)
    for m, w in zip(model[:4], weights, strict=True):
        assert torch.equal(m.weight, w)
    assert model[0].weight[0, 0].item() == 0.0 and not model[0].weight[0, 0].signbit()
    # still trainable, and the file is as small as the formulas say
    assert model[0].parametrizations.weight.original.requires_grad
    ws.save(model, tmp_path / "c.safetensors")
    ws.load(_plain_copy(model), tmp_path / "c.safetensors")


def _plain_copy(model: torch.nn.Sequential) -> torch.nn.Sequential:
    out = torch.nn.Sequential(*[torch.nn.Linear(m.in_features, m.out_features) for m in model[:4]])
    out.append(wnn.HashedLinear(16, 8, 20))
    ws.symmetric(out[2], "bias", kind="chunk", chunks=2)
    return out


@pytest.mark.req("STORE-10")
def test_compress_collapses_factorized_weights_and_options() -> None:
    torch.manual_seed(4)
    lin = ws.factorize(torch.nn.Linear(40, 30), depth=2)
    with torch.no_grad():
        lin.parametrizations.weight.original0.mul_(torch.rand(30, 40) < 0.1)
    x = torch.randn(3, 40)
    before, w = lin(x), lin.weight.detach().clone()
    ws.compress(lin)
    assert isinstance(lin.parametrizations.weight[0], Sparse)  # 10% non-zeros
    assert torch.equal(lin(x), before) and torch.equal(lin.weight, w)
    # a threshold zeroes the small entries of the product
    lin2 = ws.factorize(torch.nn.Linear(40, 30), depth=2)
    w2 = lin2.weight.detach().clone()
    ws.compress(lin2, threshold=0.05)
    torch.testing.assert_close(lin2.weight, torch.where(w2.abs() < 0.05, 0.0, w2), rtol=0, atol=0)
    # min_numel leaves small weights dense; max_values leaves weights with many values untied
    lin3 = torch.nn.Linear(40, 30)
    with torch.no_grad():
        lin3.weight.copy_(torch.randint(1, 51, (30, 40)).float())  # 50 values, no zero
    ws.compress(lin3, min_numel=1201)
    assert not torch.nn.utils.parametrize.is_parametrized(lin3)
    ws.compress(lin3, max_values=49)
    assert not torch.nn.utils.parametrize.is_parametrized(lin3, "weight")
    ws.compress(lin3, max_values=50)
    assert lin3.parametrizations.weight[0].num_values == 50


@pytest.mark.req("STORE-10")
def test_compress_errors_change_nothing() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.zero_()
        model[1].weight[0, 0] = float("nan")
        model[1].bias[1] = float("inf")
    before = _snapshot(model)
    with pytest.raises(
        ValueError,
        match=r"'1.weight' of shape \(2, 3\) has 1 non-finite value\(s\) \(NaN or inf\); '1.bias'",
    ):
        ws.compress(model)
    assert _snapshot(model)[0] == before[0]
    for k, v in before[1].items():
        torch.testing.assert_close(_snapshot(model)[1][k], v, equal_nan=True, rtol=0, atol=0)
    with pytest.raises(ValueError, match="threshold"):
        ws.compress(model, threshold=-1)
    with pytest.raises(ValueError, match="max_values"):
        ws.compress(model, max_values=0)
    with pytest.raises(TypeError, match=r"nn\.Module"):
        ws.compress(torch.zeros(3))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# STORE-11: the storage table and the command


@pytest.mark.req("STORE-11")
def test_storage_table_and_command(tmp_path: Path) -> None:
    m = _model()
    path = tmp_path / "m.safetensors"
    ws.save(m, path)
    table = ws.storage(m)
    assert table.file_bytes == path.stat().st_size
    from_file = ws.storage(path)
    assert [r.file_bytes for r in from_file.tensors] == [r.file_bytes for r in table.tensors]
    assert from_file.header_bytes == table.header_bytes and from_file.memory_bytes is None
    rows = {r.name: r for r in table.tensors}
    tied = rows["1.weight"]
    assert (tied.kind, tied.numel, tied.dense_bytes) == ("tied", 64, 256)
    assert tied.file_bytes == 3 * 4 + 16 and tied.ratio == 256 / 28
    assert tied.memory_bytes == 3 * 4 + 64 * 4  # values + int32 labels
    hashed = rows["0.weight"]
    # values + int32 index + int8 sign + the int32 bucket rows (HASH-19)
    rows = m[0].bucket_layout
    assert rows.dtype == torch.int32 and rows.numel() >= 80 + 13
    assert hashed.memory_bytes == 13 * 4 + 80 * 4 + 80 + 4 * rows.numel()
    assert table.dense_bytes == sum(4 * r.numel for r in table.tensors)
    assert "| `1.weight` | tied | 64 | 256 |" in str(table)
    out = subprocess.run(
        [sys.executable, "-m", "weightshare", "storage", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "| `1.weight` | tied | 64 | 256 | — | 28 | 9.14× |" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "weightshare", "storage", str(tmp_path / "nope")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 1 and "nope" in bad.stderr
