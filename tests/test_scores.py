"""Scores for imbalanced data: distat.scores, the clean scores of training.evaluate, the per-class scores under
attack (attacks.metrics.class_scores / robust_recall_intervals) and the label-stratified attack subset."""

from __future__ import annotations

import json
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from distat.attacks.evaluate import select_examples
from distat.attacks.metrics import (
    AttackRecord,
    class_scores,
    prediction_under_attack,
    robust_recall_intervals,
    summarize,
    wilson_interval,
)
from distat.data import EncodedSplit, Split, load_dataset
from distat.scores import ClassScores, score_predictions
from distat.training import evaluate

from helpers import shared_data_dir

# --------------------------------------------------------------------------------------------------
# distat.scores


def test_hand_computed_three_classes():
    gold = [0, 0, 0, 1, 1, 2]
    pred = [0, 0, 1, 1, 2, 2]
    s = score_predictions(gold, pred, 3)
    # class 0: TP 2, predicted 2, support 3; class 1: TP 1, predicted 2, support 2; class 2: TP 1, predicted 2, support 1
    assert s.precision == (1.0, 0.5, 0.5)
    assert s.recall == pytest.approx((2 / 3, 0.5, 1.0))
    assert s.f1 == pytest.approx((0.8, 0.5, 2 / 3))
    assert s.support == (3, 2, 1)
    assert s.acc == pytest.approx(4 / 6)
    assert s.macro_f1 == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert s.balanced_acc == pytest.approx((2 / 3 + 0.5 + 1.0) / 3)
    assert s.majority_rate == 0.5
    assert s.n == 6 and s.num_labels == 3


def test_majority_predictor_on_13_percent_positive_set_is_shown_useless():
    """The spam case of issue 14: 87 ham, 13 spam, a filter that never says spam."""
    gold = [0] * 87 + [1] * 13
    always_ham = score_predictions(gold, [0] * 100, 2)
    assert always_ham.acc == 0.87 == always_ham.majority_rate  # accuracy looks good and means nothing
    assert always_ham.balanced_acc == 0.5  # chance level
    assert always_ham.recall == (1.0, 0.0) and always_ham.precision == (0.87, 0.0)  # no spam caught
    assert always_ham.macro_f1 == pytest.approx((2 * 0.87 / 1.87 + 0.0) / 2)  # about 0.47
    assert always_ham.macro_f1 < 0.5
    # a filter that catches 10 of the 13 spams at the price of 5 false alarms: lower accuracy, far better macro-F1
    useful = score_predictions(gold, [0] * 82 + [1] * 5 + [0] * 3 + [1] * 10, 2)
    assert useful.acc == 0.92
    assert useful.recall[1] == pytest.approx(10 / 13) and useful.precision[1] == pytest.approx(10 / 15)
    assert useful.macro_f1 > 0.8 and useful.balanced_acc > 0.85


def test_zero_division_and_absent_classes():
    # class 1 never predicted: precision 0 (zero_division=0); class 2 neither gold nor predicted: all 0, not averaged
    s = score_predictions([0, 1, 0], [0, 0, 0], 3)
    assert s.precision == (pytest.approx(2 / 3), 0.0, 0.0)
    assert s.recall == (1.0, 0.0, 0.0) and s.support == (2, 1, 0)
    assert s.macro_f1 == pytest.approx((0.8 + 0.0) / 2)
    assert s.balanced_acc == 0.5
    # one class only, predicted perfectly: 1, not 1/num_labels
    perfect = score_predictions([1, 1], [1, 1], 4)
    assert perfect.macro_f1 == 1.0 and perfect.balanced_acc == 1.0 and perfect.acc == 1.0
    # a class only predicted counts in macro-F1 (its F1 is 0) but not in balanced accuracy (it has no recall)
    wrong = score_predictions([0, 0], [0, 1], 2)
    assert wrong.recall == (0.5, 0.0) and wrong.macro_f1 == pytest.approx((2 / 3 + 0.0) / 2)
    assert wrong.balanced_acc == 0.5


def test_empty_input_gives_zeros():
    s = score_predictions([], [], 2)
    assert (s.n, s.acc, s.macro_f1, s.balanced_acc, s.majority_rate) == (0, 0.0, 0.0, 0.0, 0.0)
    assert s.precision == s.recall == s.f1 == (0.0, 0.0) and s.support == (0, 0)


