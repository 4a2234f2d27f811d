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


FIXTURES = REPO / "tests" / "data" / "fixtures"
# The reference StyleGAN2 checkpoints and the exact outputs the reference implementations produced
# (copied from ../shared/fixtures; README.md / README_tf.md there give the calls that made them).
FIXTURE_FILES = (
    "README.md", "README_tf.md",
    "rosinality_sg2_64.pt", "rosinality_sg2_64_io.pt",
    "nvidia_sg2ada_64.pkl", "nvidia_sg2ada_64_io.pt",
    "nvidia_sg2ada_64_cond_clamp.pkl", "nvidia_sg2ada_64_cond_clamp_io.pt",
    "nvidia_tf_sg2_64.pkl", "nvidia_tf_sg2_64_io.pt",
)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """tests/data/fixtures: reference StyleGAN2 checkpoints and outputs, part of the repository.

    They are checked in, so a missing folder or file is a broken checkout: fail, never skip.
    """
    if not FIXTURES.is_dir():
        pytest.fail(f"reference fixtures folder missing: {FIXTURES} (it is part of the repository)", pytrace=False)
    missing = [name for name in FIXTURE_FILES if not (FIXTURES / name).is_file()]
    if missing:
        pytest.fail(f"reference fixture files missing from {FIXTURES}: {', '.join(missing)}", pytrace=False)
    return FIXTURES
