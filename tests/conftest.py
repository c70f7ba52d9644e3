"""Shared fixtures. Real scans come from ``../shared/data`` (beside the checkout, also in CI);
tests needing it fail loudly if it is absent rather than skipping silently."""
from __future__ import annotations

import os
from pathlib import Path

# Before any test module imports torch (see muscle_pipeline/__init__.py: libgomp spin-waits made
# 2-thread torch ~25x slower whenever another process was busy).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MUSCLE_PIPELINE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"real test data expected at {SHARED_DATA} (set MUSCLE_PIPELINE_SHARED_DATA)"
    return SHARED_DATA
