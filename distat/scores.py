"""Classification scores that stay informative on imbalanced data: per-class precision / recall / F1, macro-F1,
balanced accuracy, accuracy and the majority-class rate, from gold labels and predictions.

On a 13%-positive spam set a model that always answers "ham" has accuracy 0.87; its macro-F1 (about 0.47) and
balanced accuracy (0.5) say what it is worth, and :attr:`ClassScores.majority_rate` gives the accuracy such a
predictor reaches, so a clean-accuracy floor can be stated relative to it.

Definitions (those of scikit-learn with ``zero_division=0``; the tests cross-check them):

* ``precision[c] = TP_c / (TP_c + FP_c)``, 0 when nothing was predicted as ``c``;
* ``recall[c] = TP_c / support[c]``, 0 when no gold example is ``c`` (``support[c] == 0``);
* ``f1[c] = 2 P R / (P + R)``, 0 when ``P + R == 0``;
* ``macro_f1``: the mean of ``f1[c]`` over the classes that occur among the gold labels *or* the predictions
  (scikit-learn's ``f1_score(average="macro")`` without ``labels=``). A class absent from both has nothing to
  score, so it is not counted as a zero: a dev subset holding only one class, predicted perfectly, scores 1;
* ``balanced_acc``: the mean of ``recall[c]`` over the classes that occur among the gold labels
  (``balanced_accuracy_score``); a class that is only predicted lowers it through the other classes' recall;
* ``acc``: the fraction of predictions equal to the gold label; ``majority_rate``: the largest class's share of
  the gold labels, the accuracy of always answering that class.

No input (``n == 0``) gives zeros everywhere, like :func:`distat.attacks.metrics.summarize`.

This module is in the foundation layer: it imports nothing from ``distat`` and needs only numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["ClassScores", "score_predictions"]


@dataclass(frozen=True)
class ClassScores:
    """Scores of one set of predictions; the per-class tuples are indexed by label (``0 .. num_labels - 1``)."""

    num_labels: int
    n: int
    acc: float
    macro_f1: float
    balanced_acc: float
    majority_rate: float
    precision: tuple[float, ...]
    recall: tuple[float, ...]
    f1: tuple[float, ...]
    support: tuple[int, ...]

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """A flat dict of floats with stable keys (for MLflow / Tune / result files):

        ``acc``, ``macro_f1``, ``balanced_acc``, ``majority_rate`` and, for every label ``c``,
        ``precision.<c>``, ``recall.<c>``, ``f1.<c>``, ``support.<c>``, each key preceded by ``prefix``.
        """
        out = {f"{prefix}acc": self.acc, f"{prefix}macro_f1": self.macro_f1,
               f"{prefix}balanced_acc": self.balanced_acc, f"{prefix}majority_rate": self.majority_rate}
        for name in ("precision", "recall", "f1", "support"):
            for c, value in enumerate(getattr(self, name)):
                out[f"{prefix}{name}.{c}"] = float(value)
        return out


def _as_labels(values: Sequence[int] | np.ndarray, what: str, num_labels: int) -> np.ndarray:
    """``values`` as a 1-D int64 array, each in ``[0, num_labels)``; anything else is a caller's bug."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"score_predictions: {what} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    # bools are ints to numpy; a label of True is almost certainly a mix-up, so refuse them with floats
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"score_predictions: {what} must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = arr[(arr < 0) | (arr >= num_labels)]
    if bad.size:
        raise ValueError(f"score_predictions: {what} holds {int(bad[0])}, outside 0..{num_labels - 1}")
    return arr


def score_predictions(labels: Sequence[int] | np.ndarray, preds: Sequence[int] | np.ndarray,
                      num_labels: int) -> ClassScores:
    """The :class:`ClassScores` of predictions ``preds`` against gold ``labels`` (parallel sequences of ints in
    ``0 .. num_labels - 1``); see the module docstring for the definitions. Raises ``ValueError`` on
    sequences of different lengths, non-integer or out-of-range values, or ``num_labels < 1``."""
    if isinstance(num_labels, bool) or not isinstance(num_labels, (int, np.integer)) or num_labels < 1:
        raise ValueError(f"score_predictions: num_labels must be a positive integer, got {num_labels!r}")
    num_labels = int(num_labels)
    gold = _as_labels(labels, "labels", num_labels)
    pred = _as_labels(preds, "preds", num_labels)
    if gold.shape != pred.shape:
        raise ValueError(f"score_predictions: {gold.size} labels but {pred.size} predictions")
    n = int(gold.size)
    support = np.bincount(gold, minlength=num_labels)
    predicted = np.bincount(pred, minlength=num_labels)
    true_pos = np.bincount(gold[gold == pred], minlength=num_labels)
    # zero_division=0: an empty denominator scores 0 (np.divide's `where` leaves those entries at 0)
    precision = np.divide(true_pos, predicted, out=np.zeros(num_labels), where=predicted > 0)
    recall = np.divide(true_pos, support, out=np.zeros(num_labels), where=support > 0)
    p_plus_r = precision + recall
    f1 = np.divide(2 * precision * recall, p_plus_r, out=np.zeros(num_labels), where=p_plus_r > 0)
    seen = (support > 0) | (predicted > 0)
    in_gold = support > 0
    return ClassScores(
        num_labels=num_labels,
        n=n,
        acc=float(true_pos.sum() / n) if n else 0.0,
        macro_f1=float(f1[seen].mean()) if seen.any() else 0.0,
        balanced_acc=float(recall[in_gold].mean()) if in_gold.any() else 0.0,
        majority_rate=float(support.max() / n) if n else 0.0,
        precision=tuple(float(x) for x in precision),
        recall=tuple(float(x) for x in recall),
        f1=tuple(float(x) for x in f1),
        support=tuple(int(x) for x in support),
    )
