"""Several attacks per evaluation (issue 14 item 1): the YAML side, the threat-model specs of static sets and
suites, and the journal that makes an evaluation resumable. The end-to-end run is tests/test_test_stage.py."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from distat.attacks.journal import AttackJournal, checkpoint_digest
from distat.attacks.metrics import AttackRecord
from distat.attacks.runner import Example
from distat.attacks.spec import (
    SPEC_FILE,
    StaticSetSpec,
    ThreatSuite,
    check_same_spec,
    read_spec,
    static_set_spec,
    write_spec,
)
from distat.errors import ConfigError, DistatError
from distat.search.space import parse_search_config

from helpers import shared_data_dir

BASE: dict[str, Any] = {
    "name": "t",
    "trial": {"data": {"path": "builtin:rotten_tomatoes"}, "model": {"backbone": "default"},
              "method": {"name": "pgd"}},
    "attack": {"n": 20},
    "params": {"adv_lr": {"loguniform": [0.01, 0.1]}},
}


def _cfg(attack: dict[str, Any], evaluate: dict[str, Any] | None = None):
    data = copy.deepcopy(BASE)
    data["attack"].update(attack)
    if evaluate is not None:
        data["evaluate"] = evaluate
    return parse_search_config(data, "s.yaml")


def _advglue() -> str:
    return str(shared_data_dir() / "advglue" / "sst2.tsv")


# --------------------------------------------------------------------------------------------------
# the YAML


def test_one_recipe_is_the_default_and_the_shorthand_still_works() -> None:
    assert [r.recipe for r in _cfg({}).attack.attacks] == ["textfooler"]
    att = _cfg({"recipe": "pwws", "options": {"max_modify_rate": 0.2}}).attack
    assert att.names == ["pwws"] and att.attacks[0].options.max_modify_rate == 0.2


def test_a_list_of_recipes_and_static_sets_with_their_own_options() -> None:
    att = _cfg({"recipes": ["textfooler", {"recipe": "bae", "options": {"max_candidates": 20}},
                            {"recipe": "bae", "name": "bae_k50", "options": {"max_candidates": 50}}],
                "static_sets": [{"name": "advglue", "path": _advglue()}],
                "options": {"max_modify_rate": 0.3, "max_candidates": 10}}).attack
    assert att.names == ["textfooler", "bae", "bae_k50", "advglue"]
    assert att.recipe_names == ["textfooler", "bae"]
    by = {r.key: r.options for r in att.attacks}
    # a recipe's own option wins over the common one; the common ones fill the rest
    assert (by["textfooler"].max_candidates, by["bae"].max_candidates, by["bae_k50"].max_candidates) == (10, 20, 50)
    assert {o.max_modify_rate for o in by.values()} == {0.3}
    assert att.objective == "min"


def test_stopwords_ignore_case_is_an_attack_option_a_recipe_may_override() -> None:
    att = _cfg({"recipes": ["textfooler", {"recipe": "pwws", "options": {"stopwords_ignore_case": False}}],
                "options": {"stopwords_ignore_case": True}}).attack
    by = {r.key: r.options.to_options() for r in att.attacks}
    assert by["textfooler"].stopwords_ignore_case is True and by["pwws"].stopwords_ignore_case is False
    assert _cfg({}).attack.attacks[0].options.to_options().stopwords_ignore_case is False  # TextAttack's default
    with pytest.raises(ConfigError, match="stopwords_ignore_case"):
        _cfg({"options": {"stopwords_ignore_case": "yes"}})


@pytest.mark.parametrize(("attack", "fragment"), [
    ({"recipe": "pwws", "recipes": ["bae"]}, "attack.recipes: give one recipe (recipe:) or a list"),
    ({"recipes": ["bae", "bae"]}, "two attacks are named 'bae'"),
    ({"recipes": ["bae"], "objective": "textfooler"}, "attack.objective: 'textfooler' is none of the attacks (bae)"),
    ({"recipes": ["fooler"]}, "unknown attack recipe 'fooler'"),
    ({"recipes": [{"recipe": "bae", "name": "Bae K"}]}, "an attack's name is a metric suffix"),
    ({"recipes": [{"recipe": "bae", "name": "clean"}]}, "'clean' is reserved"),
    ({"static_sets": [{"name": "adv", "path": "/nowhere/adv.tsv"}]}, "/nowhere/adv.tsv: no such file or folder"),
])
def test_bad_attack_lists_are_one_line(attack: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        _cfg(attack)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_a_named_objective_and_the_test_stage_list() -> None:
    cfg = _cfg({"recipes": ["textfooler", "pwws"], "objective": "pwws"},
               {"recipes": ["bae"], "static_sets": [{"name": "advglue", "path": _advglue()}], "n": 500})
    assert cfg.attack.objective == "pwws"
    test = cfg.evaluate.attack(cfg.attack)
    # the stage's own list; the search's objective names an attack it drops: the worst case instead
    assert test.names == ["bae", "advglue"] and test.objective == "min"
    assert test.n == cfg.attack.n and cfg.evaluate.n == 500 and cfg.evaluate.split == "test"
    same = _cfg({"recipes": ["textfooler", "pwws"], "objective": "pwws"}).evaluate.attack(cfg.attack)
    assert same.names == ["textfooler", "pwws"] and same.objective == "pwws" and same.actors == 1
    assert _cfg({}, {"actors": 4}).evaluate.attack(cfg.attack).actors == 4  # the stage has the machine to itself
    with pytest.raises(ConfigError, match="evaluate.split: .*not the dev split"):
        _cfg({}, {"split": "dev"})


# --------------------------------------------------------------------------------------------------
# specs of static sets and suites


def test_static_set_and_suite_specs_round_trip_and_refuse_to_mix(tmp_path: Path) -> None:
    a = static_set_spec([(None, "a film"), (None, "a plot")], [1, 0], max_length=128)
    b = static_set_spec([(None, "a film"), (None, "a plot")], [1, 0], max_length=64)
    assert a.hash != b.hash and a.hash == static_set_spec([(None, "a film"), (None, "a plot")], [1, 0],
                                                          max_length=128).hash
    assert static_set_spec([(None, "a film")], [0], max_length=128).hash != a.hash
    suite = ThreatSuite(objective="min", attacks={"pwws": "0123456789", "adv": a.hash})
    assert ThreatSuite(objective="pwws", attacks=suite.attacks).hash != suite.hash
    write_spec(suite, tmp_path)
    write_spec(a, tmp_path, "adv")
    assert read_spec(tmp_path) == suite and isinstance(read_spec(tmp_path, "adv"), StaticSetSpec)
    assert json.loads((tmp_path / SPEC_FILE).read_text())["threat_spec_hash"] == suite.hash
    with pytest.raises(DistatError, match=f"{a.hash}.*{b.hash}.*max_length 128 vs 64"):
        check_same_spec({"trial x": a, "trial y": b})


# --------------------------------------------------------------------------------------------------
# the journal


def _rec(index: int, status: str = "failed", text: str | None = None) -> AttackRecord:
    return AttackRecord(index=index, text=text or f"text {index}", perturbed_text=None, other_text=None, label=1,
                        original_pred=1 if status != "skipped" else 0, perturbed_pred=None, status=status,
                        num_queries=3, words_perturbed=0, words_total=2)


def _examples(k: int) -> list[Example]:
    return [Example(index=i, text=f"text {i}", label=1) for i in range(k)]


def test_journal_keeps_records_across_runs_and_ignores_a_cut_line(tmp_path: Path) -> None:
    path = tmp_path / "attack.jsonl"
    journal = AttackJournal(path, spec="s1", checkpoint="c1")
    assert journal.load(_examples(5)) == {}
    journal.append([_rec(0), _rec(1, "skipped")])
    journal.append([_rec(2)])
    with path.open("a") as fh:
        fh.write('{"index": 3, "text": "te')  # a kill mid-write
    again = AttackJournal(path, spec="s1", checkpoint="c1").load(_examples(5))
    assert sorted(again) == [0, 1, 2] and again[1] == _rec(1, "skipped")


def test_journal_of_another_evaluation_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "attack.jsonl"
    AttackJournal(path, spec="s1", checkpoint="c1").append([_rec(0)])
    assert AttackJournal(path, spec="s2", checkpoint="c1").load(_examples(2)) == {}
    assert not path.exists() and (tmp_path / "attack.jsonl.stale").is_file()
    AttackJournal(path, spec="s1", checkpoint="c1").append([_rec(0)])
    assert AttackJournal(path, spec="s1", checkpoint="c2").load(_examples(2)) == {}


def test_journal_drops_records_of_other_examples(tmp_path: Path) -> None:
    journal = AttackJournal(tmp_path / "a.jsonl", spec="s", checkpoint="c")
    journal.append([_rec(0), _rec(1, text="another text"), _rec(7)])
    assert sorted(journal.load(_examples(3))) == [0]


def test_checkpoint_digest_is_of_the_weights(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "a" / "config.json").write_text("{}")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "model.safetensors").write_bytes(b"weights")
    assert checkpoint_digest(tmp_path / "a") == checkpoint_digest(tmp_path / "b")
    (tmp_path / "b" / "model.safetensors").write_bytes(b"other")
    assert checkpoint_digest(tmp_path / "a") != checkpoint_digest(tmp_path / "b")
    with pytest.raises(FileNotFoundError):
        checkpoint_digest(tmp_path)
