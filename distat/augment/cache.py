"""A content-addressed folder cache on a filesystem shared by every node, built at most once per key.

``get_or_build(key, build)`` returns ``<root>/<key>/`` and runs ``build(folder)`` only when no complete entry
exists. Writers coordinate through the filesystem alone, so it works across processes and nodes that share
the storage (NFS, EFS, a local disk):

* the builder takes ``<root>/<key>.lock`` with ``mkdir`` (atomic, also on NFS) and keeps a heartbeat file in
  it fresh while it works; everyone else polls until the entry is complete;
* a lock whose heartbeat is older than ``stale_after`` seconds belongs to a dead builder (a killed trial, a
  lost node): a waiter renames it away (atomic: one waiter wins) and builds in its place;
* the entry is built in a temporary sibling and renamed into place with a ``COMPLETE`` marker, so readers
  never see half an entry and a crash leaves nothing that looks finished.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distat.atomic import atomic_dir, write_json

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
_HEARTBEAT = "heartbeat"


class CacheTimeout(TimeoutError):
    """Waited longer than allowed for another builder."""


class FolderCache:
    def __init__(self, root: str | os.PathLike[str], *, stale_after: float = 300.0, poll: float = 1.0,
                 heartbeat: float = 10.0) -> None:
        if heartbeat >= stale_after:
            raise ValueError("the heartbeat interval must be shorter than stale_after")
        self.root = Path(root)
        self.stale_after = stale_after
        self.poll = poll
        self.heartbeat = heartbeat

    def path(self, key: str) -> Path:
        return self.root / key

    def complete(self, key: str) -> bool:
        return (self.path(key) / COMPLETE).is_file()

    def get_or_build(self, key: str, build: Callable[[Path], dict[str, Any] | None], *,
                     timeout: float | None = None, on_wait: Callable[[], None] | None = None) -> Path:
        """The complete entry for ``key``; ``build(tmp_folder)`` fills a new one (its return value, if any, is
        written to the entry's ``COMPLETE`` marker as JSON)."""
        self.root.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        waited = False
        while True:
            if self.complete(key):
                return self.path(key)
            if self._acquire(key):
                try:
                    if self.complete(key):  # finished between our check and the lock
                        return self.path(key)
                    return self._build(key, build)
                finally:
                    shutil.rmtree(self._lock(key), ignore_errors=True)
            if not waited and on_wait is not None:
                on_wait()
            waited = True
            if timeout is not None and time.monotonic() - start > timeout:
                raise CacheTimeout(f"waited {timeout:.0f} s for {self.path(key)} built by another process")
            time.sleep(self.poll)

    # ----------------------------------------------------------------------------------------------

    def _lock(self, key: str) -> Path:
        return self.root / f"{key}.lock"

    def _acquire(self, key: str) -> bool:
        lock = self._lock(key)
        try:
            lock.mkdir()
        except FileExistsError:
            if self._stale(lock):
                grave = self.root / f".{key}.stale-{uuid.uuid4().hex[:8]}"
                try:
                    lock.rename(grave)  # only one waiter's rename succeeds
                except OSError:
                    return False
                log.warning("taking over %s from a builder that stopped", self.path(key))
                shutil.rmtree(grave, ignore_errors=True)
            return False
        (lock / "owner").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        (lock / _HEARTBEAT).touch()
        return True

    def _stale(self, lock: Path) -> bool:
        try:
            beat = (lock / _HEARTBEAT).stat().st_mtime
        except FileNotFoundError:
            try:  # a lock just made, before its heartbeat file exists
                beat = lock.stat().st_mtime
            except FileNotFoundError:
                return False
        return time.time() - beat > self.stale_after

    def _build(self, key: str, build: Callable[[Path], dict[str, Any] | None]) -> Path:
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(self._lock(key) / _HEARTBEAT, stop), daemon=True)
        beat.start()
        try:
            # an incomplete leftover of a crashed builder at the final name is replaced
            with atomic_dir(self.path(key)) as tmp:
                info = build(tmp) or {}
                write_json(tmp / COMPLETE, info)
            return self.path(key)
        finally:
            stop.set()
            beat.join()

    def _beat(self, path: Path, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat):
            try:
                path.touch()
            except OSError:
                return
