"""Imbalanced data (issue 14 item 9), the search side: a clean objective the majority class cannot game
(macro-F1, balanced accuracy), the clean floor as a margin over the majority-class rate, and a label-balanced
attacked subset. The scores themselves are tested in tests/test_scores.py."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from distat.errors import ConfigError
from distat.search.space import clean_floor, describe, majority_rate, parse_search_config

from helpers import shared_data_dir

SPAM_RATE = 0.13


def _imbalanced(folder: Path, dev: int = 100) -> Path:
    """SST-2 rows re-split so that 13% of dev (and of train) are positive, like a spam set: train, dev, test."""
    rows: dict[int, list[str]] = {0: [], 1: []}
    with (shared_data_dir() / "sst2" / "train.tsv").open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            rows[int(row["label"])].append(row["sentence"])
    folder.mkdir(parents=True)
    start = {0: 0, 1: 0}
    for split, size in (("train", 200), ("dev", dev), ("test", 100)):
        pos = round(size * SPAM_RATE)
        take = {1: pos, 0: size - pos}
        with (folder / f"{split}.tsv").open("w", encoding="utf-8") as fh:
            fh.write("sentence\tlabel\n")
            for label, k in take.items():
                for text in rows[label][start[label]:start[label] + k]:
                    fh.write(f"{text}\t{label}\n")
                start[label] += k
    return folder


def _search(data: Path, **search: Any) -> dict[str, Any]:
    return {"name": "spam", "trial": {"data": {"path": str(data)}, "model": {"backbone": "default"},
                                      "method": {"name": "pgd"}},
            "attack": {"n": 20, "stratify": True}, "search": search,
            "params": {"adv_lr": {"loguniform": [0.01, 0.1]}}}


def test_the_clean_objective_may_be_macro_f1_or_balanced_accuracy(tmp_path: Path) -> None:
    data = _imbalanced(tmp_path / "spam")
    for metric in ("macro_f1", "balanced_acc"):
        cfg = parse_search_config(_search(data, objectives=[metric, "robust_acc"]))
        assert cfg.search.clean_metric == metric and cfg.search.modes == ["max", "max"]
    assert parse_search_config(_search(data)).search.clean_metric == "clean_acc"
    for bad in (["robust_acc"], ["clean_acc", "macro_f1"], ["macro_f1", "robust_acc", "clean_acc"]):
        with pytest.raises(ConfigError, match=r"search.objectives: must be \[<clean>, robust_acc\]"):
            parse_search_config(_search(data, objectives=bad))


def test_the_clean_floor_over_the_majority_rate(tmp_path: Path) -> None:
    data = _imbalanced(tmp_path / "spam")
    cfg = parse_search_config(_search(data, clean_acc_over_majority=0.05))
    assert majority_rate(cfg) == pytest.approx(1 - SPAM_RATE)
    assert clean_floor(cfg) == pytest.approx(0.92)
    text = describe(cfg)
    assert "infeasible below clean_acc 0.92 (the dev majority-class rate 0.870 + 0.05)" in text
    assert "(label-balanced)" in text
    assert clean_floor(parse_search_config(_search(data, clean_acc_floor=0.6))) == 0.6
    assert clean_floor(parse_search_config(_search(data))) is None
    with pytest.raises(ConfigError, match="clean_acc_floor or clean_acc_over_majority, not both"):
        parse_search_config(_search(data, clean_acc_floor=0.6, clean_acc_over_majority=0.05))


def test_a_macro_f1_front_floors_accuracy_and_plots_the_objective(tmp_path: Path) -> None:
    """The front's clean axis is the clean objective; the floor still reads clean accuracy, which is shown
    beside it: a majority-class model (accuracy 0.87, macro-F1 0.47) is infeasible, not a front point."""
    from distat.search.driver import trial_points
    from distat.search.state import TrialResult

    data = _imbalanced(tmp_path / "spam")
    cfg = parse_search_config(_search(data, objectives=["macro_f1", "robust_acc"], clean_acc_over_majority=0.02))
    search_dir = tmp_path / "search"
    for trial_id, metrics in {"majority": {"clean_acc": 0.87, "macro_f1": 0.465, "robust_acc": 0.87},
                              "real": {"clean_acc": 0.93, "macro_f1": 0.84, "robust_acc": 0.5}}.items():
        folder = search_dir / "trials" / trial_id
        folder.mkdir(parents=True)
        TrialResult(trial_id=trial_id, params={"adv_lr": 0.05}, metrics=metrics, train={"dev_n": 100.0, **metrics},
                    train_wall=(0.0, 1.0), placement={}).save(folder)
    points = {p.trial_id: p for p in trial_points(search_dir, clean_floor(cfg), cfg)}
    assert points["majority"].infeasible and not points["real"].infeasible
    assert points["real"].clean_acc == 0.84 and points["real"].extra["clean_acc"] == 0.93
    assert "clean_acc" not in points["real"].intervals  # macro-F1 is no count: no Wilson interval
