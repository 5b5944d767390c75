"""Resumable experiment runs (EXP-64) and each variant's own learning rate (EXP-7)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from experiments import protocol
from experiments._common import Context
from experiments._journal import JOURNAL, Journal
from experiments.cli import run_experiment

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["arbnets", "--dataset", "mnist5k", "--smoke", "--no-progress"]


def _without_times(value: object) -> object:
    skip = {"runtime_s", "measured_at", "journal", "seconds"}  # when, how long, what was reused
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if k not in skip}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


def _same_but_when(a: dict, b: dict) -> bool:
    """Equal summaries apart from when they ran, how long each run took and what was reused."""
    return _without_times(a) == _without_times(b)


def _runs(path: Path) -> int:
    return max(0, len(path.read_text(encoding="utf-8").splitlines()) - 1)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return run_experiment([*ARGS, "--out", str(tmp_path_factory.mktemp("whole"))])


@pytest.mark.req("EXP-64")
def test_a_killed_run_resumes_where_it_stopped(tmp_path: Path, uninterrupted: dict) -> None:
    journal = tmp_path / "arbnets" / JOURNAL
    cmd = [sys.executable, "-m", "experiments", *ARGS, "--out", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while (not journal.exists() or _runs(journal) < 3) and time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _runs(journal)
    total = sum(len(v["runs"]) for s in uninterrupted["settings"] for v in s["variants"].values())
    assert 3 <= done < total, "the kill came after the run had finished"
    assert not (tmp_path / "arbnets" / "summary.json").exists()

    resumed = run_experiment([*ARGS, "--out", str(tmp_path)])
    assert resumed["journal"]["reused"] == done
    assert resumed["journal"]["earlier_journal_stale"] is False
    assert _same_but_when(resumed, uninterrupted)


@pytest.mark.req("EXP-64")
def test_a_changed_configuration_starts_afresh(tmp_path: Path, uninterrupted: dict) -> None:
    run_experiment([*ARGS, "--out", str(tmp_path)])
    again = run_experiment([*ARGS, "--out", str(tmp_path)])
    assert again["journal"]["reused"] == _runs(tmp_path / "arbnets" / JOURNAL) > 0
    other = run_experiment([*ARGS, "--seeds", "1", "--out", str(tmp_path)])
    assert other["journal"]["reused"] == 0
    assert other["journal"]["earlier_journal_stale"] is True
    assert (tmp_path / "arbnets" / (JOURNAL + ".stale")).exists()
    fresh = run_experiment([*ARGS, "--out", str(tmp_path), "--seeds", "1", "--fresh"])
    assert fresh["journal"]["reused"] == 0
    assert fresh["journal"]["earlier_journal_stale"] is False


def _ctx(tmp_path: Path, journal: Journal | None = None) -> Context:
    return Context("t", "smoke", tmp_path, torch.device("cpu"), 1, journal=journal)


@pytest.mark.req("EXP-64")
def test_journal_keeps_nan_and_tensors_and_ignores_a_torn_line(tmp_path: Path) -> None:
    calls: list[tuple] = []

    def train(arm: str, value: float, seed: int) -> dict:
        calls.append((arm, value, seed))
        return {"val_acc": 0.5, "train_loss": float("nan"), "_weight": torch.arange(3.0)}

    first = protocol.Runs(train, _ctx(tmp_path, Journal(tmp_path, {"a": 1})), "s")
    first("x", 0.1, 0)
    first("x", 0.1, 1)
    with (tmp_path / JOURNAL).open("a", encoding="utf-8") as fh:
        fh.write('{"key": "[\\"s\\", \\"x\\", 0.1, 2]", "resu')  # killed mid-line
    again = protocol.Runs(train, _ctx(tmp_path, Journal(tmp_path, {"a": 1})), "s")
    got = again("x", 0.1, 1)
    assert torch.equal(got["_weight"], torch.arange(3.0))
    assert got["train_loss"] != got["train_loss"]  # NaN read back as NaN
    again("x", 0.1, 2)
    assert calls == [("x", 0.1, 0), ("x", 0.1, 1), ("x", 0.1, 2)]


@pytest.mark.req("EXP-64")
def test_each_runs_of_a_context_needs_its_own_scope(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    protocol.Runs(lambda a, v, s: {}, ctx, "tune")
    with pytest.raises(ValueError, match="scope 'tune' is already used"):
        protocol.Runs(lambda a, v, s: {}, ctx, "tune")


@pytest.mark.req("EXP-64")
def test_private_entries_must_be_tensors(tmp_path: Path) -> None:
    journal = Journal(tmp_path, {})
    with pytest.raises(TypeError, match="must be tensors"):
        journal.put("s", "x", 0.1, 0, {"_model": object()})


@pytest.mark.req("EXP-7")
def test_every_variant_tunes_its_own_learning_rate(tmp_path: Path) -> None:
    # the unbalanced table trains only at the small lr, the uniform one best at the large lr
    best = {"uniform": 0.1, "dirichlet α=0.01": 0.003}

    def train(arm: str, lr: float, seed: int) -> dict:
        return {"val_acc": 0.9 if lr == best[arm] else 0.1 + 0.01 * seed}

    runs = protocol.Runs(train, _ctx(tmp_path), "t")
    grid = [0.003, 0.01, 0.1]
    chosen = protocol.tune(runs, dict.fromkeys(best, grid), [0, 1, 2], "tune", "smaller")
    assert chosen == best


@pytest.mark.req("EXP-7")
def test_arbnets_records_each_variants_lr_and_grid(uninterrupted: dict) -> None:
    for setting in uninterrupted["settings"]:
        variants = setting["variants"]
        assert set(setting["lrs"]) == set(variants)
        tuned = {g["arm"] for g in setting["grid"]}
        assert tuned == set(variants)
        for label, v in variants.items():
            assert v["lr"] == setting["lrs"][label]
            assert all(r["lr"] == v["lr"] for r in v["runs"])
    json.dumps(uninterrupted, allow_nan=False)
