"""Multi-objective early stopping in a real search: 4 tiny trials on a local Ray, probed at the first rung; the
dominated one is stopped there, reaches Optuna as a complete observation tagged with its rung, and is kept
off the front."""

from __future__ import annotations

import csv
import json

from distat.cli import main

from faultkit import optuna_history
from helpers import search_yaml

# On these 48 rows the tiny random BERT, trained at lr 3e-3, collapses to the dev rows' minority class after one
# epoch (clean and probe robust accuracy 1/3), while left untrained (lr 1e-9) it predicts the majority class
# (2/3 on both): the trained trial is dominated. It runs third, so two trials are at the rung when it arrives.
LR_COLLAPSE, LR_NONE = 0.003, 1e-9
EPOCHS = 8  # short epochs: a stopped trial that trained on would reach the last one


def test_early_stopping_stops_the_dominated_trial_at_the_first_rung(tmp_path, tiny_model_dir, attack_paths, capsys):
    from distat.search.early_stop import RungBook
    from distat.search.space import load_search_config

    spec = search_yaml(tmp_path, tiny_model_dir, "es4", updates={
        "trial": {"train": {"epochs": EPOCHS}},
        # attacked in the rank-0 Train worker (no actors): a stopped trial must skip that attack too
        "attack": {"actors": 0},
        "search": {"early_stop": {"rungs": [1], "probe_n": 3, "probe_query_budget": 100},
                   "points": [{"lr": LR_NONE}, {"lr": LR_NONE}, {"lr": LR_COLLAPSE}, {"lr": LR_NONE}]},
    }, params={"lr": {"choice": [LR_NONE, LR_COLLAPSE]}})
    storage = tmp_path / "searches"
    assert main(["search", str(spec), "--storage", str(storage),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 0
    out = capsys.readouterr().out
    search_dir = storage / "es4"
    finals = {p.parent.name: json.loads(p.read_text()) for p in search_dir.glob("trials/*/final.json")}
    assert len(finals) == 4
    # every trial was probed at the rung (epoch 1), on the same subset under the same probe spec
    probes = {t: json.loads((search_dir / "trials" / t / "probe" / "epoch_001" / "probe.json").read_text())
              for t in finals}
    assert len({p["probe_threat_spec_hash"] for p in probes.values()}) == 1
    stopped = {t for t, f in finals.items() if "early_stopped_epoch" in f["metrics"]}
    dead = next(t for t, f in finals.items() if f["params"]["lr"] == LR_COLLAPSE)
    assert stopped == {dead}, {t: (f["params"], f["metrics"].get("clean_acc"), probes[t]["probe_robust_acc"])
                               for t, f in finals.items()}
    # the stopped trial ended at its rung: its final result is the rung's, with no full robust evaluation
    assert finals[dead]["metrics"]["early_stopped_epoch"] == 1.0 and "robust_acc" not in finals[dead]["metrics"]
    assert finals[dead]["metrics"]["probe_robust_acc"] == probes[dead]["probe_robust_acc"]
    # stopped for real, at the rung: its Train workers waited there for the decision and ended their loop (no
    # epoch after the rung, of its 8), and its model was never attacked beyond the probe
    assert _newest_epoch(search_dir / "trials" / dead) == 1
    decision = json.loads((search_dir / "trials" / dead / "probe" / "epoch_001" / "decision.json").read_text())
    assert decision["stop"] is True and ": in the bottom" in decision["reason"]
    assert not (search_dir / "trials" / dead / "attack.csv").exists()
    # the trials it let through were told so at the rung, and trained to the end
    for t in finals:
        if t != dead:
            told = json.loads((search_dir / "trials" / t / "probe" / "epoch_001" / "decision.json").read_text())
            assert told["stop"] is False and _newest_epoch(search_dir / "trials" / t) == EPOCHS
    assert all("robust_acc" in f["metrics"] for t, f in finals.items() if t != dead)
    # the scheduler's rule, replayed on the rung values in the order the trials reached the rung, agrees
    scfg = load_search_config(spec)
    book = RungBook(scfg.search.early_stop)
    arrivals = sorted(finals, key=lambda t: (search_dir / "trials" / t / "probe" / "epoch_001" / "probe.json").stat().st_mtime)
    rung_clean = {t: finals[t]["metrics"]["clean_acc"] if t == dead else _rung_clean(search_dir, t) for t in finals}
    replay = {t for t in arrivals if book.record(t, 1, (rung_clean[t], probes[t]["probe_robust_acc"])).stop}
    assert replay == stopped
    # Optuna: four complete observations; the stopped one holds its rung values and the rung
    history = optuna_history(search_dir)
    assert [t["state"] for t in history] == ["COMPLETE"] * 4
    told = {t["params"]["lr"]: t for t in history}[LR_COLLAPSE]
    assert told["values"] == [finals[dead]["metrics"]["clean_acc"], probes[dead]["probe_robust_acc"]]
    assert told["user_attrs"]["early_stopped_epoch"] == 1.0
    # off the front, and said so
    with open(search_dir / "pareto" / "pareto.csv", newline="") as f:
        rows = {row["trial_id"]: row for row in csv.DictReader(f)}
    assert rows[dead]["on_front"] == "False" and any(row["on_front"] == "True" for row in rows.values())
    assert f"early stopping: 1 trial(s) stopped at a rung ({dead})" in out
    assert "Spearman" in out


def _rung_clean(search_dir, trial_id):
    """A finished trial's clean accuracy after the rung epoch (its training history)."""
    result = json.loads((search_dir / "trials" / trial_id / "train_result.json").read_text())
    return next(h["clean_acc"] for h in result["history"] if int(h["epoch"]) == 1)


def _newest_epoch(trial_dir):
    return max((int(p.name.removeprefix("epoch_")) for p in (trial_dir / "checkpoints").glob("epoch_*")), default=0)