@pytest.mark.parametrize(("labels", "preds", "num_labels", "message"), [
    ([0, 1], [0], 2, "2 labels but 1 predictions"),
    ([0, 2], [0, 1], 2, "labels holds 2, outside 0..1"),
    ([0, 1], [0, -1], 2, "preds holds -1"),
    ([0.0, 1.0], [0, 1], 2, "labels must be integers"),
    ([True, False], [0, 1], 2, "labels must be integers"),
    ([[0, 1]], [[0, 1]], 2, "one-dimensional"),
    ([0], [0], 0, "num_labels must be a positive integer"),
    ([0], [0], True, "num_labels must be a positive integer"),
])
def test_bad_input_is_one_clear_error(labels, preds, num_labels, message):
    with pytest.raises(ValueError, match=message):
        score_predictions(labels, preds, num_labels)


def test_as_dict_keys_are_flat_floats_and_stable():
    s = score_predictions(np.array([0, 1, 1]), np.array([0, 1, 0]), 2)
    d = s.as_dict()
    assert list(d) == ["acc", "macro_f1", "balanced_acc", "majority_rate", "precision.0", "precision.1",
                       "recall.0", "recall.1", "f1.0", "f1.1", "support.0", "support.1"]
    assert all(type(v) is float for v in d.values())
    assert d["support.1"] == 2.0 and d["recall.1"] == 0.5
    assert json.loads(json.dumps(d)) == d  # plain floats, as the result files need
    prefixed = s.as_dict("test_")
    assert prefixed == {f"test_{k}": v for k, v in d.items()}
    assert isinstance(s, ClassScores)
    with pytest.raises(AttributeError):  # frozen
        s.acc = 1.0  # type: ignore[misc]


@pytest.mark.filterwarnings("ignore:A single label was found:UserWarning")
@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true:UserWarning")
def test_agrees_with_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(11)
    for trial in range(200):
        num_labels = rng.randint(1, 5)
        n = rng.randint(1, 40)
        # skewed draws so that some classes are rare or absent from gold and/or predictions
        weights = [rng.random() ** 3 for _ in range(num_labels)]
        gold = rng.choices(range(num_labels), weights=weights, k=n)
        pred = [g if rng.random() < 0.6 else rng.randrange(num_labels) for g in gold]
        s = score_predictions(gold, pred, num_labels)
        every = list(range(num_labels))
        p, r, f, sup = metrics.precision_recall_fscore_support(gold, pred, labels=every, zero_division=0)
        where = f"case {trial}: {gold} / {pred}"
        assert s.precision == pytest.approx(tuple(p), abs=1e-12), where
        assert s.recall == pytest.approx(tuple(r), abs=1e-12), where
        assert s.f1 == pytest.approx(tuple(f), abs=1e-12), where
        assert s.support == tuple(int(x) for x in sup), where
        assert s.acc == pytest.approx(metrics.accuracy_score(gold, pred), abs=1e-12), where
        assert s.macro_f1 == pytest.approx(metrics.f1_score(gold, pred, average="macro", zero_division=0),
                                           abs=1e-12), where
        # sklearn drops classes that are only predicted (with a warning), as balanced_acc's definition does
        assert s.balanced_acc == pytest.approx(metrics.balanced_accuracy_score(gold, pred), abs=1e-12), where


# --------------------------------------------------------------------------------------------------
# training.evaluate


class _FirstToken(nn.Module):
    """Predicts ``first token id % num_labels`` (a one-hot of it as logits): known predictions, no training."""

    def __init__(self, num_labels: int) -> None:
        super().__init__()
        self.num_labels = num_labels
        self.scale = nn.Parameter(torch.tensor(5.0))
        self.config = SimpleNamespace(num_labels=num_labels)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return SimpleNamespace(logits=self.scale * nn.functional.one_hot(input_ids[:, 0] % self.num_labels,
                                                                         self.num_labels).float())


