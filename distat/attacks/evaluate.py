"""Robust evaluation of one model: a fixed, seeded example subset attacked sequentially or by a pool."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from torch import nn

from distat.attacks.metrics import AttackRecord, RobustMetrics, summarize
from distat.attacks.runner import AttackJob, AttackRunner, Example
from distat.data import Split


def select_examples(split: Split, n: int | None, seed: int) -> list[Example]:
    """The first ``n`` examples of a seeded permutation of ``split`` (all when ``n`` is None).

    The same (split, n, seed) always gives the same subset, so every trial of a search is attacked on the
    same examples. For pairs the last text field is the perturbable one.
    """
    order = list(range(len(split)))
    random.Random(seed).shuffle(order)
    chosen = order if n is None else order[:n]
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
    if actors <= 0:
        runner = AttackRunner(job, model, tokenizer)
        done = 0

        def step(_: AttackRecord) -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, len(examples))

        records = runner.run(examples, progress=step)
    else:
        from distat.attacks.pool import AttackPool

        with AttackPool(job, model, tokenizer, actors=actors, cpus_per_actor=cpus_per_actor,
                        gpus_per_actor=gpus_per_actor) as pool:

            def pool_step(done: int, total: int) -> None:
                if pool_stats is not None:
                    pool_stats.update(pool.stats())
                if progress is not None:
                    progress(done, total)

            records = pool.run(examples, progress=pool_step)
            if pool_stats is not None:
                pool_stats.update(pool.stats())
    return summarize(records), records
