"""Counter-fitting (Mrkšić et al., 2016) on GloVe 50d: SimLex-999 goes up, constraints are met, files round-trip."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest

from distat.errors import DistatError
from distat.resources.counterfit import (
    build_counterfitted,
    counter_fit,
    is_plain_word,
    load_glove,
    read_pairs,
    simlex_spearman,
    wordnet_pairs,
)
from distat.resources.neighbours import nearest_neighbours
from distat.resources.vectors import load_vectors, save_vectors

from helpers import shared_data_dir

EPOCHS = 10


def _simlex_words(path) -> set[str]:
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:]]
    return {w.lower() for row in rows for w in row[:2]}


@pytest.fixture(scope="module")
def lexical():
    return shared_data_dir() / "lexical"


@pytest.fixture(scope="module")
def small(lexical):
    """SimLex-999's words plus every constraint touching one of them (~2.9k words), fitted with and without VSP."""
    simlex_words = _simlex_words(lexical / "SimLex-999.txt")

    def touching(pairs):
        return [p for p in pairs if p[0] in simlex_words or p[1] in simlex_words]

    synonyms = touching(read_pairs(lexical / "ppdb_synonyms.txt"))
    antonyms = touching(read_pairs(lexical / "ppdb_antonyms.txt") + read_pairs(lexical / "wordnet_antonyms.txt"))
    words, vectors = load_glove(simlex_words | {w for pair in synonyms + antonyms for w in pair})
    stats: dict = {}
    fitted = counter_fit(words, vectors, synonyms, antonyms, epochs=EPOCHS, stats=stats)
    no_vsp = counter_fit(words, vectors, synonyms, antonyms, epochs=EPOCHS, k_vsp=0.0)
    return {"words": words, "vectors": vectors, "synonyms": synonyms, "antonyms": antonyms,
            "fitted": fitted, "no_vsp": no_vsp, "stats": stats}


def _unit(matrix):
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def _mean_cosine(words, matrix, pairs):
    index = {w: i for i, w in enumerate(words)}
    rows = np.array([(index[a], index[b]) for a, b in pairs if a in index and b in index and a != b])
    unit = _unit(matrix)
    return float((unit[rows[:, 0]] * unit[rows[:, 1]]).sum(axis=1).mean())


# ------------------------------------------------------------------------------------------ counter-fitting


def test_counter_fitting_raises_simlex_spearman(small, lexical):
    before, covered = simlex_spearman(small["words"], small["vectors"], lexical / "SimLex-999.txt")
    after, covered_after = simlex_spearman(small["words"], small["fitted"], lexical / "SimLex-999.txt")
    assert covered == covered_after > 900
    assert 0.15 < before < 0.4  # GloVe 6B 50d scores about 0.26-0.27 on SimLex-999
    assert after > before + 0.05, (before, after)


def test_antonyms_are_repelled_and_synonyms_attracted(small):
    words, vectors, fitted = small["words"], small["vectors"], small["fitted"]
    assert _mean_cosine(words, fitted, small["antonyms"]) < _mean_cosine(words, vectors, small["antonyms"]) - 0.2
    assert _mean_cosine(words, fitted, small["synonyms"]) > _mean_cosine(words, vectors, small["synonyms"]) + 0.2
    assert small["stats"]["synonym_pairs"] > 1000 and small["stats"]["antonym_pairs"] > 500
    assert small["stats"]["vsp_pairs"] > 1000


