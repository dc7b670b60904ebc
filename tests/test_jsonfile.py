"""Atomic JSON files: a failed write keeps the previous version and leaves nothing behind."""

from __future__ import annotations

import json

from distat.jsonfile import write_json


def test_write_replaces_the_file_and_leaves_no_part_file(tmp_path):
    path = tmp_path / "final.json"
    write_json(path, {"a": 1})
    write_json(path, {"b": [1, 2]}, sort_keys=True)
    assert json.loads(path.read_text()) == {"b": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["final.json"]


def test_concurrent_writers_and_a_reader_never_see_half_a_file(tmp_path):
    """Threads of one process (a progress callback, the trial) write the same file while another reads it:
    every read parses, every write lands (a shared temporary name made writers move each other's files)."""
    import threading

    path = tmp_path / "attack_progress.json"
    write_json(path, {"done": -1})
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer(k: int) -> None:
        try:
            for i in range(40):
                write_json(path, {"done": i, "writer": k, "pad": "x" * 200_000})
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    def reader() -> None:
        while not stop.is_set():
            try:
                json.loads(path.read_text())
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
                return

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    assert errors == []
    assert json.loads(path.read_text())["done"] == 39
    assert [p.name for p in tmp_path.iterdir()] == ["attack_progress.json"]
