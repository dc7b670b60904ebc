"""The registry: one list of resources read by resolve/show/build; "present" means "completely written"
(an interrupted build leaves the resource missing); the nearest-neighbour cache survives concurrent writers."""

from __future__ import annotations

import dataclasses
import threading
import zipfile

import numpy as np
import pytest

from distat import resources
from distat.resources import ResourceError
from distat.resources.vectors import cached_nearest_neighbours, load_vectors, save_vectors

# words GloVe 6B knows, with a few synonym and antonym pairs among them
_WORDS = ("good great fine nice excellent bad awful poor terrible horrible happy glad sad unhappy big large "
          "small little fast quick slow film movie story plot actor house car tree water city").split()
_SYNONYMS = ["good great", "good fine", "great excellent", "bad awful", "awful terrible", "terrible horrible",
             "happy glad", "big large", "small little", "fast quick", "film movie"]
_ANTONYMS = ["good bad", "happy sad", "big small", "fast slow", "glad unhappy"]


@pytest.fixture
def lexical(tmp_path):
    """A tiny counter-fitting constraint folder (no SimLex): the vectors build takes seconds."""
    folder = tmp_path / "lexical"
    folder.mkdir()
    (folder / "vocabulary.txt").write_text("\n".join(_WORDS) + "\n")
    (folder / "ppdb_synonyms.txt").write_text("\n".join(_SYNONYMS) + "\n")
    (folder / "wordnet_antonyms.txt").write_text("\n".join(_ANTONYMS) + "\n")
    return folder


def test_registry_is_resource_paths_and_parts_in_build_order():
    assert [r.name for r in resources.REGISTRY] == [f.name for f in dataclasses.fields(resources.ResourcePaths)]
    assert resources.PARTS == ("nltk", "vectors", "similarity", "mlm")  # the slow MLM last
    assert len({r.name for r in resources.REGISTRY}) == len(resources.REGISTRY)
    for resource in resources.REGISTRY:
        assert resource.what and resource.how_to_get
        if resource.part is None:  # packaged: build names how to get it
            with pytest.raises(ResourceError, match="not built by distat"):
                resource.build(resources.resolve("/nonexistent"), resources.BuildOptions())


def test_a_half_written_vector_file_or_calibration_is_not_present(tmp_path):
    cache = tmp_path / "cache"
    vectors = cache / "counterfitted" / "vectors.npz"
    calibration = cache / "similarity" / "calibration.json"
    save_vectors(vectors, ["good", "bad"], np.eye(2))
    calibration.parent.mkdir(parents=True)
    calibration.write_text('{"thresholds": {"textfooler": 0.9}}')
    report = resources.show(cache)
    assert report["word_vectors"]["present"] and report["calibration"]["present"]
    whole = vectors.read_bytes()
    for cut in (b"", whole[: len(whole) // 2], whole[:-10]):  # what a writer killed mid-file leaves
        vectors.write_bytes(cut)
        assert resources.show(cache)["word_vectors"]["present"] is False, len(cut)
    calibration.write_text('{"thresholds": {"textfoo')
    assert resources.show(cache)["calibration"]["present"] is False
    with zipfile.ZipFile(vectors, "w") as archive:  # a zip, but not a vectors file
        archive.writestr("other.npy", b"")
    assert resources.show(cache)["word_vectors"]["present"] is False
    assert resources.missing(resources.resolve(cache), ["word_vectors", "calibration"]) == ["word_vectors",
                                                                                          "calibration"]


class _Killed(BaseException):
    """Stands in for the build being interrupted (Ctrl-C, a dying node) in the middle of writing."""


def test_an_interrupted_vectors_build_leaves_the_resource_missing(tmp_path, lexical, monkeypatch):
    cache = tmp_path / "cache"
    options = resources.BuildOptions(lexical_dir=lexical)
    real_savez = np.savez

    def killed_mid_write(handle, **arrays):
        real_savez(handle, **arrays)
        handle.truncate(handle.tell() // 2)  # half the bytes reached the disk
        raise _Killed

    monkeypatch.setattr(np, "savez", killed_mid_write)
    with pytest.raises(_Killed):
        resources.build(cache, ["vectors"], options=options)
    target = resources.resolve(cache).word_vectors
    assert not target.exists()
    assert resources.show(cache)["word_vectors"]["present"] is False
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")], "temporary files left behind"

    monkeypatch.setattr(np, "savez", real_savez)
    assert resources.build(cache, ["vectors"], options=options) == {"vectors": str(target)}
    assert resources.show(cache)["word_vectors"]["present"] is True
    words, matrix = load_vectors(target)
    assert set(words) == set(_WORDS) and matrix.shape == (len(_WORDS), 50)
    assert (target.parent / "report.json").is_file()

    # a forced rebuild that is interrupted leaves the previous vectors in place, whole
    before = target.read_bytes()
    monkeypatch.setattr(np, "savez", killed_mid_write)
    with pytest.raises(_Killed):
        resources.build(cache, ["vectors"], options=options, force=True)
    assert target.read_bytes() == before and resources.show(cache)["word_vectors"]["present"] is True


def test_vectors_build_writes_an_overridden_npz_path(tmp_path, lexical):
    target = tmp_path / "mine" / "cf.npz"
    built = resources.build(tmp_path / "cache", ["vectors"], {"word_vectors": str(target)},
                            resources.BuildOptions(lexical_dir=lexical))
    assert built == {"vectors": str(target)} and target.is_file()
    assert sorted(p.name for p in target.parent.iterdir()) == ["cf.npz", "report.json"]
    with pytest.raises(ResourceError, match=r"builds \.npz files"):
        resources.build(tmp_path / "cache", ["vectors"], {"word_vectors": str(tmp_path / "v.txt")},
                        resources.BuildOptions(lexical_dir=lexical))


def test_concurrent_nearest_neighbour_cache_writers(tmp_path):
    """Attack actors that build the same embedding at once each write their own temporary file: every one
    gets the right matrix, the cache is whole, nothing is left behind (it used one fixed '.tmp.npy')."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(400, 16)).astype(np.float32)
    path = save_vectors(tmp_path / "vectors.npz", [f"w{i}" for i in range(400)], vectors)
    cache = tmp_path / "vectors.npz.nn10.npy"
    results: list[np.ndarray] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def actor() -> None:
        try:
            start.wait()
            for _ in range(3):
                cache.unlink(missing_ok=True)  # every round recomputes and rewrites the cache
                results.append(cached_nearest_neighbours(path, vectors, 10))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=actor) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    expected = results[0]
    assert expected.shape == (400, 11) and (expected[:, 0] == np.arange(400)).all()
    assert all((r == expected).all() for r in results)
    if not cache.exists():  # the last round's unlink may come after the last write
        cached_nearest_neighbours(path, vectors, 10)
    assert (np.load(cache) == expected).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vectors.npz", "vectors.npz.nn10.npy"]


def test_an_unreadable_or_stale_nearest_neighbour_cache_is_recomputed(tmp_path):
    vectors = np.eye(6, dtype=np.float32) + 0.1
    path = save_vectors(tmp_path / "v.npz", list("abcdef"), vectors)
    good = cached_nearest_neighbours(path, vectors, 3)
    cache = tmp_path / "v.npz.nn3.npy"
    cache.write_bytes(cache.read_bytes()[:40])  # cut short by a writer outside distat
    assert (cached_nearest_neighbours(path, vectors, 3) == good).all()
    np.save(cache, np.zeros((5, 4), dtype=np.int64))  # another vocabulary's
    assert (cached_nearest_neighbours(path, vectors, 3) == good).all()
    assert (np.load(cache) == good).all()