def test_vector_space_preservation_keeps_unconstrained_neighbours(small):
    words, vectors = small["words"], small["vectors"]
    constraints = {tuple(sorted(p)) for p in small["synonyms"] + small["antonyms"]}
    original = _unit(vectors)
    neighbours = nearest_neighbours(vectors, 5)
    close = np.array([(i, j) for i in range(len(words)) for j in neighbours[i]
                      if original[i] @ original[j] >= 0.8 and tuple(sorted((words[i], words[j]))) not in constraints])
    assert len(close) > 500

    def drift(matrix):
        cosine = (matrix[close[:, 0]] * matrix[close[:, 1]]).sum(axis=1)
        return float(np.abs(cosine - (original[close[:, 0]] * original[close[:, 1]]).sum(axis=1)).mean())

    assert drift(small["fitted"]) < 0.06
    assert drift(small["fitted"]) < 0.5 * drift(small["no_vsp"])
    # one unrelated pair whose words both move (each is in some constraint, the pair itself is in none)
    index = {w: i for i, w in enumerate(words)}
    a, b = index["doctor"], index["nurse"]
    assert ("doctor", "nurse") not in constraints
    assert abs(small["fitted"][a] @ small["fitted"][b] - original[a] @ original[b]) < 0.06
    assert np.linalg.norm(small["fitted"][a] - original[a]) > 0.05  # "doctor" did move


def test_counter_fit_output_and_pair_filtering():
    rng = np.random.default_rng(0)
    words = ["good", "great", "bad", "awful", "table"]
    vectors = rng.normal(size=(5, 8)).astype(np.float32)
    stats: dict = {}
    fitted = counter_fit(words, vectors, [("good", "great"), ("good", "unknownword"), ("bad", "bad")],
                         [("good", "bad"), ("great", "great"), ("awful", "missing")], epochs=3, stats=stats)
    assert fitted.shape == (5, 8) and fitted.dtype == np.float32
    assert np.allclose(np.linalg.norm(fitted, axis=1), 1.0, atol=1e-5)
    assert stats["synonym_pairs"] == 1 and stats["antonym_pairs"] == 1
    # a pair that is both a synonym and an antonym is treated as an antonym only (as the authors do)
    stats = {}
    counter_fit(words, vectors, [("good", "bad")], [("bad", "good")], epochs=1, stats=stats)
    assert stats["synonym_pairs"] == 0 and stats["antonym_pairs"] == 1
    # zero epochs: the normalised input
    assert np.allclose(counter_fit(words, vectors, [], [], epochs=0), _unit(vectors), atol=1e-6)


def test_minibatch_counter_fitting_is_seeded(small):
    words, vectors = small["words"][:800], small["vectors"][:800]
    kwargs = {"epochs": 2, "batch_size": 256}
    first = counter_fit(words, vectors, small["synonyms"], small["antonyms"], seed=1, **kwargs)
    again = counter_fit(words, vectors, small["synonyms"], small["antonyms"], seed=1, **kwargs)
    other = counter_fit(words, vectors, small["synonyms"], small["antonyms"], seed=2, **kwargs)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_nearest_neighbours_excludes_self():
    vectors = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]], dtype=np.float32)
    nn = nearest_neighbours(vectors, 2, chunk_size=3)
    assert nn.shape == (4, 2)
    assert list(nn[0]) == [1, 2] and nn[2][0] == 1
    assert all(i not in row for i, row in enumerate(nn))


# ------------------------------------------------------------------------------------------ inputs


def test_load_glove_restricts_and_filters_the_vocabulary():
    words, vectors = load_glove(["The", ",", "well-known", "DOG", "zzqqxxnotaword", "3d", "'s", "dog"])
    assert vectors.shape == (len(words), 50) and vectors.dtype == np.float32
    assert set(words) <= {"the", "well-known", "dog"} and {"the", "dog"} <= set(words)
    assert words.index("the") < words.index("dog")  # GloVe's frequency order


def test_is_plain_word():
    assert all(map(is_plain_word, ["word", "well-known", "o'clock", "café"]))
    assert not any(map(is_plain_word, [",", "'s", "3d", "well-", "a--b", "foo_bar", "", "u.s."]))


