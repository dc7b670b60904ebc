"""Files and folders that are either absent, the old version or the new one, never half written.

Every file distat writes that another process may read (a reader on another node: the search's storage and
the resource cache are shared; a resumed driver; a concurrent attack actor) goes through this module. Each
write goes to a sibling with a name unique to this process, thread and call, then is renamed over the
target (atomic on POSIX file systems), so "present" always means "completely written", and two writers of
the same target never touch each other's temporary file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_dir", "atomic_file", "save_numpy", "write_json", "write_text"]


def _unique(path: Path, kind: str) -> Path:
    """A hidden sibling of ``path`` private to this process, thread and call. It keeps ``path``'s suffix,
    so writers that add a suffix unless one is there (``np.save``, ``torch.save``) write where they are told."""
    tag = f"{os.getpid()}-{threading.get_ident()}-{uuid.uuid4().hex[:8]}"
    return path.with_name(f".{path.stem}.{tag}.{kind}{path.suffix}")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on a clean exit it is renamed over ``path`` (parents created), on an
    exception it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = _unique(path, "part")
    try:
        yield part
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_file(path) as part:
        part.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike[str], data: Any, *, sort_keys: bool = False) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=sort_keys, ensure_ascii=False) + "\n")


def save_numpy(path: str | os.PathLike[str], array: Any) -> Path:
    """``np.save`` to ``path`` atomically (concurrent writers of one cache file each write their own part)."""
    import numpy as np

    with atomic_file(path) as part, open(part, "wb") as f:
        np.save(f, array)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], *, replace: bool = True) -> Iterator[Path]:
    """Yield a new empty folder beside ``path`` to fill; on a clean exit it becomes ``path``.

    ``replace``: an existing ``path`` (an older or incomplete version) is moved aside and removed after the
    new folder is in place; with ``replace=False`` an existing ``path`` raises :class:`FileExistsError` and the
    new folder is discarded (another writer finished first). On an exception the new folder is removed.
    The folder is world-readable (mkdtemp's 0700 would hide a shared cache entry from other users).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = _unique(path, "tmp")
    staged.mkdir(mode=0o755)
    try:
        yield staged
        _put_in_place(staged, path, replace)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)


def _put_in_place(staged: Path, path: Path, replace: bool) -> None:
    aside = None
    if path.exists():
        if not replace:
            raise FileExistsError(f"{path} already exists")
        aside = _unique(path, "old")
        os.replace(path, aside)
    try:
        os.replace(staged, path)
    except OSError:
        if aside is not None and not path.exists():
            os.replace(aside, path)  # put the old version back rather than leave nothing
            aside = None
        raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
