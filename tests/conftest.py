"""Shared fixtures. Real data is read from ``../shared/data`` beside the repository, or from
``$LUMBARSEG_DATA``; tests that need it skip without it, except in CI where it must be there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = Path(os.environ.get("LUMBARSEG_DATA", REPO.parent / "shared" / "data"))
    if not (path / "manifest.csv").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the shared data at {path}")
        pytest.skip(f"no shared data at {path}")
    return path