def test_evaluate_reports_imbalance_aware_clean_scores():
    gold = [0, 0, 0, 0, 0, 0, 1, 1, 2, 2]
    pred = [0, 0, 0, 0, 1, 2, 1, 0, 2, 2]
    ids = [[p + 3 * i, 7, 8][: 1 + i % 3] for i, p in enumerate(pred)]  # first token % 3 == pred; ragged lengths
    encoded = EncodedSplit(ids, None, torch.tensor(gold))
    module = _FirstToken(3)
    module.train()
    out = evaluate(module, encoded, batch_size=4, device=torch.device("cpu"), pad_token_id=0)
    assert module.training  # mode restored
    want = score_predictions(gold, pred, 3)
    assert out["clean_acc"] == want.acc == 0.7
    assert out["dev_n"] == 10.0 and math.isfinite(out["dev_loss"]) and out["dev_loss"] > 0
    assert (out["macro_f1"], out["balanced_acc"], out["majority_rate"]) == (want.macro_f1, want.balanced_acc, 0.6)
    for c in range(3):
        assert out[f"precision.{c}"] == want.precision[c] and out[f"recall.{c}"] == want.recall[c]
    assert set(out) == {"clean_acc", "dev_loss", "dev_n", "macro_f1", "balanced_acc", "majority_rate",
                        "precision.0", "precision.1", "precision.2", "recall.0", "recall.1", "recall.2"}
    assert all(type(v) is float for v in out.values())
    # batching changes nothing (but the float summation order of the loss)
    again = evaluate(module, encoded, batch_size=3, device=torch.device("cpu"), pad_token_id=0)
    assert again.pop("dev_loss") == pytest.approx(out["dev_loss"], rel=1e-6)
    assert again == {k: v for k, v in out.items() if k != "dev_loss"}


def test_evaluate_on_an_empty_split():
    encoded = EncodedSplit([], None, torch.zeros(0, dtype=torch.int64))
    out = evaluate(_FirstToken(2), encoded, batch_size=4, device=torch.device("cpu"), pad_token_id=0)
    assert out == {"clean_acc": 0.0, "dev_loss": 0.0, "dev_n": 0.0, "macro_f1": 0.0, "balanced_acc": 0.0,
                   "majority_rate": 0.0}


def test_run_trial_reports_and_saves_the_new_scores(tmp_path, tiny_model_dir):
    """The per-epoch metrics (what Tune and MLflow receive) and the saved result carry the new keys."""
    from distat.config import parse_trial_config
    from distat.training import run_trial

    cfg = parse_trial_config({
        "seed": 2, "data": {"path": str(shared_data_dir() / "sst2"), "max_train_examples": 16,
                            "max_dev_examples": 12, "max_length": 16},
        "model": {"backbone": str(tiny_model_dir)}, "train": {"epochs": 1, "batch_size": 8},
        "output_dir": str(tmp_path),
    })
    reported = []
    result = run_trial(cfg, on_epoch_end=lambda metrics, ckpt: reported.append(dict(metrics)))
    assert len(reported) == 1
    for key in ("clean_acc", "dev_n", "macro_f1", "balanced_acc", "majority_rate", "precision.0", "precision.1",
                "recall.0", "recall.1"):
        assert key in reported[0] and math.isfinite(reported[0][key])
    assert 0.5 <= reported[0]["majority_rate"] <= 1.0
    assert result.metrics == reported[0]
    # the checkpoint keeps the history (resume reads it back with weights_only=True)
    saved = torch.load(result.checkpoint / "train_state.pt", weights_only=True)["history"]
    assert saved[-1]["macro_f1"] == reported[0]["macro_f1"] and saved[-1]["recall.1"] == reported[0]["recall.1"]


# --------------------------------------------------------------------------------------------------
# per-class scores under attack


def rec(index, label, status, *, num_labels=2):
    """A consistent record of ``status`` for gold ``label`` (success / skipped: the next class)."""
    other = (label + 1) % num_labels
    return AttackRecord(
        index=index, text=f"text {index}", perturbed_text="adv" if status == "success" else None, other_text=None,
        label=label, original_pred=other if status == "skipped" else label,
        perturbed_pred={"success": other, "failed": label, "skipped": None}[status], status=status,
        num_queries=3, words_perturbed=1 if status == "success" else 0, words_total=4,
    )


def _spam_records():
    """13 spam (1) of 100: ham is hard to flip, spam easy (10 of 13 pass), one spam was missed on clean input."""
    records = [rec(i, 0, "failed") for i in range(80)] + [rec(80 + i, 0, "success") for i in range(7)]
    records += [rec(87, 1, "skipped")] + [rec(88 + i, 1, "success") for i in range(10)]
    records += [rec(98, 1, "failed"), rec(99, 1, "failed")]
    return records


def test_prediction_under_attack():
    assert prediction_under_attack(rec(0, 1, "skipped")) == 0  # wrong already: its clean prediction
    assert prediction_under_attack(rec(0, 1, "failed")) == 1  # kept its label
    assert prediction_under_attack(rec(0, 1, "success")) == 0  # flipped
    assert prediction_under_attack(rec(0, 2, "success", num_labels=3)) == 0


