"""The cheap robust proxy of multi-objective early stopping: a trial's model attacked on a small seeded probe
subset of the dev split, with a query budget, at the rung epochs of ``search.early_stop``.

The probe is one recipe (the objective's, or the first when the objective is the worst case) with the search's
own options, the probe's query budget, and no static sets; the rank-0 Train worker runs it in process on the
model of the epoch just checkpointed, and reports ``probe_robust_acc`` with that epoch's clean metrics, which
the scheduler (:mod:`distat.search.early_stop`) ranks. Its records and spec are in
``<trial>/probe/epoch_<e>/``, so a probe number always says what it measured.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distat.atomic import write_json
from distat.search.space import WORST_CASE, AttackSettings, SearchConfig
from distat.search.state import ResourceRefs

PROBE_METRIC = "probe_robust_acc"
PROBE_DIR = "probe"
PROBE_FILE = "probe.json"
DECISION_FILE = "decision.json"


def probe_settings(scfg: SearchConfig) -> AttackSettings:
    """The attack settings of the search's probe (``scfg.search.early_stop`` must be set)."""
    es = scfg.search.early_stop
    assert es is not None
    att = scfg.attack
    recipes = att.attacks
    chosen = next((r for r in recipes if r.key == att.objective), recipes[0]) if att.objective != WORST_CASE \
        else recipes[0]
    options = chosen.options.model_copy(update={"query_budget": es.probe_query_budget})
    return att.model_copy(update={
        "recipe": None, "recipes": (chosen.model_copy(update={"options": options}),), "static_sets": (),
        "objective": WORST_CASE, "n": es.probe_n, "actors": 0, "static": False,
    })


@contextlib.contextmanager
def random_state_kept() -> Iterator[None]:
    """Python's, NumPy's and torch's (CPU and every CUDA device's) random states as they were before the block.
    The probe's attack seeds the global generators for each example; without this, probing a trial would
    change the dropout masks of its next epochs, and so the models early stopping lets through."""
    import random

    import numpy as np
    import torch

    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def run_probe(scfg: SearchConfig, refs: ResourceRefs, checkpoint: Path, trial_dir: Path, epoch: int, *,
              device: Any = None, work_cache: Path | None = None) -> dict[str, float | str]:
    """The probe of the model in ``checkpoint`` (after ``epoch``): ``probe_robust_acc`` with its interval,
    count and threat-model spec hash. The training's random state is left as it was."""
    from distat.attacks.spec import HASH_KEY
    from distat.search.evaluation import evaluate_checkpoint

    es = scfg.search.early_stop
    assert es is not None
    out = _rung_dir(trial_dir, epoch)
    with random_state_kept():
        metrics = evaluate_checkpoint(probe_settings(scfg), refs, checkpoint, out, split=scfg.attack.split,
                                      n=es.probe_n, seed=es.probe_seed, device=device, work_cache=work_cache)
    probe = {PROBE_METRIC: float(metrics["robust_acc"]), f"{PROBE_METRIC}_lo": float(metrics["robust_acc_lo"]),
             f"{PROBE_METRIC}_hi": float(metrics["robust_acc_hi"]), f"{PROBE_METRIC}_n": float(metrics["robust_acc_n"]),
             f"probe_{HASH_KEY}": str(metrics[HASH_KEY])}
    write_json(out / PROBE_FILE, {"epoch": epoch, **probe})
    return probe


def last_probe(trial_dir: Path) -> tuple[int, float] | None:
    """(epoch, probe robust accuracy) of a trial's last probe, or None when it was never probed."""
    import json

    found = sorted((trial_dir / PROBE_DIR).glob(f"epoch_*/{PROBE_FILE}"))
    if not found:
        return None
    data = json.loads(found[-1].read_text(encoding="utf-8"))
    return int(data["epoch"]), float(data[PROBE_METRIC])


