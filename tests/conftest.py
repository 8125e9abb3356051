"""Test-wide settings and shared fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

# TensorFlow and PyTorch both run OpenMP pools in the same test process; with busy-waiting
# threads on a 2-core machine they starve each other (torch ops become ~20x slower once a
# TensorFlow test has run). Passive waiting must be chosen before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402

from paths import SHARED_DATA  # noqa: E402


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only data folder ``../shared/data``; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (tests on MNIST/BadNet skip)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a test module: deterministic sums, no oversubscription of 2 cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
