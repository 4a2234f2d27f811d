"""Shared pytest fixtures and test-session settings."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

# The tests run many tiny ops: with several OpenMP threads on a busy 2-core machine each op waits on
# descheduled threads (measured 30-50x slower). One intra-op thread is the fast choice here; override
# with IPL_TEST_THREADS=N.
torch.set_num_threads(int(os.environ.get("IPL_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """../shared/fixtures relative to the repository root (reference StyleGAN2 checkpoints and outputs)."""
    path = (REPO / ".." / "shared" / "fixtures").resolve()
    if not path.is_dir():
        pytest.skip(f"reference fixtures not found at {path}")
    return path
