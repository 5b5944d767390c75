"""Entropy coding of labels and gaps in files (spec page ``storage``, STORE-24 .. STORE-28).

The reference (NumPy, bit by bit) and the accelerated (vectorized) coders write the same bytes and
decode each other's streams; ``ws.save`` codes where that is smaller and ``ws.load`` reads it back.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from safetensors import safe_open

import weightshare as ws
import weightshare.reference as ref
from weightshare.reference._coding import MAX_CODE_LENGTH


@st.composite
def streams(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    """Values from uniform to one value over up to 2**16 symbols, and a block size."""
    k = draw(st.sampled_from([1, 2, 3, 7, 32, 255, 4096, 1 << 16]))
    n = draw(st.integers(1, 600))
    peak = draw(st.sampled_from([0.0, 0.05, 1.0, 20.0, 1e6]))  # 0: uniform, 1e6: one value
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    weights = np.exp(-peak * np.arange(k) / k) if peak < 1e6 else (np.arange(k) == 0) * 1.0
    values = rng.choice(k, size=n, p=weights / weights.sum())
    return values.astype(np.int64), draw(st.sampled_from([1, 3, 64, 256, 1024]))


@pytest.mark.req("STORE-25")
@settings(max_examples=60, deadline=None)
@given(stream=streams())
def test_reference_and_accelerated_code_the_same_bytes(stream: tuple[np.ndarray, int]) -> None:
    values, block = stream
    mine = ref.huffman_encode(values, block)
    fast = ws.huffman_encode(torch.from_numpy(values), block)
    for a, b in zip(mine, fast, strict=True):
        assert np.array_equal(a, b.numpy())
    n = values.size
    assert np.array_equal(ref.huffman_decode(*mine, n, block), values)  # reference <- reference
    assert np.array_equal(ws.huffman_decode(*fast, n, block).numpy(), values)
    # each decoder decodes the other's stream
    assert np.array_equal(ref.huffman_decode(*(t.numpy() for t in fast), n, block), values)
    as_torch = [torch.from_numpy(a) for a in mine]
    assert np.array_equal(ws.huffman_decode(*as_torch, n, block).numpy(), values)
    with _small_groups():  # the accelerated decoder in groups of a few blocks
        assert np.array_equal(ws.huffman_decode(*fast, n, block).numpy(), values)


@contextlib.contextmanager
def _small_groups() -> Iterator[None]:
    """The accelerated decoder decodes groups of blocks of about 64 bits (2**22 otherwise)."""
    from weightshare import _coding

    saved = _coding._GROUP_BITS
    _coding._GROUP_BITS = 64
    try:
        yield
    finally:
        _coding._GROUP_BITS = saved


@pytest.mark.req("STORE-25")
def test_long_codes_decode_the_same() -> None:
    # Fibonacci counts: codes of up to 19 bits, past the accelerated decoder's 16-bit table
    fib = [1, 1]
    while len(fib) < 20:
        fib.append(fib[-1] + fib[-2])
    values = np.random.default_rng(0).permutation(np.repeat(np.arange(20), fib))
    mine = ref.huffman_encode(values, 100)
    fast = ws.huffman_encode(torch.from_numpy(values), 100)
    assert int(mine[1].max()) == 19
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(mine, fast, strict=True))
    assert np.array_equal(ws.huffman_decode(*fast, values.size, 100).numpy(), values)
    assert np.array_equal(ref.huffman_decode(*mine, values.size, 100), values)


@pytest.mark.req("STORE-25")
def test_code_lengths_are_huffman_limited_and_canonical() -> None:
    assert ref.code_lengths(np.array([5])).tolist() == [1]
    assert ref.code_lengths(np.array([1, 1, 1, 1])).tolist() == [2, 2, 2, 2]
    # ties in weight: leaves before merged nodes, in symbol order (a deterministic tree)
    assert ref.code_lengths(np.array([1, 1, 2])).tolist() == [2, 2, 1]
    assert ref.code_lengths(np.array([10, 1, 1, 1, 1])).tolist() == [1, 3, 3, 3, 3]
    # Fibonacci counts make a 39-deep tree: the limit halves the counts until it fits
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    deep = ref.code_lengths(np.array(fib))
    assert int(deep.max()) <= MAX_CODE_LENGTH < len(fib) - 1
    assert sum(2.0 ** -int(x) for x in deep) <= 1
    with pytest.raises(ValueError, match="positive"):
        ref.code_lengths(np.array([1, 0]))
    with pytest.raises(ValueError, match="cannot have codes of at most 2 bits"):
        ref.code_lengths(np.ones(5, dtype=np.int64), max_length=2)
    # the canonical code of lengths [2, 1, 3, 3]: b -> 0, a -> 10, c -> 110, d -> 111
    values = np.array([1, 0, 2, 3, 1, 1, 1, 0])
    code, lengths, symbols, offsets = ref.huffman_encode(values, 8)
    assert lengths.tolist() == [2, 1, 3, 3] and symbols.tolist() == [0, 1, 2, 3]
    assert np.unpackbits(code).tolist()[:9] == [0, 1, 0, 1, 1, 0, 1, 1, 1]
    assert offsets.tolist() == [0]


@pytest.mark.req("STORE-27")
@pytest.mark.parametrize("side", ["reference", "accelerated", "accelerated-groups"])
def test_decoders_refuse_invalid_streams(side: str) -> None:
    values = np.array([0, 0, 0, 1, 2, 0, 3, 0, 0, 1] * 20, dtype=np.int64)
    code, lengths, symbols, offsets = ref.huffman_encode(values, 64)

    def decode(c, ln, sy, of, n=values.size, block=64):  # type: ignore[no-untyped-def]
        if side == "reference":
            return ref.huffman_decode(c, ln, sy, of, n, block)
        parts = [torch.from_numpy(np.asarray(x)) for x in (c, ln, sy, of)]
        if side == "accelerated-groups":
            with _small_groups():
                return ws.huffman_decode(*parts, n, block).numpy()
        return ws.huffman_decode(*parts, n, block).numpy()

    assert np.array_equal(decode(code, lengths, symbols, offsets), values)
    cases = [
        ((code, np.ones_like(lengths), symbols, offsets), "Kraft"),
        ((code, lengths * 0, symbols, offsets), r"lengths must be in \[1, 24\]"),
        ((code, lengths + 30, symbols, offsets), r"lengths must be in \[1, 24\]"),
        ((code, lengths, symbols[::-1].copy(), offsets), "not strictly increasing"),
        ((code, lengths[:-1], symbols, offsets), "as many lengths as symbols"),
        ((code, lengths, symbols, offsets[:-1]), "need 4 block offsets"),
        ((code, lengths, symbols, offsets + 1), "not 0, increasing"),
        ((code, lengths, symbols, np.array([0, 5, 5, 9])), "not 0, increasing"),
        ((code, lengths, symbols, np.array([0, 1, 2, 8 * code.size])), "not 0, increasing"),
        ((code[:-1], lengths, symbols, offsets), "block|below"),  # truncated
        ((np.concatenate([code, [0]]).astype(np.uint8), lengths, symbols, offsets), "last block"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            decode(*args)
    for n in (values.size - 1, values.size + 1):  # fewer or more values than coded
        with pytest.raises(ValueError, match=r"the last block ends|block 3 does not decode"):
            decode(code, lengths, symbols, offsets, n=n)
    # an incomplete code (Kraft < 1): a bit pattern that is no code is refused
    with pytest.raises(ValueError, match=r"does not decode|ends at bit"):
        decode(np.full(4, 255, np.uint8), np.array([2, 2]), np.array([0, 1]), np.array([0]), n=16)


def _lenet_layer(seed: int = 0) -> torch.nn.Linear:
    """784x300, 8 % non-zeros drawn from a peaked 32-value codebook, compressed sparse-tied."""
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(784, 300)
    book = torch.randn(32, generator=g)
    probs = torch.softmax(torch.linspace(3, -3, 32), 0)
    with torch.no_grad():
        mask = torch.rand(300, 784, generator=g) < 0.08
        labels = torch.multinomial(probs, 300 * 784, replacement=True, generator=g)
        lin.weight.copy_(book[labels].reshape(300, 784) * mask)
    return ws.compress(lin)


def _entropy_bits(values: torch.Tensor) -> float:
    counts = torch.unique(values, return_counts=True)[1].double()
    p = counts / counts.sum()
    return float(-(counts * torch.log2(p)).sum())


def _header(path: Path) -> dict:
    with safe_open(path, "pt") as f:
        return json.loads(f.metadata()["weightshare"])


@pytest.mark.req("STORE-28")
@pytest.mark.req("STORE-24")
def test_coded_size_is_near_the_entropy_and_save_picks_it(tmp_path: Path) -> None:
    from weightshare._coded import gaps_of

    lin = _lenet_layer()
    s = lin.parametrizations.weight[0]
    coded, fixed = tmp_path / "coded.safetensors", tmp_path / "fixed.safetensors"
    ws.save(lin, coded)
    ws.save(lin, fixed, coding=False)
    meta = _header(coded)["tensors"]["weight"]
    assert meta["layout"] == "gaps" and set(meta["coding"]) == {"labels", "gaps"}
    entropy = (_entropy_bits(s.labels) + _entropy_bits(gaps_of(s.positions))) / 8
    with safe_open(coded, "pt") as f:
        parts = {k: f.get_tensor(k) for k in f.keys()}
    streams = sum(t.numel() for k, t in parts.items() if k.endswith("_code"))
    model = sum(
        t.numel() for k, t in parts.items() if k.endswith(("_lengths", "_symbols", "_blocks"))
    )
    rest = sum(
        t.numel() * t.element_size() for k, t in parts.items() if "_" not in k.split(".")[-1]
    )
    header = coded.stat().st_size - sum(t.numel() * t.element_size() for t in parts.values())
    assert entropy <= streams <= 1.2 * entropy
    assert coded.stat().st_size <= 1.2 * entropy + model + rest + header
    assert coded.stat().st_size < 0.7 * fixed.stat().st_size
    # the same weight with uniform labels over K = 16: fixed-width is the smaller, and is kept
    tied = torch.nn.Linear(64, 64)
    with torch.no_grad():
        tied.weight.copy_(torch.arange(64 * 64).reshape(64, 64) % 16 * 0.5)
    ws.tie(tied)
    ws.save(tied, coded)
    ws.save(tied, fixed, coding=False)
    assert _header(coded) == _header(fixed) and _header(fixed)["format_version"] == 1
    assert coded.read_bytes() == fixed.read_bytes()


@pytest.mark.req("STORE-24")
def test_coding_false_writes_the_version_1_file_and_both_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = torch.nn.Sequential(_lenet_layer(1), torch.nn.ReLU(), torch.nn.Linear(300, 100))
    with torch.no_grad():  # a tied layer with peaked labels: coded too
        peaked = torch.tensor([0.7, 0.1, 0.1, 0.04, 0.03, 0.01, 0.01, 0.01])
        m[2].weight.copy_(torch.multinomial(peaked, 30000, replacement=True).reshape(100, 300))
    ws.tie(m[2])
    x = torch.randn(3, 784)
    old, new = tmp_path / "v1.safetensors", tmp_path / "v2.safetensors"
    ws.save(m, old, coding=False)
    ws.save(m, new)
    h1, h2 = _header(old), _header(new)
    assert h1["format_version"] == 1 and h2["format_version"] == 2
    assert all("coding" not in d for d in h1["tensors"].values())  # the fields of version 1
    assert h2["tensors"]["2.weight"]["coding"].keys() == {"labels"}
    assert h2["tensors"]["0.bias"] == h1["tensors"]["0.bias"]
    for path in (old, new):
        fresh = torch.nn.Sequential(
            torch.nn.Linear(784, 300), torch.nn.ReLU(), torch.nn.Linear(300, 100)
        )
        ws.load(fresh, path)
        assert torch.equal(fresh(x), m(x)) and repr(fresh) == repr(m)
        again = tmp_path / "again.safetensors"
        ws.save(fresh, again, coding=path == new)
        assert again.read_bytes() == path.read_bytes()  # deterministic, and the same encoding
    assert ws.storage(new).file_bytes == new.stat().st_size == ws.storage(m).file_bytes


FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _v1_model() -> torch.nn.Sequential:
    """The model of ``fixtures/v1.safetensors``, which ``ws.save`` of commit 1b7b48e (before
    coding, format version 1) wrote: tied, sparse-tied and sparse layers."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    with torch.no_grad():
        m[0].weight.copy_(torch.randint(0, 3, (8, 8)).float())
        m[1].weight.mul_(torch.rand(16, 8) < 0.3).copy_(torch.round(m[1].weight * 4) / 4)
        m[2].weight.mul_(torch.rand(4, 16) < 0.2)
    ws.tie(m[0])
    ws.compress(m[1])
    ws.compress(m[2])
    return m


