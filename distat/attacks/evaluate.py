"""Robust evaluation of one model: a fixed, seeded example subset attacked sequentially or by a pool."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from torch import nn

from distat.attacks.metrics import AttackRecord, RobustMetrics, summarize
from distat.attacks.runner import AttackJob, Example
from distat.data import Split


def select_examples(split: Split, n: int | None, seed: int, stratify: bool = False) -> list[Example]:
    """The first ``n`` examples of a seeded order of ``split`` (all when ``n`` is None), indexed 0.. in that order.

    Without ``stratify`` the order is a seeded permutation of the rows. With ``stratify`` it is label-balanced,
    so a minority class is attacked often enough to estimate its robust recall: each class's rows are put in
    their own seeded permutation and taken in a seeded round-robin over the classes, one row of each class per
    round; a class whose rows run out drops out and the others fill up to ``n``. So ``n`` examples hold
    ``ceil(n / C)`` or ``floor(n / C)`` rows of each of the ``C`` classes as long as every class has that many.

    The same (split, n, seed, stratify) always gives the same subset, so every trial of a search is attacked on
    the same examples. For pairs the last text field is the perturbable one.
    """
    chosen: list[int]
    if stratify:
        rng = random.Random(seed)
        by_class: dict[int, list[int]] = {}
        for row, label in enumerate(split.labels):
            by_class.setdefault(label, []).append(row)
        classes = sorted(by_class)  # sorted first, so the shuffles below depend on the seed alone
        for label in classes:
            rng.shuffle(by_class[label])
        # which classes lead each round (and so get the ceil(n / C) share) is seeded too, not always label 0
        rng.shuffle(classes)
        chosen = []
        depth = 0
        while len(chosen) < len(split):
            chosen.extend(by_class[label][depth] for label in classes if depth < len(by_class[label]))
            depth += 1
    else:
        chosen = list(range(len(split)))
        random.Random(seed).shuffle(chosen)
    if n is not None:
        chosen = chosen[:n]
    out = []
    for i, row in enumerate(chosen):
        if split.text_b is None:
            out.append(Example(index=i, text=split.text_a[row], label=split.labels[row]))
        else:
            out.append(Example(index=i, text=split.text_b[row], label=split.labels[row], other_text=split.text_a[row]))
    return out


def robust_evaluate(model: nn.Module, tokenizer: Any, examples: list[Example], job: AttackJob, *,
                    actors: int = 0, cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0,
                    progress: Callable[[int, int], None] | None = None,
                    pool_stats: dict[str, Any] | None = None) -> tuple[RobustMetrics, list[AttackRecord]]:
    """Attack ``examples``: in this process when ``actors == 0``, else with an :class:`AttackPool`.

    ``pool_stats``, when given with actors, is kept up to date (before each ``progress`` call and at the end)
    with :meth:`AttackPool.stats`: which nodes and processes attacked, and how many actors were replaced."""
    from distat.attacks.journal import attack_resumably

    run = attack_resumably(model, tokenizer, examples, job, None, actors=actors, cpus_per_actor=cpus_per_actor,
                           gpus_per_actor=gpus_per_actor, progress=progress, pool_stats=pool_stats)
    records = run.records
    return summarize(records), records
