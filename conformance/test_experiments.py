"""Smoke tests of the experiments package: output schema, sanity, data loaders and metrics.

Each experiment runs with its ``--smoke`` preset (1 seed, 1 epoch, tiny grids); the claims
themselves are tested by the committed full runs, not here.
"""

from __future__ import annotations

import gzip
import json
import math
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conformance.offline import unrendered_math, unrendered_math_in
from experiments import EXPERIMENTS, data, factorization, metrics, protocol, shuffled_1d
from experiments._common import Context, MissingDependencyError, require
from experiments.cli import main, run_experiment
from experiments.models import CNN1D, LocalCNN, Net2CNN, conv1d_as_matrix, conv_as_matrix


def _smoke(name: str, out: Path, *extra: str) -> dict:
    return run_experiment([name, "--smoke", "--out", str(out), "--no-progress", *extra])


def _acc(entry: dict) -> None:
    assert 0.0 <= entry["mean"] <= 1.0
    assert entry["std"] >= 0.0


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, Path]]:
    """Every experiment's smoke run, once for the module."""
    out = tmp_path_factory.mktemp("experiments")
    return {name: (_smoke(name, out), out / name) for name in EXPERIMENTS}


@pytest.mark.req("EXP-1")
@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_experiment_writes_summary_table_and_figures(smoke_runs, name: str) -> None:
    summary, folder = smoke_runs[name]
    on_disk = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    assert on_disk["experiment"] == name == summary["experiment"]
    assert on_disk["preset"] == "smoke"
    assert on_disk["seeds"] == 1
    assert isinstance(on_disk["config"], dict)
    assert on_disk["runtime_s"] >= 0
    table = (folder / "table.md").read_text(encoding="utf-8")
    assert table.startswith("| ") and "| --- |" in table
    pngs = sorted(folder.glob("*.png"))
    assert pngs, f"{name} wrote no figure"
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _check_shuffled_schema(summary: dict) -> None:
    assert {"fc", "fc_wsr", "fc_l1", "cnn"} <= set(summary["models"])
    assert set(summary["models"]) <= {"fc", "fc_wsr", "fc_l1", "cnn", "fc_wsr_tied", "fc_wsr2"}
    for model in ("fc", "fc_wsr", "fc_l1", "cnn"):
        entry = summary["models"][model]
        for setting in ("original", "shuffled"):
            _acc(entry[setting])
            assert len(entry[setting]["runs"]) == summary["seeds"]
            assert 1 <= entry[setting]["num_distinct"]["mean"] <= entry[setting]["num_weights"]
            assert 0.0 <= entry[setting]["zero_fraction"]["mean"] <= 1.0
        assert 0.0 <= entry["conv_likeness"] <= 1.0
    # the CNN's first layer is a conv: its equivalent matrix is local by construction
    assert summary["models"]["cnn"]["conv_likeness"] == pytest.approx(1.0)
    assert summary["models"]["fc_wsr"]["original"]["lam"] > 0
    assert summary["models"]["fc"]["original"]["lam"] == 0


@pytest.mark.req("EXP-10", "EXP-14")
def test_shuffled_pixels_summary_schema_mnist1d(smoke_runs) -> None:
    summary, folder = smoke_runs["shuffled-pixels"]
    assert summary["dataset"] == "mnist1d"  # the default data set of this experiment
    _check_shuffled_schema(summary)
    assert summary["split_sizes"] == {"train": 4000, "val": 400, "test": 1000}
    assert summary["models"]["cnn"]["original"]["published"] == 94.0
    assert summary["models"]["fc"]["shuffled"]["published"] == 68.0
    anchors = summary["anchors"]
    assert 0.0 < anchors["random"]["locality"] < anchors["cnn_dense"]["locality"] == 1.0
    for model in ("fc", "fc_wsr", "fc_l1", "cnn"):
        assert 0.0 <= summary["models"][model]["sharing"] <= 1.0 + 1e-9
        assert 0.0 < summary["models"][model]["shuffled"]["peak"]["mean"] <= 1.0 + 1e-9
    assert summary["config"]["optimizer"] == "adam"
    # the optional variants at fc_wsr's strength: retrain mode (tied fc1) and prox on fc2 too
    for extra in ("fc_wsr_tied", "fc_wsr2"):
        assert (
            summary["models"][extra]["shuffled"]["lam"]
            == summary["models"]["fc_wsr"]["shuffled"]["lam"]
        )
    table = (folder / "table.md").read_text(encoding="utf-8")
    assert "published orig. (%)" in table and "| 94 |" in table
    assert (folder / "first_layer_heatmaps.png").is_file()
    assert (folder / "shared_values.png").is_file()


@pytest.mark.req("EXP-10")
def test_shuffled_pixels_summary_schema_digits(tmp_path: Path) -> None:
    summary = _smoke("shuffled-pixels", tmp_path, "--dataset", "digits")
    assert summary["dataset"] == "digits"
    _check_shuffled_schema(summary)
    sweep = {(t["model"], t["strength"]) for t in summary["tuning"] if t["setting"] == "original"}
    assert ("fc_wsr", summary["config"]["lam_grid"][0]) in sweep