@pytest.mark.req("STORE-24")
def test_a_file_of_the_previous_version_loads(tmp_path: Path) -> None:
    old = FIXTURES / "v1.safetensors"
    assert _header(old)["format_version"] == 1
    fresh = torch.nn.Sequential(
        torch.nn.Linear(8, 8), torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)
    )
    ws.load(fresh, old)
    model = _v1_model()
    x = torch.randn(3, 8)
    assert torch.equal(fresh(x), model(x)) and repr(fresh) == repr(model)
    for coding in (False, True):  # nothing here is worth coding: the same version-1 bytes
        again = tmp_path / f"again{coding}.safetensors"
        ws.save(fresh, again, coding=coding)
        assert again.read_bytes() == old.read_bytes()


def _weight(rows: int, cols: int, density: float, k: int, peak: float, seed: int) -> torch.Tensor:
    """A weight of the given density whose non-zeros take ``k`` values, uniform (``peak`` 0) to
    one value (``peak`` large)."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.exp(-peak * torch.arange(k) / k)
    labels = torch.multinomial(probs, rows * cols, replacement=True, generator=g)
    book = torch.arange(1, k + 1, dtype=torch.float32)
    mask = torch.rand(rows * cols, generator=g) < density
    return (book[labels] * mask).reshape(rows, cols)


WEIGHTS = st.tuples(
    st.sampled_from([(1, 1), (1, 5), (7, 3), (40, 300), (100, 300), (200, 392)])
    | st.tuples(st.integers(1, 50), st.integers(1, 300)),
    st.sampled_from([0.0, 0.01, 0.08, 0.5, 1.0]),  # sparsity 100 % .. 0 %
    st.sampled_from([1, 2, 5, 32, 1000, 1 << 16]),
    st.sampled_from([0.0, 3.0, 50.0]),
    st.integers(0, 2**31),
).map(lambda t: (*t[0], *t[1:]))


@pytest.mark.req("STORE-24")
@pytest.mark.req("STORE-26")
@settings(max_examples=30, deadline=None)
@example(params=(200, 392, 0.08, 32, 3.0, 0), form="compress")  # gaps coded
@example(params=(100, 300, 0.08, 1000, 3.0, 1), form="tie")  # labels coded
@example(params=(100, 300, 1.0, 32, 3.0, 2), form="compress")  # tied, labels coded
@example(params=(1, 1, 1.0, 1, 0.0, 3), form="tie")
@given(params=WEIGHTS, form=st.sampled_from(["compress", "tie"]))
def test_load_of_a_coded_save_is_the_identity(params: tuple, form: str, tmp_path_factory) -> None:
    w = _weight(*params)
    tmp = tmp_path_factory.mktemp("coded")
    lin = torch.nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(w)
    ws.compress(lin) if form == "compress" else ws.tie(lin)
    coded, fixed = tmp / "coded.safetensors", tmp / "fixed.safetensors"
    ws.save(lin, coded)
    ws.save(lin, fixed, coding=False)
    assert coded.stat().st_size <= fixed.stat().st_size + 16 + 7  # an empty 'coding' field
    fresh = torch.nn.Linear(w.shape[1], w.shape[0])
    ws.load(fresh, coded)
    assert torch.equal(fresh.weight, lin.weight)
    # the reference decodes the file's streams to the model's labels and gaps
    meta = _header(coded)["tensors"]["weight"]
    event(f"coded: {sorted(meta.get('coding', {}))}")
    with safe_open(coded, "np") as f:
        parts = {k.removeprefix("weight."): f.get_tensor(k) for k in f.keys()}
    n = w.numel()
    for stream, desc in meta.get("coding", {}).items():
        count = n if meta["kind"] == "tied" else meta["nnz"]
        if count > 20_000:  # the bit-by-bit reference is slow
            continue
        domain = meta["num_values"] if stream == "labels" else n
        decoded = ref.huffman_decode(
            parts[f"{stream}_code"],
            parts[f"{stream}_lengths"],
            ref.unpack_bits(parts[f"{stream}_symbols"], ref.bit_width(domain), desc["symbols"]),
            ref.unpack_bits(
                parts[f"{stream}_blocks"], ref.bit_width(8 * desc["bytes"]), math.ceil(count / 256)
            ),
            count,
            desc["block"],
        )
        s = fresh.parametrizations.weight[0]
        if stream == "labels":
            assert np.array_equal(decoded, s.labels.reshape(-1).long().numpy())
        else:
            assert np.array_equal(np.cumsum(decoded + 1) - 1, s.positions.long().numpy())
