"""Paired comparison of two models scored on the same examples: the difference of their accuracies with a
percentile-bootstrap 95% interval over the examples.

Two robust accuracies measured on the same attacked subset are not independent: most examples fall the same
way for both models, so comparing their separate (Wilson) intervals is far too conservative. Resampling the
examples, each time keeping both models' outcomes on an example together, gives the interval of the difference
itself: a paired difference whose interval excludes 0 is one the data resolves even when the two separate
intervals overlap.

This module is in the foundation layer: it imports nothing from ``distat`` and needs only numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["PairedDifference", "grouped_paired_difference", "paired_difference"]


@dataclass(frozen=True)
class PairedDifference:
    """``mean(a) - mean(b)`` over ``n`` paired examples and its bootstrap interval ``[lo, hi]``."""

    diff: float
    lo: float
    hi: float
    n: int

    @property
    def resolved(self) -> bool:
        """Whether the interval excludes 0 (the data tells the two apart)."""
        return self.lo > 0 or self.hi < 0

    def describe(self) -> str:
        """``+0.095 [+0.030, +0.160]``."""
        return f"{self.diff:+.3f} [{self.lo:+.3f}, {self.hi:+.3f}]"


def paired_difference(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, resamples: int = 4000,
                      seed: int = 0, level: float = 0.95) -> PairedDifference:
    """The difference of the means of ``a`` and ``b`` (per-example scores of two models on the same examples,
    in the same order: 1/0 for correct/wrong) with a percentile-bootstrap ``level`` interval over the examples.
    Deterministic for a given ``seed``. Unequal lengths, no examples or a level outside (0, 1) are a
    ``ValueError``."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired scores need two sequences of one length, got {x.shape} and {y.shape}")
    if len(x) == 0:
        raise ValueError("paired scores need at least one example")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    delta = x - y
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, (1 << 22) // len(delta))  # bounded memory for large test splits
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        means[start:stop] = delta[rng.integers(0, len(delta), size=(stop - start, len(delta)))].mean(axis=1)
    tail = (1 - level) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return PairedDifference(diff=float(delta.mean()), lo=float(lo), hi=float(hi), n=len(delta))


def grouped_paired_difference(groups: Sequence[tuple[Sequence[float], Sequence[float]]], *, resamples: int = 4000,
                              seed: int = 0, level: float = 0.95) -> PairedDifference:
    """The paired difference over several groups of examples (one per training seed: each a pair of per-example
    score vectors of the two models trained with that seed), with a two-level bootstrap: the groups are resampled,
    then the examples within each drawn group, so the interval covers seed-to-seed variation as well as the
    finite example set. ``diff`` is the mean over groups of each group's mean difference. One group is
    :func:`paired_difference`."""
    deltas = []
    for i, (a, b) in enumerate(groups):
        x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        if x.shape != y.shape or x.ndim != 1 or len(x) == 0:
            raise ValueError(f"group {i}: paired scores need two non-empty sequences of one length, got "
                             f"{x.shape} and {y.shape}")
        deltas.append(x - y)
    if not deltas:
        raise ValueError("paired scores need at least one group")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for r in range(resamples):
        drawn = rng.integers(0, len(deltas), size=len(deltas))
        means[r] = np.mean([deltas[g][rng.integers(0, len(deltas[g]), size=len(deltas[g]))].mean() for g in drawn])
    tail = (1 - level) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return PairedDifference(diff=float(np.mean([d.mean() for d in deltas])), lo=float(lo), hi=float(hi),
                            n=sum(len(d) for d in deltas))