@pytest.mark.req("EXP-11")
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), units=st.integers(1, 5))
def test_unshuffle_undoes_the_pixel_permutation(seed: int, units: int) -> None:
    shape = (1, 8, 8)
    perm = data.pixel_permutation(shape, seed)
    rng = np.random.default_rng(seed)
    w = torch.from_numpy(rng.standard_normal((units, 64)))
    x = torch.from_numpy(rng.standard_normal((3, 1, 8, 8)))
    split = data.Split(x, torch.zeros(3), x, torch.zeros(3), x, torch.zeros(3), name="t")
    xs = data.permute_pixels(split, perm).x_train
    w_orig = metrics.unshuffle_columns(w, perm)
    # a unit that sees shuffled pixels computes what its unshuffled twin computes on the original
    torch.testing.assert_close(xs.flatten(1) @ w.T, x.flatten(1) @ w_orig.T, rtol=1e-12, atol=1e-12)


@pytest.mark.req("EXP-12")
def test_conv_likeness_of_convs_and_of_spread_units() -> None:
    torch.manual_seed(0)
    cnn = LocalCNN((1, 8, 8), channels=3)
    assert metrics.conv_likeness(conv_as_matrix(cnn.conv1, (1, 8, 8)), (1, 8, 8)) == 1.0
    torus = Net2CNN(2, 2)
    m = conv_as_matrix(torus.conv1, (1, 6, 6))
    assert metrics.conv_likeness(m, (1, 6, 6), circular=True) == pytest.approx(1.0)
    assert metrics.conv_likeness(m, (1, 6, 6), circular=False) < 1.0  # wrapped kernels
    # two far-apart spikes on a zero background: the best 3x3 patch holds half the energy
    w = torch.zeros(1, 64)
    w[0, 0], w[0, 63] = 1.0, -1.0
    assert metrics.conv_likeness(w, (1, 8, 8)) == pytest.approx(0.5)
    # a constant row has no pattern (median-centred): score 0
    assert metrics.conv_likeness(torch.full((2, 64), 0.3), (1, 8, 8)) == 0.0
    assert 0.0 < metrics.random_locality((1, 8, 8)) < 0.5


@pytest.mark.req("EXP-2")
def test_same_seed_same_results(tmp_path: Path) -> None:
    a = _smoke("symmetry", tmp_path / "a")
    b = _smoke("symmetry", tmp_path / "b")
    for arch in a["models"]:
        for kind in a["models"][arch]:
            assert (
                a["models"][arch][kind]["runs"][0]["test_acc"]
                == (b["models"][arch][kind]["runs"][0]["test_acc"])
            )
            assert (
                a["models"][arch][kind]["runs"][0]["train_loss"]
                == (b["models"][arch][kind]["runs"][0]["train_loss"])
            )
    assert torch.are_deterministic_algorithms_enabled() is False  # restored after the run


@pytest.mark.req("EXP-3")
def test_digits_split_is_fixed_stratified_and_disjoint() -> None:
    a, b = data.load_digits(0), data.load_digits(0)
    assert a.sizes == {"train": 1078, "val": 359, "test": 360}
    torch.testing.assert_close(a.x_test, b.x_test)
    assert torch.bincount(a.y_test, minlength=10).min() >= 35
    y = np.asarray(torch.cat([a.y_train, a.y_val, a.y_test]))
    tr, va, te = data._stratified_split(np.sort(y), (0.6, 0.2), 0)
    assert len(np.unique(np.concatenate([tr, va, te]))) == len(tr) + len(va) + len(te) == 1797
    assert a.x_train.mean().abs() < 1e-5 and (a.x_train.std() - 1).abs() < 1e-3
    torus = data.load("digits-torus", None)
    torch.testing.assert_close(torus.y_test, a.y_test)
    # every torus image is a circular shift of its digits image: same multiset of pixels
    torch.testing.assert_close(
        torus.x_test.flatten(1).sort(1).values, a.x_test.flatten(1).sort(1).values
    )
    assert not torch.equal(torus.x_test, a.x_test)


@pytest.mark.req("EXP-6")
def test_mnist5k_split_is_fixed_stratified_and_carves_validation_by_seed() -> None:
    a, b, c = (data.load("mnist5k", None, seed) for seed in (0, 0, 1))
    assert a.image_shape == (1, 28, 28)
    assert a.sizes == {"train": 3600, "val": 400, "test": 1000}
    torch.testing.assert_close(a.x_val, b.x_val)  # fixed by the seed
    torch.testing.assert_close(a.x_test, c.x_test)  # the test set never changes
    assert not torch.equal(a.x_val, c.x_val)  # the validation slice does
    for split in (a, c):
        for y in (split.y_train, split.y_val, split.y_test):
            counts = torch.bincount(y, minlength=10)
            assert int(counts.min()) == int(counts.max())  # stratified: equal per class
    tr, va, te = data.mnist5k_indices(1)
    both = np.concatenate([tr, va, te])
    assert len(np.unique(both)) == 5000 == len(both)  # disjoint, all 5,000 digits
    assert abs(float(a.x_train.mean())) < 0.1 and abs(float(a.x_train.std()) - 1) < 0.1