def test_read_pairs(tmp_path, lexical):
    pairs = read_pairs(lexical / "ppdb_antonyms.txt")  # lines there end with a space
    assert pairs[0] == ("females", "males") and all(len(p) == 2 for p in pairs)
    bad = tmp_path / "bad.txt"
    bad.write_text("good great\n\nthree words here\n")
    with pytest.raises(DistatError, match=r"bad\.txt:3"):
        read_pairs(bad)
    with pytest.raises(DistatError, match="missing.txt"):
        read_pairs(tmp_path / "missing.txt")


class _Lemma:
    def __init__(self, name, antonyms=()):
        self._name, self._antonyms = name, antonyms

    def name(self):
        return self._name

    def antonyms(self):
        return [_Lemma(a) for a in self._antonyms]


class _Synset:
    def __init__(self, *lemmas):
        self._lemmas = lemmas

    def lemmas(self):
        return list(self._lemmas)


class _FakeWordNet:
    """The slice of nltk's WordNetCorpusReader that wordnet_pairs uses."""

    _synsets = {
        "good": [_Synset(_Lemma("good", ["bad", "evil"]), _Lemma("Well"), _Lemma("full_of_it"))],
        "bad": [_Synset(_Lemma("bad", ["good"]), _Lemma("big"))],
        "well": [_Synset(_Lemma("good", ["bad"]), _Lemma("well", ["ill"]))],
    }

    def synsets(self, word):
        return self._synsets.get(word, [])


def test_wordnet_pairs_from_a_corpus_reader():
    synonyms, antonyms = wordnet_pairs(_FakeWordNet(), ["good", "bad", "well", "big", "ill"])
    assert synonyms == [("bad", "big"), ("good", "well")]
    assert antonyms == [("bad", "good"), ("ill", "well")]  # "evil" is outside the vocabulary


# ------------------------------------------------------------------------------------------ files


def test_npz_round_trip(tmp_path):
    words = ["alpha", "beta", "gamma"]
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    path = save_vectors(tmp_path / "out" / "vectors.npz", words, vectors)
    assert path == tmp_path / "out" / "vectors.npz" and path.is_file()
    loaded_words, loaded = load_vectors(path)
    assert loaded_words == words and loaded.dtype == np.float32 and np.array_equal(loaded, vectors)


@pytest.mark.parametrize("header", [True, False])
def test_word2vec_text_round_trip(tmp_path, header):
    words = ["alpha", "beta", "well-known"]
    vectors = np.array([[0.5, -1.25], [3.0, 0.0], [1e-3, 2.5]], dtype=np.float32)
    lines = (["3 2"] if header else []) + [f"{w} " + " ".join(repr(float(x)) for x in row)
                                           for w, row in zip(words, vectors, strict=True)]
    path = tmp_path / "vectors.txt"
    path.write_text("\n".join(lines) + "\n")
    loaded_words, loaded = load_vectors(path)
    assert loaded_words == words and np.allclose(loaded, vectors)


def test_textattack_folder_format(tmp_path):
    words = ["alpha", "beta", "gamma"]
    vectors = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    np.save(tmp_path / "paragram.npy", vectors)
    np.save(tmp_path / "nn.npy", np.zeros((3, 2), dtype=np.int64))
    with (tmp_path / "wordlist.pickle").open("wb") as handle:
        pickle.dump({"gamma": 2, "alpha": 0, "beta": 1}, handle)
    for path in (tmp_path, tmp_path / "paragram.npy"):
        loaded_words, loaded = load_vectors(path)
        assert loaded_words == words and np.array_equal(loaded, vectors)


@pytest.mark.parametrize(("name", "content", "message"), [
    ("dims.txt", "a 1 2 3\nb 1 2\n", r"dims\.txt:2"),
    ("text.txt", "a 1 2\nb 1 x\n", r"text\.txt:2: non-numeric"),
    ("empty.txt", "\n\n", r"empty\.txt: no word vectors"),
    ("count.txt", "5 2\na 1 2\n", r"count\.txt: header announces 5"),
    ("lonely.txt", "word\n", r"lonely\.txt:1"),
    ("dupe.txt", "a 1 2\na 3 4\n", r"dupe\.txt: repeated words"),
    ("nan.txt", "a 1 nan\n", r"nan\.txt: non-finite"),
    ("binary.bin", b"\xff\xfe\x00garbage", r"binary\.bin"),
])
def test_malformed_vector_files_give_one_line_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DistatError, match=message) as info:
        load_vectors(path)
    assert "\n" not in str(info.value)


