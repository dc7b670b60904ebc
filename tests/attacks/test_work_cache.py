"""The attack work cache: victim-independent work (sentence embeddings, POS tags) kept per attacked example for
the next victim. A hit never changes an outcome; a cache that cannot be used costs speed, never a result."""

from __future__ import annotations

import numpy as np
import pytest

from distat.attacks.evaluate import select_examples
from distat.attacks.runner import AttackJob, AttackRunner
from distat.attacks.work_cache import ExampleWork, WorkCache, WorkCacheRef, example_digest
from distat.data import load_dataset

from helpers import shared_data_dir


def test_two_writers_files_are_read_as_their_union(tmp_path):
    ref = WorkCacheRef(str(tmp_path / "cache"), "abc123")
    a, b = WorkCache(ref), WorkCache(ref)
    digest = example_digest(3, "a fine film", None, 1)
    a.save(digest, ExampleWork({"x y": np.arange(4, dtype=np.float32)}, {"x y z": ["NOUN", "VERB", "X"]}))
    b.save(digest, ExampleWork({"u v": np.ones(4, dtype=np.float32)}, {}))
    b.save(digest, ExampleWork())  # nothing new: no file
    assert len(list((tmp_path / "cache" / "abc123" / digest).glob("*.npz"))) == 2
    work = WorkCache(ref).load(digest)
    assert set(work.embeddings) == {"x y", "u v"} and work.tags == {"x y z": ["NOUN", "VERB", "X"]}
    assert np.array_equal(work.embeddings["x y"], np.arange(4, dtype=np.float32))
    assert not WorkCache(WorkCacheRef(str(tmp_path / "cache"), "other")).load(digest)  # another spec: nothing
    assert not WorkCache(ref).load(example_digest(4, "a fine film", None, 1))  # another example: nothing


def test_a_damaged_file_is_skipped_and_an_unusable_cache_is_given_up(tmp_path, caplog):
    ref = WorkCacheRef(str(tmp_path / "cache"), "abc123")
    digest = example_digest(0, "t", None, 0)
    WorkCache(ref).save(digest, ExampleWork({"good": np.zeros(2, dtype=np.float32)}, {}))
    (tmp_path / "cache" / "abc123" / digest / "broken.npz").write_bytes(b"not a zip")
    assert set(WorkCache(ref).load(digest).embeddings) == {"good"}
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder should be")
    cache = WorkCache(WorkCacheRef(str(blocked), "abc123"))
    cache.save(digest, ExampleWork({"t": np.zeros(2, dtype=np.float32)}, {}))
    assert cache.broken and "writing" in cache.broken
    assert not cache.load(digest)  # given up: no more reads or writes, no exception


def test_example_digest_names_the_exact_example():
    base = example_digest(1, "a film", None, 0)
    assert base == example_digest(1, "a film", None, 0)
    assert len({base, example_digest(2, "a film", None, 0), example_digest(1, "a film.", None, 0),
                example_digest(1, "a film", "q?", 0), example_digest(1, "a film", None, 1)}) == 5


@pytest.fixture(scope="module")
def encoder(attack_paths):
    from distat.resources import import_textattack

    import_textattack(attack_paths.wordnet)
    from distat.attacks.textattack_parts import SentenceSimilarity

    return SentenceSimilarity(str(attack_paths.sentence_encoder), threshold=0.9, metric="cosine")


def test_each_distinct_text_is_embedded_once_and_agrees_with_its_embedding_alone(encoder):
    """Duplicates in a call are embedded once; whatever else is in the call, a text's embedding agrees with its
    embedding alone to float rounding; a primed (cached) vector is used as it is."""
    import torch

    split = load_dataset(shared_data_dir() / "sst2", splits=["dev"]).split("dev")
    texts = [" ".join(e.text.split()[:15]) for e in select_examples(split, 40, seed=1)]
    encoder.prime({})
    together = encoder.encode(texts + texts[:5])  # duplicates in one call are embedded once
    assert encoder.misses == len(set(texts)) and len(encoder.take_computed()) == len(set(texts))
    for i, text in enumerate(texts):
        encoder.prime({})
        assert torch.allclose(encoder.encode([text])[0], together[i], rtol=0, atol=1e-6), text
    assert torch.equal(together[40:], together[:5])
    # primed with a stored vector, the encoder uses it and computes nothing
    encoder.prime({texts[0]: together[0].numpy()})
    before = encoder.misses
    assert torch.equal(encoder.encode([texts[0]])[0], together[0]) and encoder.misses == before
    assert encoder.take_computed() == {}


def _second_victim(tiny_model_dir, tmp_path):
    from distat.config import parse_trial_config
    from distat.training import run_trial

    cfg = parse_trial_config({
        "seed": 7, "data": {"path": str(shared_data_dir() / "sst2"), "max_train_examples": 400, "max_length": 48},
        "model": {"backbone": str(tiny_model_dir)}, "train": {"epochs": 3, "batch_size": 16, "lr": 2e-3},
        "output_dir": str(tmp_path / "victim2")})
    result = run_trial(cfg)
    return result.model.eval(), result.tokenizer


def _attack(model, tokenizer, paths, examples, ref=None):
    job = AttackJob(recipe="textfooler", resources=paths, max_length=48, work_cache=ref)
    runner = AttackRunner(job, model, tokenizer)
    return runner.run(examples), runner


def test_a_warm_cache_changes_no_outcome_and_saves_the_encoder_work(attack_paths, sst2_victim, tiny_model_dir,
                                                                     tmp_path):
    """TextFooler (sentence encoder and POS tagger) on 8 SST-2 test sentences: a second victim attacking them
    with the first one's cache gives exactly its uncached records, finding part of its work done; the same
    victim again finds all of it done; a cache that cannot be written changes nothing."""
    split = load_dataset(shared_data_dir() / "sst2", splits=["test"]).split("test")
    examples = select_examples(split, 8, seed=0)
    ref = WorkCacheRef(str(tmp_path / "cache"), "spec0")
    model, tokenizer = sst2_victim
    cold, first = _attack(model, tokenizer, attack_paths, examples, ref)
    assert first.cache_stats()["encoder_misses"] > 0
    again, runner = _attack(model, tokenizer, attack_paths, examples, ref)
    assert again == cold and runner.cache_stats()["encoder_misses"] == 0  # all of it was stored

    other_model, other_tokenizer = _second_victim(tiny_model_dir, tmp_path)
    uncached, _ = _attack(other_model, other_tokenizer, attack_paths, examples)
    warm, runner = _attack(other_model, other_tokenizer, attack_paths, examples, ref)
    assert warm == uncached
    assert {r.status for r in warm} - {"skipped"}, warm  # the second victim was really attacked
    stats = runner.cache_stats()
    assert stats["encoder_hits"] > 0, stats

    blocked = tmp_path / "blocked"
    blocked.write_text("")
    broken, runner = _attack(other_model, other_tokenizer, attack_paths, examples,
                             WorkCacheRef(str(blocked), "spec0"))
    assert broken == uncached and runner.cache.broken
