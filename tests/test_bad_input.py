"""Bad input anywhere: one line on stderr (``distat: error: ...``), exit status 2, no traceback, and nothing
half-written (no output folder, no search folder, no MLflow database, no partial checkpoint).

Every case of the table runs the real entry point (``python -m distat.cli``) in a subprocess whose working
directory is an empty folder that must stay empty; each case also names the paths it must not create or
change. Only the GPU case starts Ray (a local one, inside the CLI process). The tests after the table cover
``distat resume``'s ``--tracking-uri`` / ``--cache-dir`` and its decision to restart a search that Tune never
saved, without running a search.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import free_port, merged

REPO = Path(__file__).resolve().parents[1]
ROWS = [("a stirring and funny re-imagining", 1), ("apparently reassembled from the floor", 0),
        ("they presume their audience wo n't sit still", 0), ("a visually stunning rumination on love", 1),
        ("jonah 's despair is a quiet one", 0), ("a gorgeous and witty movie", 1),
        ("the effort is sincere and the results are honest", 1), ("it 's a cookie-cutter movie", 0)]  # no commas


# --------------------------------------------------------------------------------------------------
# inputs


def write_split(folder: Path, name: str, rows: list[tuple[str, Any]], ext: str = "tsv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    sep = "\t" if ext == "tsv" else ","
    path = folder / f"{name}.{ext}"
    path.write_text("".join(f"{text}{sep}{label}\n" for text, label in [("sentence", "label"), *rows]))
    return path


def write_dataset(folder: Path, labels: tuple[str, ...] | None = ("negative", "positive")) -> Path:
    write_split(folder, "train", ROWS)
    write_split(folder, "dev", ROWS)
    if labels is not None:
        (folder / "dataset.json").write_text(json.dumps({"name": folder.name, "labels": list(labels)}))
    return folder


def fake_attack_cache(cache: Path) -> Path:
    """A resource cache that passes the up-front check for PWWS (WordNet files present; never read here)."""
    from distat import resources
    from distat.resources import wordnet as nltk_data

    wordnet = resources.resolve(cache).wordnet
    (wordnet / "corpora" / "wordnet").mkdir(parents=True, exist_ok=True)
    for name in nltk_data.WORDNET_FILES:
        (wordnet / "corpora" / "wordnet" / name).write_text("x\n")
    (wordnet / "corpora" / "wordnet" / "lexnames").write_text("".join(f"{i:02d}\tx\t1\n" for i in
                                                                      range(len(nltk_data.LEXNAMES))))
    (wordnet / "corpora" / "stopwords").mkdir(parents=True, exist_ok=True)
    (wordnet / "corpora" / "stopwords" / "english").write_text("a\nthe\n")
    return cache


@dataclass
class Ctx:
    """What a case builds its input from: ``inp`` (inputs), ``cwd`` (must stay empty), lazy fixtures."""

    tmp: Path
    request: Any

    def __post_init__(self) -> None:
        self.inp = self.tmp / "in"
        self.cwd = self.tmp / "cwd"
        self.inp.mkdir()
        self.cwd.mkdir()
        self.out = self.tmp / "out"  # a trial's output_dir
        self.storage = self.tmp / "searches"  # a search's --storage

    def fixture(self, name: str) -> Any:
        return self.request.getfixturevalue(name)

    @property
    def data(self) -> Path:
        return self.fixture("tiny_data")

    def trial_yaml(self, changes: dict[str, Any] | None = None, name: str = "trial.yaml") -> Path:
        cfg = {"seed": 3, "data": {"path": str(self.data), "max_length": 32},
               "model": {"backbone": str(self.fixture("tiny_model_dir"))}, "method": {"name": "fgm"},
               "train": {"epochs": 1, "batch_size": 4}, "output_dir": str(self.out)}
        path = self.inp / name
        path.write_text(yaml.safe_dump(merged(cfg, changes or {})))
        return path

    def search_dict(self, changes: dict[str, Any] | None = None) -> dict[str, Any]:
        cfg = {"name": "s", "seed": 3,
               "trial": {"data": {"path": str(self.data), "max_dev_examples": 8, "max_length": 32},
                         "model": {"backbone": "default"}, "method": {"name": "pgd", "adv_steps": 1},
                         "train": {"epochs": 1, "batch_size": 4}},
               "attack": {"recipe": "pwws", "n": 4, "split": "dev", "actors": 1},
               "search": {"num_samples": 1, "max_concurrent": 1},
               "resources": {"num_workers": 1, "cpus_per_worker": 1},
               "params": {"adv_lr": {"loguniform": [0.01, 0.1]}}}
        return merged(cfg, changes or {})

    def search_yaml(self, changes: dict[str, Any] | None = None) -> Path:
        path = self.inp / "search.yaml"
        path.write_text(yaml.safe_dump(self.search_dict(changes), sort_keys=False))
        return path

    def fake_search_dir(self, tracking_uri: str | None = None) -> Path:
        """A search folder as `distat search` leaves it before Tune saved anything (a valid state file)."""
        return make_search_dir(self.inp / "searches" / "s", self.search_dict(), fake_attack_cache(self.inp / "cache"),
                               tracking_uri or f"sqlite:///{self.inp / 'mlflow.db'}")


def make_search_dir(search_dir: Path, search: dict[str, Any], cache: Path, tracking_uri: str) -> Path:
    from distat.search.space import parse_search_config
    from distat.search.state import STATE_FILE

    scfg = parse_search_config(search)
    search_dir.mkdir(parents=True)
    spec = {"search": scfg.model_dump(mode="json", by_alias=True), "search_dir": str(search_dir),
            "cache_dir": str(cache), "resource_overrides": {}, "tracking_uri": tracking_uri}
    (search_dir / STATE_FILE).write_text(json.dumps(spec, indent=2))
    return search_dir


@dataclass
class Expect:
    argv: list[Any]
    absent: list[Path] = field(default_factory=list)  # must not exist afterwards
    unchanged: list[Path] = field(default_factory=list)  # files and folders left exactly as they were


@dataclass
class Case:
    id: str
    build: Callable[[Ctx], Expect]
    fragment: str | Callable[[Ctx], list[str]]  # in the error line (a callable: several, built from ctx)
    marks: tuple[Any, ...] = ()


# --------------------------------------------------------------------------------------------------
# the cases


def _malformed(ctx: Ctx, command: str) -> Expect:
    bad = ctx.inp / "bad.yaml"
    bad.write_text("method: {name: pgd\n")
    if command == "train":
        return Expect(["train", bad, "--output-dir", ctx.out], absent=[ctx.out])
    return Expect(["search", bad, "--storage", ctx.storage], absent=[ctx.storage])


def _train(changes: dict[str, Any]) -> Callable[[Ctx], Expect]:
    return lambda ctx: Expect(["train", ctx.trial_yaml(changes), "-q"], absent=[ctx.out])


def _search(changes: dict[str, Any], *extra: str) -> Callable[[Ctx], Expect]:
    return lambda ctx: Expect(["search", ctx.search_yaml(changes), "--storage", ctx.storage, *extra],
                              absent=[ctx.storage])


def _train_data(make: Callable[[Path], None]) -> Callable[[Ctx], Expect]:
    def build(ctx: Ctx) -> Expect:
        folder = ctx.inp / "data"
        make(folder)
        return Expect(["train", ctx.trial_yaml({"data": {"path": str(folder)}}), "-q"], absent=[ctx.out],
                      unchanged=[folder])
    return build


def _unreadable(folder: Path) -> None:
    write_dataset(folder)
    (folder / "train.tsv").chmod(0)


def _broken_csv(folder: Path) -> None:
    write_split(folder, "dev", ROWS, ext="csv")
    rows = ROWS[:2] + [("too , many", 1)] + ROWS[2:]  # unquoted comma: three fields on line 4
    write_split(folder, "train", rows, ext="csv")


def _label_out_of_range(folder: Path) -> None:
    write_dataset(folder)
    write_split(folder, "dev", [*ROWS, ("a third kind of review", 2)])


def _attack_unknown_recipe(ctx: Ctx) -> Expect:
    csv, export = ctx.inp / "attacked.csv", ctx.inp / "adv.tsv"
    return Expect(["attack", "--model", ctx.fixture("tiny_model_dir"), "--data", ctx.data, "--split", "dev",
                   "--recipe", "textfoolr", "--actors", "0", "--csv", csv, "--export", export],
                  absent=[csv, export])


def _static_broken_csv(ctx: Ctx) -> Expect:
    folder = ctx.inp / "adv"
    write_split(folder, "sst2", [*ROWS[:3], ("a , b", 0)], ext="csv")
    return Expect(["static", "--model", ctx.fixture("tiny_model_dir"), "--data", folder / "sst2.csv"],
                  unchanged=[folder])


def _static_too_few_labels(ctx: Ctx) -> Expect:
    folder = ctx.inp / "adv"
    write_split(folder, "sst2", [*ROWS, ("neither good nor bad", 2)])  # no dataset.json: labels 0..2
    return Expect(["static", "--model", ctx.fixture("tiny_model_dir"), "--data", folder / "sst2.tsv",
                   "--num-labels", "2"], unchanged=[folder])


def _gpus(ctx: Ctx) -> Expect:
    cache = fake_attack_cache(ctx.inp / "cache")
    spec = ctx.search_yaml({"resources": {"num_workers": 2, "use_gpu": True, "cpus_per_worker": 1}})
    return Expect(["search", spec, "--storage", ctx.storage, "--cache-dir", cache], absent=[ctx.storage])


def _resume_other_backbone(ctx: Ctx) -> Expect:
    run = ctx.fixture("trained_run")
    cfg = yaml.safe_load(run["config"].read_text())
    cfg["model"]["backbone"] = str(ctx.fixture("other_model_dir"))
    path = ctx.inp / "other.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return Expect(["train", path, "--resume", "-q"], unchanged=[run["out"]])


def _other_backbone_fragments(ctx: Ctx) -> list[str]:
    return ["backbone", repr(str(ctx.fixture("tiny_model_dir"))), repr(str(ctx.fixture("other_model_dir")))]


def _not_a_search(command: str) -> Callable[[Ctx], Expect]:
    def build(ctx: Ctx) -> Expect:
        folder = ctx.inp / "empty"
        folder.mkdir()
        return Expect([command, folder], unchanged=[folder])
    return build


def _existing_search(ctx: Ctx) -> Expect:
    cache = fake_attack_cache(ctx.inp / "cache")
    existing = make_search_dir(ctx.storage / "s", ctx.search_dict(), cache, "sqlite:///unused.db")
    return Expect(["search", ctx.search_yaml(), "--storage", ctx.storage, "--cache-dir", cache],
                  unchanged=[existing])


def _storage_file(ctx: Ctx) -> Expect:
    file = ctx.inp / "storage.txt"
    file.write_text("not a folder\n")
    return Expect(["search", ctx.search_yaml(), "--storage", file, "--cache-dir", fake_attack_cache(ctx.inp / "cache")],
                  unchanged=[file])


def _resume_with(flag: str, value: Callable[[], str]) -> Callable[[Ctx], Expect]:
    def build(ctx: Ctx) -> Expect:
        folder = ctx.fake_search_dir()
        return Expect(["resume", folder, flag, value()], unchanged=[folder])
    return build


def _extend_with(*flags: str) -> Callable[[Ctx], Expect]:
    def build(ctx: Ctx) -> Expect:
        folder = ctx.fake_search_dir()
        return Expect(["extend", folder, *(f.format(port=free_port()) for f in flags)], unchanged=[folder])
    return build


def _corrupt_state(ctx: Ctx) -> Expect:
    folder = ctx.inp / "searches" / "s"
    folder.mkdir(parents=True)
    (folder / "distat_search.json").write_text('{"search": ')
    return Expect(["resume", folder], unchanged=[folder])


not_root = pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                              reason="root reads files whatever their permissions")

CASES = [
    Case("train-malformed-yaml", lambda ctx: _malformed(ctx, "train"), "invalid YAML"),
    Case("search-malformed-yaml", lambda ctx: _malformed(ctx, "search"), "invalid YAML"),
    Case("train-unknown-method", _train({"method": {"name": "pgdd"}}), "unknown method 'pgdd'"),
    Case("search-unknown-method", _search({"params": {"method": {"choice": ["pgd", "pgdd"]}}}),
         "unknown method 'pgdd'"),
    Case("search-unknown-recipe", _search({"attack": {"recipe": "textfoolr"}}), "unknown attack recipe 'textfoolr'"),
    Case("attack-unknown-recipe", _attack_unknown_recipe, "unknown attack recipe 'textfoolr'"),
    Case("train-unknown-key", _train({"methd": {"name": "pgd"}}), "methd: unknown key"),
    Case("search-unknown-key", _search({"attak": {"n": 3}}), "attak: unknown key"),
    Case("search-more-gpus-than-the-cluster", _gpus, "a trial needs 2 GPU (training: 2 worker(s)",
         (pytest.mark.slow,)),  # starts a local Ray
    Case("train-missing-data-folder", _train({"data": {"path": "/nonexistent/distat-data"}}),
         "/nonexistent/distat-data does not exist"),
    Case("search-missing-data-folder", _search({"trial": {"data": {"path": "/nonexistent/distat-data"}}}),
         "dataset folder /nonexistent/distat-data does not exist"),
    Case("train-unreadable-data-file", _train_data(_unreadable), "Permission denied", (not_root,)),
    Case("train-csv-broken-row", _train_data(_broken_csv), "train.csv, line 4: expected 2 comma-separated fields"),
    Case("static-csv-broken-row", _static_broken_csv, "sst2.csv, line 5: expected 2 comma-separated fields"),
    Case("train-label-out-of-range", _train_data(_label_out_of_range), "label 2 is outside 0..1"),
    Case("static-num-labels-below-data", _static_too_few_labels, "label 2 is outside 0..1 (num_labels is 2)"),
    Case("train-resume-other-backbone", _resume_other_backbone, _other_backbone_fragments),
    Case("resume-not-a-search", _not_a_search("resume"), "not a distat search directory"),
    Case("pareto-empty-dir", _not_a_search("pareto"), "not a distat search directory"),
    Case("resume-corrupt-state", _corrupt_state, "unreadable search state"),
    Case("search-storage-uri", lambda ctx: Expect(["search", ctx.search_yaml(), "--storage", "s3://bucket/x",
                                                   "--cache-dir", fake_attack_cache(ctx.inp / "cache")]),
         "is a s3:// URI: distat needs a shared filesystem path"),
    Case("search-storage-is-a-file", _storage_file, "is a file, not a folder"),
    Case("search-existing-search", _existing_search, "already holds a search"),
    Case("train-output-dir-is-a-file", lambda ctx: Expect(["train", ctx.trial_yaml(), "--output-dir", ctx.data / "train.tsv"],
                                                          unchanged=[ctx.data]),
         "train.tsv: is a file, not a folder"),
    Case("train-output-dir-uri", lambda ctx: Expect(["train", ctx.trial_yaml(), "--output-dir", "gs://b/out"]),
         "output_dir: 'gs://b/out' is a URI"),
    Case("resume-cache-dir-uri", _resume_with("--cache-dir", lambda: "gs://bucket/cache"),
         "--cache-dir 'gs://bucket/cache' is a gs:// URI"),
    Case("search-misspelt-flag", lambda ctx: Expect(["search", ctx.search_yaml(), "--storrage", ctx.storage],
                                                    absent=[ctx.storage]),
         "unrecognized arguments: --storrage"),
    Case("search-warm-start-not-a-search", lambda ctx: Expect(
        ["search", ctx.search_yaml(), "--storage", ctx.storage, "--cache-dir", fake_attack_cache(ctx.inp / "cache"),
         "--warm-start", ctx.inp], absent=[ctx.storage]), "not a distat search directory"),
    Case("extend-not-a-search", lambda ctx: Expect(["extend", ctx.inp, "--trials", "2"], unchanged=[ctx.inp]),
         "not a distat search directory"),
    Case("extend-zero-trials", _extend_with("--trials", "0"), "--trials: must be a whole number of at least 1, got '0'"),
    Case("extend-unreachable-tracking-uri", _extend_with("--trials", "1", "--tracking-uri", "http://127.0.0.1:{port}"),
         "is unreachable"),
    Case("resume-unreachable-tracking-uri", _resume_with("--tracking-uri", lambda: f"http://127.0.0.1:{free_port()}"),
         "is unreachable"),
]


# --------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A second tiny random BERT (hidden 48 instead of 32): another backbone."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(1)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=48, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=2)
    path = tmp_path_factory.mktemp("other_bert")
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model_dir, tiny_data) -> dict[str, Path]:
    """One epoch of `distat train` with the tiny BERT: a checkpoint to (wrongly) resume from."""
    from distat.cli import main

    root = tmp_path_factory.mktemp("trained")
    cfg = {"seed": 3, "data": {"path": str(tiny_data), "max_length": 32}, "model": {"backbone": str(tiny_model_dir)},
           "method": {"name": "fgm"}, "train": {"epochs": 1, "batch_size": 4}, "output_dir": str(root / "out")}
    path = root / "trial.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "-q"]) == 0
    assert (root / "out" / "checkpoints" / "epoch_001" / "distat_meta.json").is_file()
    return {"config": path, "out": root / "out"}


# --------------------------------------------------------------------------------------------------
# the table test


def snapshot(path: Path) -> dict[str, tuple[int, int]] | None:
    """Every file and folder under ``path`` with its size and modification time (None: absent)."""
    if not path.exists():
        return None
    entries = [path, *sorted(path.rglob("*"))] if path.is_dir() else [path]
    out = {}
    for p in entries:
        st = p.stat()
        out[str(p.relative_to(path.parent))] = (st.st_size if p.is_file() else -1, st.st_mtime_ns)
    return out


def run_cli(argv: list[Any], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "DISTAT_CACHE_DIR": str(cwd.parent / "no-cache"), "RAY_DEDUP_LOGS": "1"}
    return subprocess.run([sys.executable, "-m", "distat.cli", *map(str, argv)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case: Case, tmp_path, request):
    ctx = Ctx(tmp_path, request)
    expect = case.build(ctx)
    before = {p: snapshot(p) for p in expect.unchanged}
    proc = run_cli(expect.argv, ctx.cwd)
    fragments = case.fragment(ctx) if callable(case.fragment) else [case.fragment]

    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and proc.stderr.endswith("\n"), f"expected one stderr line, got:\n{proc.stderr[-3000:]}"
    assert lines[0].startswith("distat: error: ") and lines[0].strip() != "distat: error:", lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert proc.returncode == 2, (proc.returncode, proc.stderr)

    assert list(ctx.cwd.iterdir()) == [], "the command wrote into its working directory"
    for path in expect.absent:
        assert not path.exists(), f"{path} was created"
    for path in expect.unchanged:
        assert snapshot(path) == before[path], f"{path} changed"
    assert not (tmp_path / "no-cache").exists()


# --------------------------------------------------------------------------------------------------
# distat resume: --tracking-uri, --cache-dir, and a search Tune never saved


def test_resume_parses_tracking_uri_and_cache_dir():
    from distat.cli import build_parser, cmd_resume

    args = build_parser().parse_args(["resume", "runs/searches/demo", "--address", "auto", "--tracking-uri",
                                      "http://mlflow.internal:5000", "--cache-dir", "/mnt/efs/cache"])
    assert (args.func, args.search_dir, args.address) == (cmd_resume, "runs/searches/demo", "auto")
    assert (args.tracking_uri, args.cache_dir) == ("http://mlflow.internal:5000", "/mnt/efs/cache")
    args = build_parser().parse_args(["resume", "x"])
    assert args.tracking_uri is None and args.cache_dir is None  # the saved ones are kept


@pytest.fixture
def search_dir(tmp_path, request) -> Path:
    return Ctx(tmp_path, request).fake_search_dir(tracking_uri="http://old-server:5000")


def test_resume_overrides_are_saved_and_reach_the_restored_mlflow_callback(search_dir, tmp_path):
    from distat.search.state import STATE_FILE, SavedTrackingUri, SearchState
    from distat.tracking.mlflow import MLflowTrialCallback

    # the callback as Tune's snapshot brings it back: pickled with the URI of the search's start
    callback = MLflowTrialCallback("http://old-server:5000", "s", search_dir, uri_source=SavedTrackingUri(search_dir))
    restored = pickle.loads(pickle.dumps(callback))
    assert restored.tracking_uri == "http://old-server:5000"

    stamp = (search_dir / STATE_FILE).stat().st_mtime_ns
    SearchState.load(search_dir).updated(tracking_uri=None, cache_dir=None)  # nothing given: the file is not rewritten
    assert (search_dir / STATE_FILE).stat().st_mtime_ns == stamp

    SearchState.load(search_dir).updated(tracking_uri="http://new-server:5000", cache_dir=str(tmp_path / "moved-cache"))
    state = SearchState.load(search_dir)
    assert state.tracking_uri == "http://new-server:5000" and state.cache_dir == str(tmp_path / "moved-cache")
    saved = json.loads((search_dir / STATE_FILE).read_text())
    assert state.search.name == "s" and saved["search"]["name"] == "s"  # the rest of the state is kept
    assert restored.tracking_uri == "http://new-server:5000"


def test_resume_restarts_a_search_tune_never_saved(search_dir):
    from distat.search.driver import discard_unfinished_trials, resume_plan
    from distat.search.state import FINAL_FILE

    assert resume_plan(search_dir) == "restart"  # driver died after distat_search.json, before the Tuner
    finished, unfinished = search_dir / "trials" / "a", search_dir / "trials" / "b"
    (finished / "checkpoints").mkdir(parents=True)
    (finished / FINAL_FILE).write_text("{}")
    (unfinished / "checkpoints" / "epoch_001").mkdir(parents=True)
    assert discard_unfinished_trials(search_dir) == ["b"]
    assert finished.is_dir() and not unfinished.exists()

    (search_dir / "tuner.pkl").write_bytes(b"")  # what Tune writes first (Tuner.can_restore looks for it)
    assert resume_plan(search_dir) == "restore"


def test_resume_without_tune_state_runs_the_saved_search_in_place(search_dir, monkeypatch):
    """`resume_search` wiring for that case, with the Tune run itself replaced (no Ray here)."""
    from distat.search import driver
    from distat.search.state import SearchState

    started = {}
    monkeypatch.setattr(driver, "_fit_new", lambda state, callbacks=(): started.update(
        name=state.search.name, state=state, storage=state.dir.parent, experiment=state.dir.name,
        callbacks=list(callbacks)))
    (search_dir / "trials" / "b" / "checkpoints").mkdir(parents=True)
    moved = search_dir.parent.parent / "moved" / "s"  # the folder was moved: the trials must go where it is now
    moved.parent.mkdir()
    search_dir.rename(moved)
    removed: list[list[str]] = []
    driver.resume_search(moved, callbacks=["progress"], on_restart=removed.append)
    assert removed == [["b"]]  # the caller hears which unfinished trials were dropped
    assert started["name"] == "s" and (started["storage"], started["experiment"]) == (moved.parent, "s")
    assert started["state"].search_dir == str(moved) and started["callbacks"] == ["progress"]
    assert SearchState.load(moved).search_dir == str(moved)
    assert not (moved / "trials" / "b").exists()


def test_cluster_check_counts_the_largest_phase_of_a_trial(request, tmp_path):
    from distat.search.capacity import resource_shortfall, trial_needs
    from distat.search.space import parse_search_config

    ctx = Ctx(tmp_path, request)
    scfg = parse_search_config(ctx.search_dict({
        "resources": {"num_workers": 2, "use_gpu": True, "cpus_per_worker": 2},
        "attack": {"actors": 4, "cpus_per_actor": 1, "gpus_per_actor": 0.25}}))
    needs = trial_needs(scfg)
    # training (2 GPU, 4 CPU) and the attack (1 GPU, 4 CPU) run one after the other: not 3 GPU, not 8 CPU
    assert needs["GPU"][0] == 2 and needs["CPU"][0] == 4
    assert resource_shortfall(needs, {"CPU": 4.0, "GPU": 2.0}) is None
    problem = resource_shortfall(needs, {"CPU": 16.0})
    assert problem.startswith("a trial needs 2 GPU (training: 2 worker(s) x 2 CPU + 1 GPU) but the Ray cluster "
                              "has 0") and "\n" not in problem
    assert "needs 4 CPU" in resource_shortfall(needs, {"CPU": 3.0, "GPU": 8.0})