def test_malformed_npz_and_textattack_folders(tmp_path):
    np.savez(tmp_path / "keys.npz", matrix=np.zeros((2, 2)))
    with pytest.raises(DistatError, match=r"keys\.npz: expected arrays 'words' and 'vectors'"):
        load_vectors(tmp_path / "keys.npz")
    (tmp_path / "broken.npz").write_bytes(b"not a zip file")
    with pytest.raises(DistatError, match=r"broken\.npz"):
        load_vectors(tmp_path / "broken.npz")
    np.savez(tmp_path / "shape.npz", words=np.array(["a", "b"]), vectors=np.zeros((3, 2)))
    with pytest.raises(DistatError, match=r"shape\.npz: 2 words"):
        load_vectors(tmp_path / "shape.npz")
    folder = tmp_path / "ta"
    folder.mkdir()
    with pytest.raises(DistatError, match="wordlist.pickle"):
        load_vectors(folder)
    with (folder / "wordlist.pickle").open("wb") as handle:
        pickle.dump({"a": 0}, handle)
    with pytest.raises(DistatError, match="paragram.npy"):
        load_vectors(folder)
    with pytest.raises(DistatError, match="not found"):
        load_vectors(tmp_path / "nowhere.npz")


# ------------------------------------------------------------------------------------------ builder


def test_build_counterfitted_end_to_end(tmp_path, small, lexical):
    """A small lexical folder (the fixture's vocabulary, constraints, SimLex-999) through the builder."""
    lex = tmp_path / "lexical"
    lex.mkdir()
    words = set(small["words"][:1500])
    (lex / "vocabulary.txt").write_text("\n".join(sorted(words)) + "\n")
    keep = [p for p in small["synonyms"] if p[0] in words and p[1] in words]
    (lex / "ppdb_synonyms.txt").write_text("".join(f"{a} {b}\n" for a, b in keep[:-20]))
    antonyms = [p for p in small["antonyms"] if p[0] in words and p[1] in words]
    (lex / "wordnet_antonyms.txt").write_text("".join(f"{a} {b}\n" for a, b in antonyms))
    shutil.copy(lexical / "SimLex-999.txt", lex / "SimLex-999.txt")
    extra = tmp_path / "my_synonyms.txt"
    extra.write_text("".join(f"{a} {b}\n" for a, b in keep[-20:]))

    report = build_counterfitted(tmp_path / "out", lex, extra_pairs=[extra], epochs=EPOCHS)
    assert report["vocabulary_size"] == len(words)
    assert report["constraint_sources"][str(extra)] == "synonyms"
    assert str(lex / "ppdb_antonyms.txt") not in report["constraint_sources"]  # absent file: skipped
    assert report["synonym_pairs"] > 100 and report["antonym_pairs"] > 100
    assert report["simlex_spearman_after"] > report["simlex_spearman_before"]
    assert report["synonym_mean_cosine_after"] > report["synonym_mean_cosine_before"]
    assert report["antonym_mean_cosine_after"] < report["antonym_mean_cosine_before"]
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report
    loaded_words, loaded = load_vectors(tmp_path / "out" / "vectors.npz")
    assert set(loaded_words) == words and loaded.shape == (len(words), 50)


def test_build_without_constraints_is_a_clear_error(tmp_path):
    with pytest.raises(DistatError, match="lexical constraints folder not found"):
        build_counterfitted(tmp_path / "out", tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "vocabulary.txt").write_text("good\ngreat\n")
    with pytest.raises(DistatError, match="no synonym/antonym constraints"):
        build_counterfitted(tmp_path / "out", empty)
