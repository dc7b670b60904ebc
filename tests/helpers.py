"""Small helpers shared by the tests."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest


def shared_data_dir() -> Path:
    """``../shared/data`` (or ``$DISTAT_SHARED_DATA``); skips the calling test when it is absent."""
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    path = Path(os.environ.get("DISTAT_SHARED_DATA", default))
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
