"""The per-trial table of benchmarks/early_stop.py, on two searches' records written by hand: one row per point
in the plain search's finishing order, what the point was after the rung epoch there, and what early stopping
made of it and why. (The benchmark itself runs two real searches: benchmarks/results/early_stop-*.md.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distat.search.probe import write_decision

from helpers import benchmark_script


@pytest.fixture(scope="module")
def bench():
    with benchmark_script("early_stop") as module:
        yield module


def _trial(work: Path, search: str, tid: str, params: dict, metrics: dict, history: list[dict],
           wall: tuple[float, float], decision: dict | None = None) -> None:
    out = work / search / "searches" / search / "trials" / tid
    out.mkdir(parents=True)
    (out / "final.json").write_text(json.dumps({
        "trial_id": tid, "params": params, "metrics": metrics, "train": {}, "train_wall": [wall[0], wall[0] + 1.0],
        "placement": {}, "finished_at": wall[1]}))
    (out / "train_result.json").write_text(json.dumps({
        "loop_s": 1.0, "metrics": history[-1], "diverged": False, "history": history, "checkpoint": None,
        "resumed_from_epoch": 0, "workers": []}))
    if decision is not None:
        write_decision(out, 1, **decision)


def test_the_table_follows_each_point_through_both_searches(bench, tmp_path):
    slow = {"method": "pgd", "adv_lr": 0.1, "lr": 1e-4}
    fast = {"method": "standard", "lr": 2e-4}
    history = [{"epoch": 1.0, "clean_acc": 0.51, "dev_loss": 0.691}, {"epoch": 2.0, "clean_acc": 0.745}]
    # the plain search finished the slow starter second, the fast one first (its id sorts first)
    _trial(tmp_path, "plain", "p0", slow, {"clean_acc": 0.745, "robust_acc": 0.38}, history, (100.0, 322.0))
    _trial(tmp_path, "plain", "p1", fast, {"clean_acc": 0.795, "robust_acc": 0.29},
           [{"epoch": 1.0, "clean_acc": 0.78, "dev_loss": 0.459}], (0.0, 153.0))
    _trial(tmp_path, "stopping", "s0", fast, {"clean_acc": 0.795, "robust_acc": 0.29},
           [{"epoch": 1.0, "clean_acc": 0.78}], (0.0, 163.0), {"stop": False, "reason": "above the bottom 1"})
    _trial(tmp_path, "stopping", "s1", slow,
           {"clean_acc": 0.51, "probe_robust_acc": 0.417, "early_stopped_epoch": 1.0}, history[:1], (200.0, 258.0),
           {"stop": True, "reason": "position 3 of 3 at rung 1: in the bottom 2"})

    header, rule, first, second = bench.per_trial(tmp_path)
    assert header.count("|") == rule.count("|") == first.count("|") == 6
    assert first == "| standard, lr 0.0002 | 0.795, 0.290 (153 s) | 0.780, 0.459 | 0.795, 0.290 (163 s) | " \
                    "above the bottom 1 |"
    assert second == "| pgd α 0.1, lr 0.0001 | 0.745, 0.380 (222 s) | 0.510, 0.691 | stopped: 0.510, probe 0.417 " \
                     "(58 s) | position 3 of 3 at rung 1: in the bottom 2 |"


def test_a_point_the_early_stopping_search_never_finished_has_dashes(bench, tmp_path):
    _trial(tmp_path, "plain", "p0", {"method": "standard", "lr": 2e-4}, {"clean_acc": 0.8, "robust_acc": 0.3},
           [{"epoch": 1.0, "clean_acc": 0.7}], (0.0, 10.0))
    (tmp_path / "stopping" / "searches" / "stopping" / "trials").mkdir(parents=True)
    row = bench.per_trial(tmp_path)[-1]
    assert row == "| standard, lr 0.0002 | 0.800, 0.300 (10 s) | 0.700, - | - | - |"


def test_the_most_robust_point_counts_only_the_front(bench):
    from distat.tracking.pareto import TrialPoint

    points = [TrialPoint("a", 0.815, 0.39), TrialPoint("b", 0.51, 0.6, infeasible=True),  # collapsed, "robust"
              TrialPoint("c", 0.49, float("nan"), extra={"early_stopped_epoch": 1.0}), TrialPoint("d", 0.8, 0.35)]
    assert bench.most_robust(points) == 0.39
    assert bench.most_robust(points[1:3]) != bench.most_robust(points[1:3])  # no front: NaN
