"""The GPU check's pytest plugin: a line per test as it happens, and the first CUDA error named.

Loaded with ``-p conformance.gpu_check.plugin`` (the check does so for every test part):

* ``--ws-stream PATH``: one line per test phase outcome, appended and flushed as it happens
  (``START nodeid`` before a test runs, then ``PASSED``/``FAILED``/``SKIPPED``/``ERROR nodeid
  seconds``), so a part killed at its time limit still says which tests passed, failed and which
  one was running. With xdist only the controller writes (it sees every worker's reports).
* After every test, when CUDA is initialized, the device is synchronized. A failing
  synchronization is an asynchronous error (an illegal address, a device-side assert) that the
  test just run left behind: that test fails with ``CUDA error left by <nodeid>``, and the run of
  the file stops there instead of failing every later test with the same sticky error.
* ``WS_GPU_CHECK_FAKE_CUDA_ERROR=SUBSTRING`` makes the check act as if the synchronization after
  the first test whose id contains SUBSTRING had failed: the dry run's proof of that path on a
  machine without CUDA.
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator
from pathlib import Path
from typing import IO

import pytest

#: the start of the message of a test that left a CUDA error (the check's summary looks for it)
MARK = "CUDA error left by"
FAKE = "WS_GPU_CHECK_FAKE_CUDA_ERROR"


class CudaErrorLeft(RuntimeError):
    """The device failed to synchronize after a test: the error that test left behind."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--ws-stream", default=None, help="append one line per test outcome here")


def _synchronize() -> None:
    """Wait for the device; raises the asynchronous error of the last kernels, if any."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class StreamWriter:
    """Writes the line stream (controller only) and stops the run at the first CUDA error."""

    def __init__(self, path: str | None, is_worker: bool) -> None:
        self.file: IO[str] | None = None
        if path and not is_worker:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a", encoding="utf-8", buffering=1)
        self.fake = os.environ.get(FAKE)
        self.session: pytest.Session | None = None

    def write(self, line: str) -> None:
        if self.file is not None:
            self.file.write(line.rstrip("\n") + "\n")
            self.file.flush()
            os.fsync(self.file.fileno())

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    @pytest.hookimpl
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.session = session
        self.write(f"SESSION {time.strftime('%Y-%m-%dT%H:%M:%S')} pid {os.getpid()}")

    @pytest.hookimpl
    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self.write(f"START {nodeid}")

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        failed_setup = report.when != "call" and not report.passed
        if report.when == "call" or failed_setup:
            outcome = report.outcome.upper()
            if report.when != "call" and report.failed:
                outcome = "ERROR"
            self.write(f"{outcome} {report.nodeid} {report.duration:.2f}s")
        if report.failed and MARK in str(report.longrepr) and self.session is not None:
            first = next(line for line in str(report.longrepr).splitlines() if MARK in line)
            first = first[first.index(MARK) :].strip()
            self.write(f"STOP {first}")
            self.session.shouldstop = first

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        try:
            return (yield)
        finally:
            self._check_device(item)

    def _check_device(self, item: pytest.Item) -> None:
        if self.fake and self.fake in item.nodeid:
            self.fake = None
            error: BaseException = RuntimeError(
                "simulated: an illegal memory access was encountered"
            )
        else:
            try:
                _synchronize()
                return
            except RuntimeError as e:
                error = e
        item.session.shouldstop = f"{MARK} {item.nodeid}"
        raise CudaErrorLeft(f"{MARK} {item.nodeid}: {error}") from error

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.write(f"END exit {int(exitstatus)}")
        self.close()


def pytest_configure(config: pytest.Config) -> None:
    writer = StreamWriter(config.getoption("--ws-stream"), hasattr(config, "workerinput"))
    config.pluginmanager.register(writer, "ws-gpu-check-stream")
