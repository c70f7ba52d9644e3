"""Shared fixtures. Real scans come from ``../shared/data`` (beside the checkout, also in CI);
tests needing it fail loudly if it is absent rather than skipping silently."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MUSCLE_PIPELINE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"real test data expected at {SHARED_DATA} (set MUSCLE_PIPELINE_SHARED_DATA)"
    return SHARED_DATA
