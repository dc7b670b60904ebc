"""The atomic writer (distat.atomic): a failed write keeps the previous version and leaves nothing behind;
concurrent writers of one target never share a temporary name."""

from __future__ import annotations

import json

import pytest

from distat.atomic import atomic_dir, save_numpy, write_json


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


def test_concurrent_numpy_writers_of_one_cache_file(tmp_path):
    """Attack actors on one node compute the same nearest-neighbour cache at once: each writes its own part
    file (a fixed ``*.tmp.npy`` name let one actor rename another's half-written array)."""
    import threading

    import numpy as np

    path = tmp_path / "vectors.txt.nn50.npy"
    arrays = [np.full((300, 400), k, dtype=np.int64) for k in range(4)]
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for _ in range(10):
                save_numpy(path, arrays[k])
                loaded = np.load(path)
                assert loaded.shape == (300, 400) and len(set(np.unique(loaded).tolist())) == 1
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_atomic_dir_replaces_a_folder_only_when_complete(tmp_path):
    target = tmp_path / "entry"
    with atomic_dir(target) as staged:
        (staged / "a.txt").write_text("1")
        assert not target.exists()  # nothing at the final name while it is being filled
    assert (target / "a.txt").read_text() == "1"

    with pytest.raises(RuntimeError), atomic_dir(target) as staged:
        (staged / "b.txt").write_text("half")
        raise RuntimeError("builder died")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]  # the old version survives a failed build

    with atomic_dir(target) as staged:
        (staged / "c.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["c.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]  # no staging or set-aside folder left

    with pytest.raises(FileExistsError), atomic_dir(target, replace=False) as staged:
        (staged / "d.txt").write_text("late")
    assert sorted(p.name for p in target.iterdir()) == ["c.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]