@pytest.mark.req("EXP-6")
def test_mnist5k_torus_is_circular_shifts_of_the_resized_digits() -> None:
    plain = data.load("mnist5k", None, 2)
    torus = data.load_mnist5k_torus(2, copies=3)
    assert torus.image_shape == (1, 14, 14)
    assert torus.sizes == {"train": 3 * 3600, "val": 400, "test": 1000}
    torch.testing.assert_close(torus.y_train, plain.y_train.repeat_interleave(3))
    torch.testing.assert_close(torus.y_test, plain.y_test)
    # each copy is a torch.roll of one 14x14 image: the same multiset of pixels, other positions
    copies = torus.x_train[:3].flatten(1)
    torch.testing.assert_close(copies.sort(1).values, copies[:1].sort(1).values.expand(3, -1))
    side = torus.x_train[0, 0]
    rolls = [torch.roll(side, (dy, dx), (0, 1)) for dy in range(14) for dx in range(14)]
    for k in (1, 2):
        assert any(torch.equal(r, torus.x_train[k, 0]) for r in rolls)
    assert not torch.equal(torus.x_train[0], torus.x_train[1])
    # the test shifts are the same for every seed
    torch.testing.assert_close(data.load_mnist5k_torus(5, copies=1).x_test, torus.x_test)


def _write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> None:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)


def _fake_mnist(folder: Path, n_train: int = 200, n_test: int = 50) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    _write_idx(folder / data.MNIST_FILES["train_x"], rng.integers(0, 256, (n_train, 28, 28)), True)
    _write_idx(folder / data.MNIST_FILES["train_y"], np.arange(n_train) % 10)
    _write_idx(folder / data.MNIST_FILES["test_x"], rng.integers(0, 256, (n_test, 28, 28)))
    _write_idx(folder / data.MNIST_FILES["test_y"], np.arange(n_test) % 10, True)


@pytest.mark.req("EXP-4")
def test_mnist_loaders_read_local_idx_files(tmp_path: Path) -> None:
    _fake_mnist(tmp_path / "MNIST" / "raw")
    plain = data.load(name="mnist", data_dir=tmp_path)
    assert plain.image_shape == (1, 28, 28)
    assert sum(plain.sizes.values()) == 250
    torus = data.load(name="mnist-torus", data_dir=tmp_path)
    assert torus.image_shape == (1, 14, 14)
    assert torus.sizes == {"train": 120, "val": 20, "test": 50}
    assert set(torus.y_train.tolist()) == set(range(10))


@pytest.mark.req("EXP-4")
def test_missing_data_files_raise_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        data.load("mnist-torus", tmp_path)
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        data.load("cifar10", tmp_path)
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        data.load("mnist", None)
    with pytest.raises(ValueError, match="unknown data set"):
        data.load("imagenet", tmp_path)
    bad = tmp_path / "bad-idx"
    bad.write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not a uint8 idx file"):
        data.read_idx(bad)
    assert (
        main(
            [
                "shuffled-pixels",
                "--smoke",
                "--dataset",
                "mnist-torus",
                "--data-dir",
                str(tmp_path),
                "--out",
                str(tmp_path),
                "--no-progress",
            ]
        )
        == 2
    )


@pytest.mark.req("EXP-4", "EXP-13")
def test_torus_official_models_run_on_local_mnist(tmp_path: Path) -> None:
    _fake_mnist(tmp_path / "mnist")
    summary = _smoke(
        "shuffled-pixels", tmp_path / "out", "--dataset", "mnist-torus", "--data-dir", str(tmp_path)
    )
    assert summary["dataset"] == "mnist-torus"
    assert summary["config"]["circular"] is True
    for model in ("fc", "fc_wsr", "cnn"):
        _acc(summary["models"][model]["original"])
    assert summary["models"]["cnn"]["conv_likeness"] == pytest.approx(1.0)


@pytest.mark.req("EXP-5")
def test_missing_dependency_is_reported_by_name() -> None:
    with pytest.raises(MissingDependencyError, match=r"weightshare\.no_such_api"):
        require("weightshare", "no_such_api", experiment="demo")
    with pytest.raises(MissingDependencyError, match="no_such_module"):
        require("no_such_module", experiment="demo")


@pytest.mark.req("EXP-20")
def test_arbnets_summary_schema(smoke_runs) -> None:
    summary, _ = smoke_runs["arbnets"]
    variants = summary["variants"]
    assert {"uniform", "uniform+sign"} <= set(variants)
    assert any(v.startswith("dirichlet") for v in variants)
    assert any(v.startswith("neighborhood") for v in variants)
    hashed = variants["uniform"]["free_parameters"]
    dense = next(v for k, v in variants.items() if k.startswith("dense, uncompressed"))
    assert hashed < dense["free_parameters"]
    for v in variants.values():
        _acc(v)
        assert 0.0 <= v["entropy"]["mean"] <= 1.0 + 1e-12
    assert variants["neighborhood r=0"]["entropy"]["mean"] == pytest.approx(1.0, abs=0.02)


@pytest.mark.req("EXP-30")
def test_symmetry_summary_schema(smoke_runs) -> None:
    summary, _ = smoke_runs["symmetry"]
    for arch, kinds in summary["models"].items():
        assert "dense" in kinds, arch
        for kind, entry in kinds.items():
            _acc(entry)
            if kind != "dense":
                assert 0.0 < entry["parameter_cut"] < 1.0
                assert entry["free_parameters"] < kinds["dense"]["free_parameters"]