def test_class_scores_show_spam_made_to_pass():
    records = _spam_records()
    out = class_scores(records, 2)
    assert out["robust_acc"] == summarize(records).robust_acc == 0.82  # the same number as summarize's
    assert out["robust_support.0"] == 87.0 and out["robust_support.1"] == 13.0
    assert out["robust_recall.0"] == pytest.approx(80 / 87)
    assert out["robust_recall.1"] == pytest.approx(2 / 13)  # spam made to pass: 1 - 2/13 = 11/13
    assert out["robust_majority_rate"] == 0.87
    # predicted spam under attack: the 7 flipped hams and the 2 kept spams
    assert out["robust_precision.1"] == pytest.approx(2 / 9)
    gold = [r.label for r in records]
    pred = [prediction_under_attack(r) for r in records]
    assert out == score_predictions(gold, pred, 2).as_dict("robust_")
    assert out["robust_macro_f1"] < out["robust_acc"] - 0.2  # accuracy hides the collapse of the minority class
    assert set(class_scores(records, 2, prefix="test_robust_")) == {"test_" + k for k in out}


def test_class_scores_refuses_labels_beyond_num_labels():
    with pytest.raises(ValueError, match="outside 0..1"):
        class_scores([rec(0, 2, "failed", num_labels=3)], 2)


def test_robust_recall_intervals():
    records = _spam_records()
    out = robust_recall_intervals(records, 3)
    assert (out["robust_recall_lo.0"], out["robust_recall_hi.0"]) == wilson_interval(80, 87)
    assert (out["robust_recall_lo.1"], out["robust_recall_hi.1"]) == wilson_interval(2, 13)
    assert (out["robust_recall_lo.2"], out["robust_recall_hi.2"]) == (0.0, 1.0)  # never attacked: unknown
    assert out["robust_recall_lo.1"] < 2 / 13 < out["robust_recall_hi.1"]
    assert list(robust_recall_intervals(records, 2, prefix="x_")) == ["x_recall_lo.0", "x_recall_hi.0",
                                                                      "x_recall_lo.1", "x_recall_hi.1"]
    with pytest.raises(ValueError, match="record 87 has label 1, outside 0..0"):
        robust_recall_intervals(records, 1)


# --------------------------------------------------------------------------------------------------
# the attacked subset, stratified by label


def _sst2_dev() -> Split:
    return load_dataset(shared_data_dir() / "sst2", splits=["dev"]).split("dev")


def _spam_like(split: Split) -> Split:
    """Real SST-2 dev rows, 13% positive: every negative and the first positives up to that share."""
    negatives = [i for i, y in enumerate(split.labels) if y == 0]
    positives = [i for i, y in enumerate(split.labels) if y == 1]
    keep = round(len(negatives) * 13 / 87)
    return split.subset(sorted(negatives + positives[:keep]))


def test_unstratified_subset_is_unchanged():
    """stratify=False gives exactly the subset distat chose before stratification existed (rows pinned from it)."""
    split = _sst2_dev()
    rows = {text: i for i, text in enumerate(split.text_a)}
    chosen = select_examples(split, 8, seed=3)
    assert [rows[e.text] for e in chosen] == [268, 266, 470, 24, 428, 516, 267, 508]
    assert select_examples(split, 8, 3, stratify=False) == chosen


