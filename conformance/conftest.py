"""Shared fixtures and hypothesis profiles for the conformance suite.

Profiles: ``dev`` (default locally, quick), ``ci`` (hypothesis' own, selected when ``CI`` is set:
derandomized, no deadline), ``gpu-check`` (``ci`` without shrinking) and ``thorough`` (for release
checks). Choose one with
``--hypothesis-profile NAME`` or ``HYPOTHESIS_PROFILE``.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, settings

settings.register_profile(
    "ci",
    parent=settings.get_profile("ci"),
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=30, deadline=None)
# the GPU check: a failure is reported as found, without the shrinking that can take many
# seconds per test on a device whose time is scarce
settings.register_profile(
    "gpu-check",
    parent=settings.get_profile("ci"),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
settings.register_profile(
    "thorough", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
if "HYPOTHESIS_PROFILE" in os.environ:
    settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])
elif os.environ.get("CI"):
    settings.load_profile("ci")
else:
    settings.load_profile("dev")


def _interpret_triton() -> None:
    """Without CUDA, Triton kernels run on CPU tensors in Triton's interpreter.

    The variable is read when a kernel is defined, so it is set before any test imports
    weightshare's Triton module (imported on first use).
    """
    try:
        import torch
    except ImportError:  # pragma: no cover - the reference suite runs without torch
        return
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


_interpret_triton()


def _devices() -> list[str]:
    try:
        import torch
    except ImportError:  # pragma: no cover - the reference suite runs without torch
        return []
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


DEVICES = _devices()


@pytest.fixture(params=["cpu", "cuda"])
def device(request: pytest.FixtureRequest) -> str:
    """Every device the suite can reach: CPU always, CUDA when present (skipped otherwise)."""
    if request.param not in DEVICES:
        pytest.skip(f"no {request.param} device")
    return request.param


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "req(*ids): the specification requirement ids it proves")
    config.addinivalue_line("markers", "cuda: needs a CUDA device")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