@pytest.mark.req("EXP-40", "EXP-41")
def test_factorization_summary_schema(smoke_runs) -> None:
    summary, _ = smoke_runs["factorization"]
    assert summary["dwf_runs"] and summary["pruning_runs"]
    for run in summary["dwf_runs"]:
        assert 0.0 <= run["test_acc"] <= 1.0
        assert run["cr"] >= 1.0 or math.isinf(run["cr"])
    for run in summary["pruning_runs"]:
        assert run["cr"] == pytest.approx(run["target"], rel=0.01)
    assert {r["finetuned"] for r in summary["pruning_runs"]} == {False, True}
    assert {"magnitude pruning", "magnitude pruning + fine-tuning"} <= set(summary["matched"])
    # the learning rate is tuned per depth on seed 0 over the whole lr grid
    assert set(summary["chosen_lr"]) == {str(d) for d in summary["config"]["depths"]}
    tuned = {(t["depth"], t["lr"]) for t in summary["lr_tuning"]}
    assert tuned == {
        (d, lr) for d in summary["config"]["depths"] for lr in summary["config"]["lr_grid"]
    }


@pytest.mark.req("EXP-41")
def test_factorization_runs_on_mnist1d(tmp_path: Path) -> None:
    summary = _smoke("factorization", tmp_path, "--dataset", "mnist1d")
    assert summary["dataset"] == "mnist1d"
    assert summary["split_sizes"] == {"train": 3600, "val": 400, "test": 1000}
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in summary["dwf_runs"])


def _fake_cifar(folder: Path, per_batch: int = 20, protocol: int | None = None) -> None:
    rng = np.random.default_rng(0)
    root = folder / data.CIFAR_DIR
    root.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in np.arange(per_batch) % 10],
        }
        (root / name).write_bytes(pickle.dumps(batch, protocol=protocol))


@pytest.mark.req("EXP-4")
def test_cifar10_official_models_run_on_local_pickles(tmp_path: Path) -> None:
    _fake_cifar(tmp_path)
    split = data.load("cifar10", tmp_path)
    assert split.image_shape == (3, 32, 32)
    assert split.sizes == {"train": 90, "val": 10, "test": 20}
    summary = _smoke(
        "shuffled-pixels", tmp_path / "out", "--dataset", "cifar10", "--data-dir", str(tmp_path)
    )
    assert summary["config"]["window"] == 9
    # S-Conv's 9x9 stride-2 conv, as a 3072 -> 16*16*ch matrix, is local at the 9x9 scale
    assert summary["models"]["cnn"]["conv_likeness"] == pytest.approx(1.0)
    for model in ("fc", "fc_wsr", "fc_l1", "cnn"):
        _acc(summary["models"][model]["shuffled"])


class _Runs:
    """Unpickles as ``call(*args)``: what a hostile pickle makes ``pickle.load`` do."""

    def __init__(self, call: object, *args: object) -> None:
        self.call, self.args = call, args

    def __reduce__(self) -> tuple:
        return self.call, self.args


@pytest.mark.req("EXP-8")
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_pickles_load_as_data(tmp_path: Path, protocol: int) -> None:
    _fake_cifar(tmp_path, protocol=protocol)  # protocol 2, as the real files
    split = data.load("cifar10", tmp_path)
    assert split.sizes == {"train": 90, "val": 10, "test": 20}
    batch = pickle.loads((tmp_path / data.CIFAR_DIR / "test_batch").read_bytes())
    assert split.y_test.tolist() == batch[b"labels"]
    pixels = torch.from_numpy(batch[b"data"].reshape(-1, 3, 32, 32).astype(np.float32))
    for c in range(3):  # standardised per channel: an increasing affine map of the pixels
        pairs = torch.stack([split.x_test[:, c].flatten(), pixels[:, c].flatten()])
        assert float(torch.corrcoef(pairs)[0, 1]) > 0.9999


