"""JSON files that are either absent, the old version or the new one, never half written: a reader on
another node (the search's storage is shared) or a resumed driver may read them at any moment."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


def write_json(path: str | os.PathLike[str], data: Any, *, sort_keys: bool = False) -> Path:
    """Write ``data`` as indented JSON to ``path`` through a sibling file private to this process and
    thread, then rename it over ``path`` (atomic on POSIX file systems)."""
    path = Path(path)
    part = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.part")
    try:
        part.write_text(json.dumps(data, indent=2, sort_keys=sort_keys) + "\n", encoding="utf-8")
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
    return path
