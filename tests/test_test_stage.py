"""Several attacks per evaluation, the test stage and the report, end to end (issue 14).

A real 2-trial search on shared SST-2 rows with two recipes (PWWS, TextBugger) and the AdvGLUE static set, the
worst case as its objective, a real `mlflow server`; then `distat evaluate` killed with SIGKILL midway and run
again (it attacks only what is left), and `distat report` (every column with its interval). A second search
whose only difference is `max_modify_rate` refuses to share the report's columns.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from distat.cli import main

from faultkit import MlflowServer, kill_group, start_driver, wait_for
from helpers import search_yaml, shared_data_dir

REPO = Path(__file__).resolve().parents[1]
ATTACKS = ("pwws", "textbugger", "advglue")
TEST_N = 30


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield server.uri
    server.stop()


def _spec(tmp_path: Path, tiny_model_dir: Path, name: str, modify_rate: float = 0.3,
          evaluate: dict | None = None) -> Path:
    return search_yaml(tmp_path, tiny_model_dir, name, num_samples=2, updates={
        "attack": {"recipe": None, "recipes": ["pwws", {"recipe": "textbugger", "options": {"max_candidates": 3}}],
                   "static_sets": [{"name": "advglue", "path": str(shared_data_dir() / "advglue" / "sst2.tsv")}],
                   "options": {"max_modify_rate": modify_rate}, "n": 4, "actors": 0},
        "evaluate": evaluate or {"n": TEST_N},
        "search": {"points": [{"method": "pgd"}, {"method": "fgm"}]},  # one trial of each: two report rows
        "trial": {"train": {"epochs": 1}},
    }, params={"method": {"choice": ["pgd", "fgm"]}, "adv_lr": {"loguniform": [0.01, 0.1]}},
        method={"name": "pgd", "adv_steps": 1})


def _journal_records(path: Path) -> int:
    if not path.is_file():
        return 0
    return max(0, len([line for line in path.read_text().splitlines() if line.strip()]) - 1)


@pytest.mark.slow
def test_several_attacks_test_stage_and_report(tmp_path, tiny_model_dir, attack_paths, mlflow_server, capsys):
    from mlflow.tracking import MlflowClient

    storage = tmp_path / "searches"
    spec = _spec(tmp_path, tiny_model_dir, "multi")
    assert main(["search", str(spec), "--storage", str(storage), "--tracking-uri", mlflow_server]) == 0
    out = capsys.readouterr()
    assert "attack: pwws, textbugger + static advglue; objective: the worst case (min)" in out.err
    search_dir = storage / "multi"
    finals = {p.parent.name: json.loads(p.read_text())["metrics"] for p in search_dir.glob("trials/*/final.json")}
    assert len(finals) == 2
    for trial_id, m in finals.items():
        # every attack's numbers, the objective the minimum over them, each under its own spec
        per_attack = {name: m[f"robust_acc.{name}"] for name in ATTACKS}
        assert m["robust_acc"] == min(per_attack.values())
        assert per_attack[m["robust_attack"]] == m["robust_acc"]
        assert m["n.pwws"] == m["n.textbugger"] == 4 and m["n.advglue"] == 148
        hashes = {m[f"threat_spec_hash.{name}"] for name in ATTACKS}
        assert len(hashes | {m["threat_spec_hash"]}) == 4
        trial_dir = search_dir / "trials" / trial_id
        assert {p.name for p in trial_dir.glob("threat_spec*.json")} == {
            "threat_spec.json", *(f"threat_spec.{n}.json" for n in ATTACKS)}
        assert (trial_dir / "attack.pwws.csv").is_file() and (trial_dir / "attack.textbugger.csv").is_file()
    # textbugger's own options over the common ones: its spec differs from pwws's in them
    spec_tb = json.loads((trial_dir / "threat_spec.textbugger.json").read_text())["spec"]
    assert spec_tb["max_candidates"] == 3 and spec_tb["max_modify_rate"] == 0.3

    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("multi")
    children = {r.data.tags["distat.trial_id"]: r for r in client.search_runs([exp.experiment_id])
                if "mlflow.parentRunId" in r.data.tags}
    for trial_id, run in children.items():
        assert run.data.tags["distat.threat_spec_hash.pwws"] == finals[trial_id]["threat_spec_hash.pwws"]
        assert run.data.metrics["robust_acc.advglue"] == pytest.approx(finals[trial_id]["robust_acc.advglue"])
        assert run.data.params["trial.method.name"] in ("pgd", "fgm")  # the whole trial config

    # the test stage, killed midway: only what is left is attacked when it runs again
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = tmp_path / "evaluate.log"
    driver = start_driver(["evaluate", str(search_dir), "--tracking-uri", mlflow_server, "-q"], tmp_path, env, log)
    journals = lambda: [p for p in search_dir.glob("trials/*/test/attack.pwws.jsonl") if _journal_records(p) >= 5]  # noqa: E731
    try:
        first = wait_for(journals, timeout=300, what="5 attacked test examples", poll=0.05, alive=driver)[0]
    finally:
        kill_group(driver)
    kept = _journal_records(first)
    assert 5 <= kept < TEST_N, log.read_text()[-2000:]
    assert not (first.parent / "metrics.json").exists()

    capsys.readouterr()
    assert main(["evaluate", str(search_dir), "--tracking-uri", mlflow_server, "-q"]) == 0
    said = capsys.readouterr()
    assert f"{kept} kept from an interrupted run" in said.err, said.err
    records = (first.parent / "attack.pwws.csv").read_text().splitlines()
    assert len(records) == TEST_N + 1  # every example once (header + rows)
    assert _journal_records(first) == TEST_N  # nothing attacked twice
    evaluated = [p.parent.parent.name for p in search_dir.glob("trials/*/test/metrics.json")]
    assert evaluated
    for trial_id in evaluated:
        m = json.loads((search_dir / "trials" / trial_id / "test" / "metrics.json").read_text())["metrics"]
        assert m["test_n.pwws"] == TEST_N and m["test_clean_n"] > TEST_N  # clean: the whole test split
        assert m["test_robust_acc"] == min(m[f"test_robust_acc.{n}"] for n in ATTACKS)
        run = client.get_run(children[trial_id].info.run_id)
        assert run.data.metrics["test_robust_acc.textbugger"] == pytest.approx(m["test_robust_acc.textbugger"])
        assert run.data.tags["distat.test_threat_spec_hash"] == m["test_threat_spec_hash"]

    # a finished evaluation is not redone
    assert main(["evaluate", str(search_dir), "--tracking-uri", mlflow_server, "-q"]) == 0
    assert "0 example(s) attacked" in capsys.readouterr().out

    # the report: every column, with intervals and n, the spec hashes in the header, files + MLflow
    assert main(["report", str(search_dir), "--tracking-uri", mlflow_server]) == 0
    table = capsys.readouterr().out
    for title in ("Clean %", "pwws RA %", "textbugger RA %", "advglue RA %", "worst-case RA %"):
        assert title in table
    tests = {t: json.loads((search_dir / "trials" / t / "test" / "metrics.json").read_text())["metrics"]
             for t in evaluated}
    some = next(iter(tests.values()))
    assert re.search(rf"(\*\*)?{100 * some['test_robust_acc.advglue']:.1f}(\*\*)? \[", table), table
    assert table.count("| pgd |") == 1 and table.count("| fgm |") == 1
    # each row against the column's best on the same examples: a paired difference with its bootstrap interval
    assert re.search(r"paired Δ pwws RA vs (pgd|fgm) \(\w+\), the same examples", table), table
    assert some["test_threat_spec_hash.pwws"] in table
    assert {p.name for p in (search_dir / "report").iterdir()} == {"report.md", "report.csv", "report.tex",
                                                                  "report.html"}
    parent = next(r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags)
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"report.md", "report.tex"}

    # a search that differs only in max_modify_rate: its numbers are of another threat model (its test stage runs
    # when the search ends, as its YAML asks)
    other = _spec(tmp_path, tiny_model_dir, "multi_mmr", modify_rate=0.1, evaluate={"n": 3, "after_search": True})
    assert main(["search", str(other), "--storage", str(storage), "--tracking-uri", mlflow_server]) == 0
    assert "test stage: the front and each method's best trial on the test split" in capsys.readouterr().err
    assert list((storage / "multi_mmr").glob("trials/*/test/metrics.json"))
    assert main(["report", str(search_dir), str(storage / "multi_mmr"), "--split", "dev", "--no-mlflow"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different threat models" in err and "max_modify_rate 0.3 vs 0.1" in err
    shutil.rmtree(storage / "multi_mmr")