@pytest.mark.req("EXP-8")
@pytest.mark.parametrize("how", ["os.system", "eval", "open"])
def test_cifar10_pickles_that_run_code_are_refused(tmp_path: Path, capsys, how: str) -> None:
    import builtins
    import os

    _fake_cifar(tmp_path, per_batch=10, protocol=2)
    marker = tmp_path / "ran"
    payload = {
        "os.system": _Runs(os.system, f"touch {marker}"),
        "eval": _Runs(builtins.eval, f"open({str(marker)!r}, 'w')"),
        "open": _Runs(builtins.open, str(marker), "w"),
    }[how]
    hostile = {b"data": np.zeros((10, 3072), np.uint8), b"labels": [0] * 10, b"x": payload}
    (tmp_path / data.CIFAR_DIR / "data_batch_2").write_bytes(pickle.dumps(hostile, protocol=2))
    with pytest.raises(data.DataFileError, match=r"data_batch_2 refused: it refers to \w+\.\w+"):
        data.load("cifar10", tmp_path)
    assert not marker.exists()
    argv = ["arbnets", "--smoke", "--dataset", "cifar10", "--data-dir", str(tmp_path)]
    assert main([*argv, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: CIFAR-10 file") and err.count("\n") == 1
    assert not marker.exists()


@pytest.mark.req("EXP-8")
def test_cifar10_batches_of_the_wrong_shape_are_refused(tmp_path: Path) -> None:
    _fake_cifar(tmp_path, per_batch=10, protocol=2)
    path = tmp_path / data.CIFAR_DIR / "test_batch"
    for batch, problem in [
        ([1, 2], "no uint8 array"),
        ({b"data": np.zeros((10, 3072), np.float32), b"labels": [0] * 10}, "no uint8 array"),
        ({b"data": np.zeros((10, 100), np.uint8), b"labels": [0] * 10}, r"not \(N, 3072\)"),
        ({b"data": np.zeros((10, 3072), np.uint8), b"labels": [0] * 9}, "9 labels for 10"),
        ({b"data": np.zeros((10, 3072), np.uint8), b"labels": [10] * 10}, "ints in 0..9"),
    ]:
        path.write_bytes(pickle.dumps(batch, protocol=2))
        with pytest.raises(data.DataFileError, match=problem):
            data.load("cifar10", tmp_path)
    whole = pickle.dumps({b"data": np.zeros((10, 3072), np.uint8), b"labels": [0] * 10})
    for broken in (whole[: len(whole) // 2], b"\x80\x02q\x00", b"not a pickle"):
        path.write_bytes(broken)
        with pytest.raises(data.DataFileError, match="test_batch refused"):
            data.load("cifar10", tmp_path)


@pytest.mark.req("EXP-9")
@pytest.mark.parametrize(
    "args, message",
    [
        (["--device", "foo"], "argument --device: expected cpu, cuda or cuda:N, got 'foo'"),
        (["--device", "meta"], "argument --device: expected cpu, cuda or cuda:N, got 'meta'"),
        (["--threads", "-1"], "argument --threads: expected a positive int, got -1"),
        (["--threads", "0"], "argument --threads: expected a positive int, got 0"),
        (["--threads", "two"], "argument --threads: expected a positive int, got 'two'"),
        (["--seeds", "0"], "argument --seeds: expected a positive int, got 0"),
        (["--dataset", "nope"], "argument --dataset: invalid choice: 'nope'"),
        (["--out", "{file}"], "argument --out: {file} exists and is not a directory"),
        (["--out", "{tmp}"], "--out: {tmp}/symmetry exists and is not a directory"),
        (["--data-dir", "/nonexistent"], "argument --data-dir: /nonexistent is not an existing"),
        (["--data-dir", "{file}"], "argument --data-dir: {file} is not an existing directory"),
        (["--data-dir", "{tmp}"], "--data-dir is read only by --dataset mnist, mnist-torus, "),
        (["--dataset", "mnist5k", "--data-dir", "{tmp}"], "this run uses mnist5k"),
        (["--dataset", "cifar10"], "--dataset cifar10 needs --data-dir"),
    ],
)
def test_cli_arguments_are_checked_before_anything_runs(
    tmp_path: Path, capsys, monkeypatch, args: list[str], message: str
) -> None:
    import importlib

    for module in EXPERIMENTS.values():
        monkeypatch.setattr(importlib.import_module(module, "experiments"), "run", None)
    file = tmp_path / "symmetry"  # a file where the output folder would go
    file.write_text("not a folder")
    fill = {"{file}": str(file), "{tmp}": str(tmp_path)}
    for key, value in fill.items():
        args = [a.replace(key, value) for a in args]
        message = message.replace(key, value)
    with pytest.raises(SystemExit) as exit_:
        main(["symmetry", "--smoke", *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line, no usage block, no traceback
    assert err.startswith("python -m experiments: error: ") and message in err, err


@pytest.mark.req("EXP-9")
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cli_refuses_cuda_without_a_device(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["symmetry", "--smoke", "--device", "cuda:0"])
    assert exit_.value.code == 2
    assert "--device cuda:0 was asked for but torch sees no CUDA device" in capsys.readouterr().err


@pytest.mark.req("EXP-14")
def test_mnist1d_is_generated_locally_with_a_validation_slice() -> None:
    tune, final = data.load("mnist1d", None), data.load_mnist1d(refit=True)
    assert tune.image_shape == final.image_shape == (1, 1, 40)
    assert tune.sizes == {"train": 3600, "val": 400, "test": 1000}
    assert final.sizes == {"train": 4000, "val": 400, "test": 1000}
    # the official test set, the same however the training set is split
    torch.testing.assert_close(tune.x_test, final.x_test)
    assert torch.bincount(final.y_test, minlength=10).min() > 50
    # validation and tuning-train are disjoint and together make up the 4,000 training signals
    both = torch.cat([tune.x_train, tune.x_val]).flatten(1)
    assert len(torch.unique(both, dim=0)) == 4000
    assert abs(float(final.x_train.mean())) < 0.05 and abs(float(final.x_train.std()) - 1) < 0.05
    torch.testing.assert_close(data.load_mnist1d().x_val, tune.x_val)  # fixed by the seed


@pytest.mark.req("EXP-15")
def test_conv_likeness_1d_anchors() -> None:
    torch.manual_seed(0)
    conv1 = CNN1D().conv1
    cnn = conv1d_as_matrix(conv1, 40)
    assert cnn.shape == (25 * 19, 40)
    x = torch.randn(3, 1, 40)
    with torch.no_grad():  # the dense matrix computes the conv (bias excluded)
        torch.testing.assert_close(
            (x.flatten(1) @ cnn.T).view(3, 25, 19), conv1(x) - conv1.bias[:, None]
        )
    likeness = metrics.conv_likeness_1d(cnn, window=5, templates=25)
    assert likeness["locality"] == pytest.approx(1.0)
    assert likeness["sharing"] > 0.95  # edge units see a truncated kernel
    # rows that are scaled translates of 2 templates are explained exactly by 2 templates
    rng = np.random.default_rng(0)
    t = rng.standard_normal((2, 5))
    rows = np.zeros((30, 40))
    for u in range(30):
        p = int(rng.integers(0, 36))
        rows[u, p : p + 5] = rng.uniform(0.5, 2) * t[u % 2]
    fit = metrics.conv_likeness_1d(torch.from_numpy(rows), window=5, templates=2)
    assert fit["locality"] == pytest.approx(1.0) and fit["sharing"] == pytest.approx(1.0)
    floor = metrics.random_conv_likeness_1d((256, 40), window=5, templates=25)
    assert 0.2 < floor["sharing"] < floor["locality"] < 0.4
    # a unit that reads one input has peak 1; a 5-tap kernel spreads its energy
    spikes = torch.zeros(3, 40)
    spikes[torch.arange(3), torch.tensor([0, 7, 39])] = torch.tensor([1.0, -2.0, 0.5])
    assert metrics.conv_likeness_1d(spikes, 5, 2)["peak"] == pytest.approx(1.0)
    assert likeness["peak"] < 0.9
    # constant rows do not count (no pattern)
    assert metrics.conv_likeness_1d(torch.ones(4, 40), 5, 2)["live_units"] == 0


@pytest.mark.req("EXP-16")
def test_unrendered_math_is_found_outside_math_and_code(tmp_path: Path) -> None:
    # the bug that was on the shuffled-pixels page: $$...$$ inside a paragraph
    bug = '<p>centred):\n$<span class="arithmatex">\\(s_u\\)</span>$\nthe share</p>'
    assert [t for _, t in unrendered_math_in(bug)] == ["centred): $", "$ the share"]
    assert unrendered_math_in("<p>a hash, $K = $ numel</p>") == [(1, "a hash, $K = $ numel")]
    fine = (
        '<p>cost <span class="arithmatex">\\($x\\)</span> and <code>echo $HOME</code></p>'
        '<div class="arithmatex">\\[ a \\]</div><pre><code>x = "$"</code></pre>'
        "<script>var s = '$';</script><p>no math<br>here</p>"
    )
    assert unrendered_math_in(fine) == []
    (tmp_path / "page").mkdir()
    (tmp_path / "page" / "index.html").write_text(bug, encoding="utf-8")
    found = unrendered_math(tmp_path)
    assert any("page/index.html" in line and "): $" in line for line in found)


@pytest.mark.req("EXP-60", "EXP-66")
def test_compression_summary_schema(smoke_runs) -> None:
    summary, _ = smoke_runs["compression"]
    assert summary["dataset"] == "mnist5k"
    recipes = summary["recipes"]
    assert {"dense", "wsr", "dwf-2", "hashed", "deep-compression"} <= set(recipes)
    dense = recipes["dense"]["dense"]
    assert dense["bytes"]["mean"] == summary["dense_bytes"]
    for by_setting in recipes.values():
        for s in by_setting.values():
            for run in s["runs"]:
                assert 0.0 <= run["test_acc"] <= 1.0 and run["bytes"] > 0
    # the hashed and Deep Compression files are smaller than the dense float32 file
    assert all(s["bytes"]["mean"] < dense["bytes"]["mean"] for s in recipes["hashed"].values())
    dc = recipes["deep-compression"]
    assert all(s["bytes"]["mean"] < dense["bytes"]["mean"] / 5 for s in dc.values())
    verdict = summary["verdict"]
    assert verdict["loss_points"] == 0.5 and verdict["goal_ratio"] == 40.0
    assert isinstance(verdict["goal_met"], bool) and verdict["text"]
    # EXP-66: coded and fixed-width bytes, the entropy bound and the payload's ratio to it
    assert summary["coded"] is True
    for by_setting in recipes.values():
        for s in by_setting.values():
            for run in s["runs"]:
                assert run["bytes"] <= run["fixed_bytes"] + 64 and run["header_bytes"] > 8
                bound = run["entropy_bound"]
                assert bound["bytes"] >= bound["float_bytes"] > 0
                payload = run["bytes"] - run["header_bytes"]
                assert run["entropy_ratio"] == pytest.approx(payload / bound["bytes"])
    dense_run = dense["runs"][0]  # no labels, no gaps: the payload is the bound
    assert dense_run["entropy_ratio"] == pytest.approx(1.0)
    assert verdict["entropy_within"] == (verdict["entropy_ratio_max"] <= 1.2)


@pytest.mark.req("EXP-65")
def test_compression_resumes_from_its_journal(
    smoke_runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from experiments import compression

    full, _ = smoke_runs["compression"]
    result, calls, k = compression._result, [], 3

    def interrupted(*args, **kwargs):
        if len(calls) == k:
            raise KeyboardInterrupt("stopped after k runs")
        calls.append(1)
        return result(*args, **kwargs)

    monkeypatch.setattr(compression, "_result", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _smoke("compression", tmp_path)
    monkeypatch.setattr(compression, "_result", result)
    again = _smoke("compression", tmp_path)  # the same command: the k runs are reused
    assert again["journal"]["reused"] == k and len(calls) == k
    # the dense run (first) was reused with its weights: Deep Compression starts from them
    assert json.loads(again["journal"]["reused_keys"][0])[1] == "dense"

    def comparable(summary: dict) -> dict:
        skip = ("runtime_s", "journal", "measured_at")
        return {key: v for key, v in summary.items() if key not in skip}

    assert comparable(again) == comparable(full)


@pytest.mark.req("EXP-67")
def test_compression_dc_wsr_recipe(smoke_runs) -> None:
    summary, _ = smoke_runs["compression"]
    cfg, dense = summary["config"], summary["recipes"]["dense"]["dense"]
    runs = [r for s in summary["recipes"]["dc-wsr"].values() for r in s["runs"]]
    assert len(runs) == len(cfg["dc_wsr_keep"]) * len(cfg["dc_wsr_grid"]) * summary["seeds"]
    for r in runs:
        assert r["keep"] in cfg["dc_wsr_keep"] and r["lam"] > 0 and 0.0 <= r["test_acc"] <= 1.0
        # pruned, tied and sparse: a file a fraction of the dense one
        assert r["bytes"] < dense["bytes"]["mean"] / 4


@pytest.mark.req("EXP-66")
def test_entropy_bound_of_tied_and_sparse_weights() -> None:
    import weightshare as ws
    from experiments._entropy import entropy_bits, entropy_bound, gaps

    assert entropy_bits(torch.tensor([0, 0, 1, 1])) == pytest.approx(4.0)
    assert entropy_bits(torch.tensor([3, 3, 3])) == 0.0
    assert gaps(torch.tensor([2, 3, 7])).tolist() == [2, 0, 3]
    tied = torch.nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        tied.weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 2.0], [2.0, 3.0, 1.0, 1.0]]))
    ws.compress(tied)  # 3 distinct values in 8 entries: tied
    h = -(5 * math.log2(5 / 8) + 2 * math.log2(2 / 8) + math.log2(1 / 8))
    bound = entropy_bound(tied)
    assert bound["float_bytes"] == 3 * 4 and bound["label_bytes"] == pytest.approx(h / 8, abs=0.1)
    sparse = torch.nn.Linear(64, 4)
    with torch.no_grad():
        sparse.weight.zero_()
        sparse.weight.view(-1)[torch.tensor([0, 5, 10, 15, 20, 40])] = 0.5
    ws.compress(sparse)  # one non-zero value: sparse-tied, K = 1 (labels of 0 bits)
    bound = entropy_bound(sparse)
    g = -(4 * math.log2(4 / 6) + math.log2(1 / 6) + math.log2(1 / 6))  # gaps 0, 4, 4, 4, 4, 19
    assert bound["label_bytes"] == 0 and bound["gap_bytes"] == pytest.approx(g / 8, abs=0.1)
    assert bound["float_bytes"] == 4 + 4 * 4  # the codebook and the bias


@pytest.mark.req("EXP-7")
def test_paired_interval_and_verdict_rule_on_known_values() -> None:
    # d = 1..5: mean 3, sd sqrt(2.5), t(0.975, 4) = 2.7764451; half-width 1.9632432
    p = protocol.paired([1.0, 2.0, 3.0, 4.0, 5.0], [0.0] * 5)
    assert p["n"] == 5 and p["mean"] == pytest.approx(3.0)
    assert p["std"] == pytest.approx(math.sqrt(2.5))
    assert p["low"] == pytest.approx(1.0367568, abs=1e-6)
    assert p["high"] == pytest.approx(4.9632432, abs=1e-6)
    assert protocol.verdict(p, ">") == "reproduced"
    assert protocol.verdict(p, "<") == "not reproduced"
    # paired, not pooled: a constant offset of 0.5 over noisy pairs is an exact interval
    q = protocol.paired([0.8, 0.3, 0.9], [0.3, -0.2, 0.4])
    assert q["low"] == pytest.approx(0.5) and q["high"] == pytest.approx(0.5)
    # an interval that holds 0 is inconclusive, whatever its mean
    r = protocol.paired([1.0, -1.0, 2.0], [0.0, 0.0, 0.0])
    assert r["low"] < 0 < r["high"] and protocol.verdict(r, ">") == "inconclusive"
    # t(0.975, 2) = 4.3026527: mean 2/3, sd 1.5275252, half-width 3.7945
    assert r["high"] - r["mean"] == pytest.approx(4.3026527 * 1.5275252 / math.sqrt(3), 1e-6)
    one = protocol.paired([0.9], [0.1])
    assert math.isnan(one["low"]) and protocol.verdict(one) == "inconclusive"
    c = protocol.claim("x beats y", "x", "y", [0.91, 0.92, 0.93], [0.895, 0.90, 0.905])
    assert c["paired"]["mean"] == pytest.approx(2.0) and c["verdict"] == "reproduced"
    with pytest.raises(ValueError, match="as many"):
        protocol.paired([1.0], [1.0, 2.0])


@pytest.mark.req("EXP-7")
def test_tuning_takes_the_mean_over_seeds_and_ties_go_to_the_stronger() -> None:
    # seed 0 alone prefers 0.1; the mean over three seeds prefers 0.3
    val = {(0.1, 0): 0.9, (0.1, 1): 0.5, (0.1, 2): 0.5, (0.3, 0): 0.8, (0.3, 1): 0.7}
    val[(0.3, 2)] = 0.7
    val.update({(1.0, s): v for s, v in enumerate((0.7, 0.8, 0.7))})  # ties 0.3's mean
    calls = []

    def train(arm, value, seed):
        calls.append((arm, value, seed))
        return {"val_acc": val[(value, seed)]}

    ctx = Context("t", "smoke", Path("."), torch.device("cpu"), 5, progress=False)
    runs = protocol.Runs(train, ctx)
    grid = {"a": [0.1, 0.3, 1.0]}
    assert protocol.tune(runs, grid, [0], "t") == {"a": 0.1}
    assert protocol.tune(runs, grid, [0, 1, 2], "t") == {"a": 1.0}  # tie: the stronger
    assert protocol.tune(runs, grid, [0, 1, 2], "t", tie="smaller") == {"a": 0.3}
    assert len(calls) == 9  # every (arm, value, seed) trained once
    record = protocol.grid_record(runs, grid, [0, 1, 2])
    assert record[0]["val_mean"] == pytest.approx(19 / 30) and len(record) == 3


def _check_protocol(summary: dict) -> None:
    """EXP-7: the tuning seeds, the grid with every tuning mean and std, the paired claims."""
    assert summary["tuning_seeds"] >= 2 and summary["seeds"] >= 2
    for point in summary["grid"]:
        assert len(point["val"]) == summary["tuning_seeds"]
        assert point["val_mean"] == pytest.approx(float(np.mean(point["val"])))
        assert point["val_std"] == pytest.approx(float(np.std(point["val"])))
    assert summary["claims"]
    for c in summary["claims"]:
        p = c["paired"]
        assert p["n"] == summary["seeds"] == len(p["differences"])
        assert p["low"] <= p["mean"] <= p["high"]
        k = c["diverged"]  # EXP-61: a comparison with a diverged run is judged diverged
        if k["method"] or k["control"]:
            assert c["verdict"] == protocol.diverged_verdict(
                c["method"], c["control"], k["method"], k["control"], p["n"]
            )
        else:
            assert c["verdict"] == protocol.verdict(p, c["direction"])


@pytest.mark.req("EXP-7", "EXP-13")
def test_shuffled_pixels_on_the_mnist5k_torus(tmp_path: Path) -> None:
    summary = _smoke("shuffled-pixels", tmp_path, "--dataset", "mnist5k-torus")
    assert summary["dataset"] == "mnist5k-torus"
    _check_shuffled_schema(summary)
    _check_protocol(summary)
    assert summary["split_sizes"] == {"train": 4 * 3600, "val": 400, "test": 1000}
    # the circular CNN's first layer is explained exactly by its alpha1 shifted kernels
    assert summary["models"]["cnn"]["sharing"] == pytest.approx(1.0)
    assert 0.0 <= summary["models"]["fc_wsr"]["sharing"] < 1.0
    assert {c["control"] for c in summary["claims"]} == {"fc", "fc_l1", "cnn"}


@pytest.mark.req("EXP-7", "EXP-41", "EXP-61")
def test_factorization_on_mnist5k_with_the_protocol(tmp_path: Path) -> None:
    summary = _smoke("factorization", tmp_path, "--dataset", "mnist5k")
    assert summary["dataset"] == "mnist5k"
    assert summary["split_sizes"] == {"train": 3600, "val": 400, "test": 1000}
    _check_protocol(summary)
    table = (tmp_path / "factorization" / "table.md").read_text(encoding="utf-8")
    assert table == factorization.protocol_table(summary)  # the page's table, from the summary
    assert "| diverged runs |" in table and "nan" not in table  # EXP-61
    methods = {r["method"] for r in summary["pruning_runs"]}
    assert methods == {
        "magnitude pruning",
        "magnitude pruning + fine-tuning",
        "random pruning at init",
        "SNIP at init",
    }
    for run in summary["pruning_runs"]:
        assert run["cr"] == pytest.approx(run["target"], rel=0.01)
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in summary["dwf_runs"])


@pytest.mark.req("EXP-7", "EXP-20", "EXP-61")
def test_arbnets_on_mnist5k_with_the_protocol(tmp_path: Path) -> None:
    summary = _smoke("arbnets", tmp_path, "--dataset", "mnist5k")
    assert summary["dataset"] == "mnist5k"
    _check_protocol(summary)
    table = (tmp_path / "arbnets" / "table.md").read_text(encoding="utf-8")
    assert "| diverged runs |" in table and f" of {summary['seeds']} |" in table  # per variant
    assert len(summary["settings"]) == len(summary["config"]["settings"]) >= 2
    for setting in summary["settings"]:
        v = setting["variants"]
        assert v["uniform"]["free_parameters"] < v["dense, uncompressed"]["free_parameters"]
        assert len(setting["claims"]) == 4  # balance x2, determinism (K and K + 1)
        assert v["neighborhood r=0"]["entropy"]["mean"] == pytest.approx(1.0, abs=0.02)


@pytest.mark.req("EXP-17")
def test_the_demo_runs_at_the_strengths_the_published_full_run_chose() -> None:
    path = Path(__file__).resolve().parent.parent / "spec/experiments/assets"
    full = json.loads((path / "shuffled-pixels-mnist1d/summary.json").read_text("utf-8"))
    assert full["preset"] == "full" and full["tuning_seeds"] >= 3
    quick = shuffled_1d.CONFIGS["quick"]
    for model, grid in (("fc_wsr", "lam_grid"), ("fc_l1", "l1_grid")):
        for setting in ("original", "shuffled"):
            assert quick[grid] == [full["models"][model][setting]["lam"]], (model, setting)