def test_stratified_subset_of_an_imbalanced_split_is_balanced():
    split = _spam_like(_sst2_dev())
    share = sum(split.labels) / len(split)
    assert 0.125 < share < 0.135
    plain = select_examples(split, 60, seed=4)
    assert sum(e.label for e in plain) < 15  # a plain subset attacks few positives
    for n in (60, 61, 7, 1):
        chosen = select_examples(split, n, seed=4, stratify=True)
        counts = sorted(sum(e.label == c for e in chosen) for c in (0, 1))
        assert counts == [n // 2, n - n // 2], n
        assert [e.index for e in chosen] == list(range(n))
        assert len({e.text for e in chosen}) == n  # no row twice
    # deterministic, seeded and prefix-stable: a larger n extends a smaller one
    assert select_examples(split, 60, 4, stratify=True) == select_examples(split, 60, 4, stratify=True)
    assert select_examples(split, 60, 5, stratify=True) != select_examples(split, 60, 4, stratify=True)
    assert select_examples(split, 80, 4, stratify=True)[:60] == select_examples(split, 60, 4, stratify=True)


def test_stratified_subset_fills_up_when_a_class_runs_out():
    split = _spam_like(_sst2_dev())
    positives = sum(split.labels)
    n = 2 * positives + 30
    chosen = select_examples(split, n, seed=1, stratify=True)
    assert sum(e.label for e in chosen) == positives  # every positive, the rest negatives
    assert len(chosen) == n
    everything = select_examples(split, None, seed=1, stratify=True)
    assert sorted(e.text for e in everything) == sorted(split.text_a)  # all rows, once each
    assert select_examples(split, len(split) + 10, seed=1, stratify=True) == everything


def test_stratified_subset_three_classes_and_pairs():
    labels = [0] * 20 + [1] * 5 + [2] * 9
    split = Split(name="dev", text_a=[f"q{i}" for i in range(34)], text_b=[f"s{i}" for i in range(34)],
                  labels=labels, source="test")
    chosen = select_examples(split, 13, seed=0, stratify=True)
    counts = sorted(sum(e.label == c for e in chosen) for c in range(3))
    assert counts == [4, 4, 5]
    # the pair's last text is the perturbed one, as unstratified
    assert all(e.text == "s" + e.other_text[1:] for e in chosen)
    # which class gets the extra example is seeded, not always the lowest label
    extra = {max(range(3), key=lambda c: sum(e.label == c for e in select_examples(split, 13, s, True)))
             for s in range(12)}
    assert len(extra) > 1
    # 5 rounds of 3 classes, then class 1 (5 rows) has run out: classes 0 and 2 fill up until class 2 (9 rows)
    # runs out too, and class 0 alone completes the 25
    counts = [sum(e.label == c for e in select_examples(split, 25, seed=0, stratify=True)) for c in range(3)]
    assert counts == [11, 5, 9]


# --------------------------------------------------------------------------------------------------
# paired differences (distat.paired)


def test_paired_difference_resolves_what_separate_intervals_cannot():
    """200 examples where model a is right on 20 more than b and otherwise agrees: the two Wilson intervals
    overlap, the paired interval does not contain 0."""
    from distat.attacks.metrics import wilson_interval
    from distat.paired import paired_difference

    b = [1] * 55 + [0] * 145
    a = [1] * 75 + [0] * 125  # b's 55 correct plus 20 more
    lo_a, _ = wilson_interval(75, 200)
    _, hi_b = wilson_interval(55, 200)
    assert lo_a < hi_b  # separately: "within noise"
    d = paired_difference(a, b, seed=1)
    assert d.diff == pytest.approx(0.1) and d.n == 200 and d.resolved and 0 < d.lo < 0.1 < d.hi
    assert paired_difference(a, b, seed=1) == d  # seeded
    same = paired_difference(a, a)
    assert (same.diff, same.lo, same.hi, same.resolved) == (0.0, 0.0, 0.0, False)
    # disagreeing both ways as often: not resolved
    mixed = paired_difference([1, 0] * 50, [0, 1] * 50)
    assert mixed.lo < 0 < mixed.hi and not mixed.resolved
    with pytest.raises(ValueError, match="one length"):
        paired_difference([1, 0], [1])
    with pytest.raises(ValueError, match="at least one"):
        paired_difference([], [])


def test_grouped_paired_difference_widens_with_seed_to_seed_variation():
    from distat.paired import grouped_paired_difference, paired_difference

    same = [([1] * 30 + [0] * 70, [1] * 20 + [0] * 80)] * 3  # every seed: +0.1
    steady = grouped_paired_difference(same, resamples=1000)
    assert steady.diff == pytest.approx(0.1) and steady.resolved and steady.n == 300
    # one seed says +0.3, one -0.1, one +0.1: the mean is the same, the seeds disagree
    varied = grouped_paired_difference([([1] * 30 + [0] * 70, [0] * 100), ([0] * 100, [1] * 10 + [0] * 90),
                                        ([1] * 10 + [0] * 90, [0] * 100)], resamples=1000)
    assert varied.diff == pytest.approx(0.1) and varied.hi - varied.lo > steady.hi - steady.lo
    one = grouped_paired_difference(same[:1], resamples=1000, seed=3)
    assert one.diff == paired_difference(*same[0], resamples=1000, seed=3).diff
    with pytest.raises(ValueError, match="at least one group"):
        grouped_paired_difference([])
