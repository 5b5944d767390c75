"""The GPU check's harness (spec/conformance.md, "The GPU check"), without a GPU.

The pytest plugin runs in a child pytest on a small generated test file; a simulated CUDA error
(``WS_GPU_CHECK_FAKE_CUDA_ERROR``) stands in for an asynchronous device error. The whole check
runs as ``make gpu-check-dry-run`` in CI; these tests prove the parts it cannot show by passing.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conformance.gpu_check import parts, summary
from conformance.gpu_check.plugin import FAKE, MARK

ROOT = Path(__file__).resolve().parent.parent

SAMPLE = """
import pytest

def test_a():
    pass

def test_b_leaves_an_error():
    pass

def test_c():
    pass

def test_d():
    pass
"""


def _run_sample(tmp_path: Path, *extra: str, fake: str | None = None) -> tuple[int, str, Path]:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    stream = tmp_path / "stream.txt"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop(FAKE, None)
    if fake:
        env[FAKE] = fake
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "test_sample.py", "-p", "conformance.gpu_check.plugin",
         f"--ws-stream={stream}", "-p", "no:cacheprovider", "-W", "error", "-q",
         "-o", "addopts=", *extra],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr, stream


@pytest.mark.req("CONF-5")
def test_stream_has_a_line_per_test_as_it_happens(tmp_path: Path) -> None:
    code, output, stream = _run_sample(tmp_path)
    assert code == 0, output
    lines = stream.read_text().splitlines()
    assert lines[0].startswith("SESSION ")
    assert lines[-1] == "END exit 0"
    assert [ln.split()[0] for ln in lines[1:-1]] == ["START", "PASSED"] * 4
    counts, running, notable = summary.read_stream(stream)
    assert counts["PASSED"] == 4 and running is None and notable == []


@pytest.mark.req("CONF-6")
def test_a_cuda_error_is_named_and_stops_the_file(tmp_path: Path) -> None:
    code, output, stream = _run_sample(tmp_path, fake="test_b_leaves_an_error")
    assert code != 0
    text = stream.read_text()
    assert f"STOP {MARK} test_sample.py::test_b_leaves_an_error" in text
    assert "test_c" not in text and "test_d" not in text  # the rest of the file did not run
    counts, _, notable = summary.read_stream(stream)
    assert counts["PASSED"] == 1 and counts["FAILED"] == 1
    assert notable[0].startswith(f"{MARK} test_sample.py::test_b_leaves_an_error")
    assert "simulated: an illegal memory access" in output


@pytest.mark.req("CONF-6")
@pytest.mark.skipif(importlib.util.find_spec("xdist") is None, reason="needs pytest-xdist")
def test_the_plugin_works_under_xdist(tmp_path: Path) -> None:
    """No INTERNALERROR with workers and warnings as errors; the controller writes the stream."""
    code, output, stream = _run_sample(tmp_path, "-n", "2", "-p", "benchmark", "--benchmark-skip")
    assert code == 0, output
    assert "INTERNALERROR" not in output
    counts, _, _ = summary.read_stream(stream)
    assert counts["PASSED"] == 4
    code, output, stream = _run_sample(tmp_path, "-n", "2", fake="test_b_leaves_an_error")
    assert code != 0 and "INTERNALERROR" not in output, output
    assert f"{MARK} test_sample.py::test_b_leaves_an_error" in stream.read_text()


@pytest.mark.req("CONF-4")
def test_a_part_past_its_limit_is_killed_with_its_children(tmp_path: Path) -> None:
    """The whole process group goes (a pytest and its workers, a world of ranks)."""
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    part = parts.Part("sleeper", [sys.executable, "-c", script], timeout=60.0, log="sleeper.log")
    parts.run_part(part, tmp_path, dict(os.environ), budget_left=5.0)
    assert part.status == "timed out after 5 s"
    assert "started" in (tmp_path / "sleeper.log").read_text()
    assert not _alive(int(pid_file.read_text()))


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a killed child that init has not reaped yet is a zombie: gone)."""
    deadline = time.perf_counter() + 10
    while time.perf_counter() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        if state == "Z":
            return False
        time.sleep(0.1)
    return True


