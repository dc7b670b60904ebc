"""What the benchmark scripts share (they run as ``python benchmarks/<name>.py``, so this imports as ``common``)."""

from __future__ import annotations

import os
from pathlib import Path


def shared_data() -> Path:
    """``$DISTAT_SHARED_DATA``, else ``../shared/data`` beside the repository."""
    return Path(os.environ.get("DISTAT_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
