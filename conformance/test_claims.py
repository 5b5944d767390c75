"""The published claims: divergence as a verdict, the forest plot, the measured-at stamps
(EXP-61..EXP-63), checked on small runs and on the committed summaries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from experiments import factorization, protocol, publish
from experiments.data import load_digits
from experiments.models import MLP
from experiments.train import TrainConfig, fit

ASSETS = publish.ASSETS


def _summary(name: str) -> dict:
    return json.loads((ASSETS / name / "summary.json").read_text(encoding="utf-8"))


@pytest.mark.req("EXP-61")
def test_a_deliberately_diverging_run_is_flagged_and_judged_diverged() -> None:
    data = load_digits(0)
    runs = {}
    for lr in (0.05, 1e6):  # the second blows the loss up
        torch.manual_seed(0)
        model = MLP(64, [32])
        runs[lr] = fit(model, data, TrainConfig(1, lr, 64), seed=0)
    assert not protocol.is_diverged(runs[0.05])
    assert protocol.is_diverged(runs[1e6])
    c = protocol.claim(
        "x beats y",
        "x",
        "y",
        [runs[0.05]["test_acc"]] * 3,
        [runs[1e6]["test_acc"]] * 3,
        diverged=([False] * 3, [protocol.is_diverged(runs[1e6])] * 3),
    )
    assert c["verdict"] == "diverged: `y` 3 of 3 seeds"
    assert c["diverged"] == {"method": 0, "control": 3}


@pytest.mark.req("EXP-61")
def test_is_diverged_reads_the_flag_the_loss_and_chance() -> None:
    ok = {"diverged": False, "train_loss": 0.1, "test_acc": 0.9}
    assert not protocol.is_diverged(ok)
    assert protocol.is_diverged({**ok, "diverged": True})
    assert protocol.is_diverged({**ok, "train_loss": None})  # NaN written as null
    assert protocol.is_diverged({**ok, "train_loss": float("inf")})
    assert protocol.is_diverged({**ok, "test_acc": 0.11})  # stayed at chance (10 classes)
    assert not protocol.is_diverged({**ok, "test_acc": 0.3})
    assert protocol.is_diverged({**ok, "test_acc": 0.5}, classes=2)
    both = protocol.claim(
        "a", "m", "c", [0.1, 0.2], [0.1, 0.1], diverged=([True, False], [True, True])
    )
    assert both["verdict"] == "diverged: `m` 1 of 2 seeds, `c` 2 of 2 seeds"
    plain = protocol.claim("a", "m", "c", [0.9, 0.91, 0.92], [0.5, 0.52, 0.5])
    assert plain["verdict"] == "reproduced" and plain["diverged"] == {"method": 0, "control": 0}


@pytest.mark.req("EXP-61")
def test_committed_claims_with_diverged_runs_are_judged_diverged() -> None:
    arb = {c["claim"]: c for c in publish.judged(_summary("arbnets-mnist5k"))}
    c = arb["balance helps: uniform beats dirichlet α=0.01 (1000-1000 at 1/64)"]
    assert c["verdict"] == "diverged: `dirichlet α=0.01` 4 of 5 seeds"
    # a comparison of two runs that trained keeps its verdict
    assert arb["determinism helps: r=0 beats r=1024 (1000 at 1/8)"]["verdict"] == "not reproduced"
    dwf = {c["claim"]: c for c in publish.judged(_summary("factorization-mnist5k"))}
    assert dwf["DWF D=4 beats DWF D=2 at CR ≥ 128"]["verdict"] == "diverged: `DWF D=4` 1 of 5 seeds"
    assert dwf["DWF D=3 beats SNIP at init at CR ≥ 128"]["verdict"] == "reproduced"


@pytest.mark.req("EXP-61")
def test_dwf_table_gives_per_seed_crs_instead_of_nan() -> None:
    summary = _summary("factorization-mnist5k")
    table = factorization.protocol_table({**summary, "claims": publish.judged(summary)})
    assert "nan" not in table
    assert "CR per seed 638/767/1065/–/588" in table
    assert "| DWF D=4 |" in table and "1 of 5 |" in table
    committed = publish.SNIPPETS / "factorization-mnist5k.md"
    assert committed.read_text(encoding="utf-8") == table, "run python -m experiments publish"


@pytest.mark.req("EXP-61")
def test_index_counts_diverged_runs_per_variant_and_is_current() -> None:
    text = publish.claims_index()
    assert "| arbnets | mnist5k | 1000-1000 at 1/64: dirichlet α=0.01 | 4 of 5 |" in text
    assert "| factorization | mnist5k | DWF D=4 @ CR ≥ 128 | 1 of 5 |" in text
    committed = publish.SNIPPETS / "claims.md"
    assert committed.read_text(encoding="utf-8") == text, "run python -m experiments publish"


@pytest.mark.req("EXP-62")
def test_index_opens_with_the_current_forest_plot(tmp_path: Path) -> None:
    index = (publish.ROOT / "spec" / "experiments" / "index.md").read_text(encoding="utf-8")
    embed = index.index("](assets/claims-forest.png)")
    assert embed < index.index('--8<-- "_snippets/experiments/claims.md"')
    assert embed < index.index("\n## ")  # before the first section: the page opens with it
    fresh = publish.forest_plot(tmp_path / "forest.png").read_bytes()
    assert fresh[:8] == b"\x89PNG\r\n\x1a\n"
    assert fresh == publish.FOREST.read_bytes(), "run python -m experiments publish"


@pytest.mark.req("EXP-62")
def test_claims_table_is_grouped_by_paper() -> None:
    text = publish.claims_index()
    heads = [line for line in text.splitlines() if line.startswith("#### ")]
    papers = [publish.PAPERS[e] for e in ("shuffled-pixels", "arbnets", "factorization")]
    assert heads[:3] == [f"#### {p}" for p in papers]
    arb = text.index(f"#### {papers[1]}")
    dwf = text.index(f"#### {papers[2]}")
    assert "arbnets:" in text[arb:dwf] and "factorization:" not in text[arb:dwf]


@pytest.mark.req("EXP-61")
def test_published_page_tables_carry_the_judged_verdicts() -> None:
    snippet = (publish.SNIPPETS / "arbnets-mnist5k.md").read_text(encoding="utf-8")
    judged = publish.judged(_summary("arbnets-mnist5k"))
    assert publish._rejudge_rows(snippet, judged) == snippet, "run python -m experiments publish"
    row = next(
        line
        for line in snippet.splitlines()
        if line.startswith("| balance helps: uniform beats dirichlet α=0.01 (1000-1000")
    )
    assert row.endswith("| **diverged: `dirichlet α=0.01` 4 of 5 seeds** |")


def _bench_json(path: Path, **top: object) -> Path:
    bench = {
        "extra_info": {"dtype": "float64", "kind": "random", "rows": 1, "d": 10, "impl": "auto"},
        "stats": {"median": 1e-3},
    }
    path.write_text(json.dumps({"machine_info": {}, "benchmarks": [bench], **top}), "utf-8")
    return path


@pytest.mark.req("EXP-63")
def test_benchmark_report_is_stamped_with_the_run_commit_and_date(tmp_path: Path) -> None:
    from conformance.benchmarks import report

    info = {"id": "0123456789abcdef0123", "dirty": True}
    stamped = _bench_json(tmp_path / "a.json", commit_info=info, datetime="2026-12-01T10:00:00")
    text = report.render(stamped)
    assert text.startswith("Measured at commit 0123456789ab-dirty on 2026-12-01.\n")
    bare = report.render(_bench_json(tmp_path / "b.json"))
    assert bare.startswith("Measured at commit not recorded on not recorded.\n")
    assert "Load average not recorded." in bare


@pytest.mark.req("EXP-63")
def test_benchmark_report_gives_the_load_the_cases_ran_under(tmp_path: Path) -> None:
    from conformance.benchmarks import report

    path = _bench_json(tmp_path / "a.json")
    data = json.loads(path.read_text("utf-8"))
    first = data["benchmarks"][0]
    data["benchmarks"] = [
        {**first, "extra_info": {**first["extra_info"], "load": load, "impl": impl}}
        for load, impl in (("0.52", "auto"), ("3.97", "argsort"))
    ]
    path.write_text(json.dumps(data), "utf-8")
    assert "load average while the cases ran: 0.5 to 4.0" in report.render(path)


@pytest.mark.req("EXP-63")
def test_generated_tables_do_not_make_a_stamp_dirty(tmp_path: Path) -> None:
    import shutil
    import subprocess

    from experiments import _stamp

    if shutil.which("git") is None:
        pytest.skip("git is not installed")

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    snippet = tmp_path / "spec" / "_snippets" / "t.md"
    snippet.parent.mkdir(parents=True)
    snippet.write_text("old\n", "utf-8")
    (tmp_path / "code.py").write_text("x = 1\n", "utf-8")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    clean = _stamp.current_commit(tmp_path)
    assert clean is not None and len(clean) == 12
    snippet.write_text("a table written by an earlier benchmark\n", "utf-8")
    assert _stamp.current_commit(tmp_path) == clean
    (tmp_path / "code.py").write_text("x = 2\n", "utf-8")
    assert _stamp.current_commit(tmp_path) == clean + "-dirty"
    assert _stamp.current_commit(tmp_path / "no-such-folder") is None


@pytest.mark.req("EXP-63")
def test_storage_tables_and_summaries_are_stamped() -> None:
    import subprocess

    from conformance.benchmarks import _stamp, coding, storage

    text = storage.render([], [], _stamp.stamp("abc", "2026-12-04"))
    assert text.startswith("Measured at commit abc on 2026-12-04.\n\n| module |")
    rows = [("`w`", 1, 2, 3, 4.0)]
    text = coding.render(rows, (10, 5), [(2.0, 1.0), (3.0, 1.5)], _stamp.stamp("abc", "2026-12-04"))
    assert text.startswith("Measured at commit abc on 2026-12-04.\n\n| weight |")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=publish.ROOT, capture_output=True, text=True
    )
    commit = _stamp.current_commit()
    at = protocol.measured_at()
    if head.returncode == 0:  # a checkout: the stamp names its commit
        assert commit is not None and head.stdout.startswith(commit[:12])
        assert at["commit"] == commit
    assert at["date"] == _stamp.today()
    summary = {"measured_at": {"commit": "abc", "date": "2026-12-04"}}
    assert publish._measured(summary) == "commit abc on 2026-12-04"
    assert publish._measured({}) == "commit not recorded on not recorded"
    for name in ("performance", "storage", "coding"):  # the committed tables say so too
        first = (publish.ROOT / "spec" / "_snippets" / f"{name}.md").read_text("utf-8")
        assert first.startswith("Measured at commit ")