def read_probe(trial_dir: Path, epoch: int) -> dict[str, Any]:
    """What :func:`run_probe` returned for ``epoch`` (from its ``probe.json``)."""
    import json

    data = json.loads((_rung_dir(trial_dir, epoch) / PROBE_FILE).read_text(encoding="utf-8"))
    return {k: v for k, v in data.items() if k != "epoch"}


@dataclass(frozen=True)
class ProxyAgreement:
    """How well the probe ranks trials as the full evaluation does: Spearman's rho over the ``n`` trials
    evaluated both ways (their last probe against their robust objective); NaN below 3 trials."""

    rho: float
    n: int
    stopped: tuple[str, ...]  # the trials stopped at a rung

    def summary(self) -> str:
        rho = "n/a (fewer than 3 trials evaluated both ways)" if math.isnan(self.rho) else f"{self.rho:+.2f}"
        stopped = f"{len(self.stopped)} trial(s) stopped at a rung ({', '.join(self.stopped)})" if self.stopped \
            else "no trial stopped"
        return (f"early stopping: {stopped}; the probe's ranking vs the full robust evaluation's: Spearman {rho} "
                f"over {self.n} trial(s) evaluated both ways")


def proxy_agreement(search_dir: Path) -> ProxyAgreement:
    """The probe's agreement with the full evaluation over a search's finished trials."""
    from distat.search.early_stop import rank_agreement
    from distat.search.state import TRIALS_DIR, finished_trials

    proxy, full, stopped = {}, {}, []
    for trial_id, result in finished_trials(search_dir).items():
        if "early_stopped_epoch" in result.metrics:
            stopped.append(trial_id)
            continue
        probed = last_probe(search_dir / TRIALS_DIR / trial_id)
        robust = result.metrics.get("robust_acc")
        if probed is not None and isinstance(robust, int | float) and not result.metrics.get("diverged"):
            proxy[trial_id], full[trial_id] = probed[1], float(robust)
    rho, n = rank_agreement(proxy, full)
    return ProxyAgreement(rho=rho, n=n, stopped=tuple(stopped))


def _rung_dir(trial_dir: Path, epoch: int) -> Path:
    return trial_dir / PROBE_DIR / f"epoch_{epoch:03d}"


def write_decision(trial_dir: Path, epoch: int, stop: bool, reason: str) -> None:
    """The scheduler's decision on a trial at a rung, for its Train workers waiting on it (:func:`wait_for_decision`)."""
    write_json(_rung_dir(trial_dir, epoch) / DECISION_FILE, {"epoch": epoch, "stop": stop, "reason": reason})


def read_decision(trial_dir: Path, epoch: int) -> dict[str, Any] | None:
    """What :func:`write_decision` wrote for rung ``epoch`` (``epoch``, ``stop``, ``reason``), or None when the
    scheduler has not decided on the trial there."""
    import json

    path = _rung_dir(trial_dir, epoch) / DECISION_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def wait_for_decision(trial_dir: Path, epoch: int, timeout_s: float) -> bool | None:
    """Whether the trial is stopped at rung ``epoch``: the scheduler's decision, waited for up to ``timeout_s``
    (None when none came: the trial goes on)."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        decision = read_decision(trial_dir, epoch)
        if decision is not None:
            return bool(decision["stop"])
        time.sleep(0.1)
    return None


def stopped_at(trial_dir: Path) -> int | None:
    """The rung a trial was stopped at (its decision files), or None."""
    import json

    for path in sorted((trial_dir / PROBE_DIR).glob(f"epoch_*/{DECISION_FILE}")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("stop"):
            return int(data["epoch"])
    return None


class DecisionWriter:
    """Writes each rung decision of the scheduler into the trial's folder (picklable: Tune pickles the scheduler)."""

    def __init__(self, search_dir: Path) -> None:
        self.search_dir = str(search_dir)

    def __call__(self, trial_id: str, epoch: int, stop: bool, reason: str) -> None:
        from distat.search.state import TRIALS_DIR

        write_decision(Path(self.search_dir) / TRIALS_DIR / trial_id, epoch, stop, reason)
