"""Small helpers shared by the tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_data_dir() -> Path:
    """``../shared/data`` (or ``$DISTAT_SHARED_DATA``); skips the calling test when it is absent."""
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    path = Path(os.environ.get("DISTAT_SHARED_DATA", default))
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path