@pytest.mark.req("CONF-4")
def test_summary_of_a_killed_part_says_what_was_running(tmp_path: Path) -> None:
    (tmp_path / "tests-x.txt").write_text(
        "SESSION t pid 1\nSTART a.py::t1\nPASSED a.py::t1 0.1s\nSTART a.py::t2\n"
    )
    part = parts.Part("tests x", [], 1.0, "pytest-x.txt", ["tests-x.txt"], "tests-x.txt")
    waiting = parts.Part("prox bench", [], 1.0, "prox-bench.log")
    part.status, part.seconds = "timed out after 1 s", 1.0
    summary.write([part, waiting], tmp_path, ["- header"])
    text = (tmp_path / "summary.md").read_text()
    assert "| tests x | timed out after 1 s | 1 / 0 / 0 / 0 |" in text
    assert "killed while running `a.py::t2`" in text
    assert "| prox bench | not reached |" in text


@pytest.mark.req("CONF-7")
def test_ranks_find_the_package_through_the_parents_path(tmp_path: Path) -> None:
    """A world started from a process that imports weightshare through PYTHONPATH (the GPU
    check's tree of links, nothing installed) passes that path on to its ranks."""
    from conformance.distributed.spawn import run_world

    marker = tmp_path / "only_here"
    marker.mkdir()
    (marker / "found_me.py").write_text("WHERE = 'parent path'\n")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(marker)
    try:
        script = tmp_path / "rank.py"
        script.write_text("import found_me, conformance\nprint(found_me.WHERE)\n")
        logs = run_world(str(script), 2, [], timeout=60)
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    assert all("parent path" in log for log in logs)


@pytest.mark.req("CONF-8")
def test_training_table_names_every_goal() -> None:
    from conformance.benchmarks import gpu_tables

    records = [
        {"what": "setting", "model": "m", "batch": 2, "precision": "bf16", "attached": 54,
         "values": 10, "hashed": "h"},
        {"what": "step", "ms": 10.0}, {"what": "step attach", "ms": 12.0},
        {"what": "sort concat", "ms": 1.0}, {"what": "prox_many", "ms": 3.0},
    ]  # fmt: skip
    table = gpu_tables.render_train({}, records)
    assert (
        "| ResNet-50 step with `ws.attach` / without | 12.000 | 10.000 | 1.20 | ≤ 1.10 |" in table
    )
    row = "| `prox_many` of the 54 weights / one sort of their concatenation |"
    assert f"{row} 3.000 | 1.000 | 3.00 | ≤ 2.5 |" in table
    assert "| `HashedLinear` fwd+bwd / `nn.Linear` | not measured | | | ≤ 2 |" in table


@pytest.mark.req("CONF-8")
def test_resnet50_stand_in_has_the_54_weights() -> None:
    import torch

    from conformance.benchmarks import resnet
    from conformance.benchmarks.gpu import resnet50_weight_shapes

    shapes = [tuple(p.shape) for p in resnet.resnet50().parameters() if p.ndim >= 2]
    assert shapes == resnet50_weight_shapes()
    assert len(shapes) == 54
    small = resnet.resnet50(32)
    out = small(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 1000)
    assert [tuple(p.shape) for p in small.parameters() if p.ndim >= 2] == resnet.bottleneck_plan(32)


@pytest.mark.req("CONF-9", "CONF-4")
def test_dry_run_in_a_python_without_the_project(tmp_path: Path) -> None:
    """The harness in a venv that sees the dependencies but not the installed project."""
    import sysconfig

    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    python = bare / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    missing = subprocess.run([python, "-c", "import weightshare"], env=env, capture_output=True)
    assert missing.returncode != 0  # the project is not importable there by itself
    out = tmp_path / "out"
    proc = subprocess.run(
        [python, "-m", "conformance.gpu_check", "--out", str(out), "--dry-run",
         "--parts", "tests", "--suites", "test_penalty.py", "--select", "cuda or fails_nowhere"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (out / "summary.md").read_text()
    assert "| tests test_penalty | passed |" in text
    assert "dry run on the CPU" in text
    assert (out / "junit-test_penalty.xml").exists()
    assert "END exit 0" in (out / "tests-test_penalty.txt").read_text()
