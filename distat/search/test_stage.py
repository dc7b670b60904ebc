"""The test stage of a search: chosen trials re-evaluated on the held-out test split with the full attack list.

Which trials: the feasible members of the Pareto front, each method's best trial
(:func:`distat.tracking.pareto.best_per_method`: chosen on dev numbers, never on test) and any trials the user
names. Each is evaluated by :func:`distat.search.evaluation.evaluate_checkpoint` on the same seeded test subset
(every row up to ``evaluate.n``), its clean scores on the whole test split, into ``<trial>/test/``:
``metrics.json`` holds every metric with a ``test_`` prefix (``test_clean_acc``, ``test_robust_acc.textfooler``,
...) and is also logged to the trial's MLflow child run.

Resumable at two levels: a trial whose ``test/metrics.json`` was written for the same stage (same checkpoint,
attacks, split, subset) is not evaluated again, and an evaluation killed midway keeps every attacked example in
its journals (:mod:`distat.attacks.journal`), so only the rest is attacked when the stage runs again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distat.atomic import write_json
from distat.errors import DistatError, first_line
from distat.search.evaluation import EvalTally, evaluate_checkpoint
from distat.search.space import SearchConfig, TestStageSettings, clean_floor
from distat.search.state import TRIALS_DIR, SearchState, TrainResult, finished_trials

log = logging.getLogger(__name__)

STAGE_DIR = "test"
METRICS_FILE = "metrics.json"
PREFIX = "test_"

__all__ = ["METRICS_FILE", "PREFIX", "STAGE_DIR", "StageOutcome", "TrialOutcome", "choose_trials", "read_test_metrics",
           "run_test_stage"]


@dataclass
class TrialOutcome:
    trial_id: str
    reasons: list[str]
    metrics: dict[str, Any]
    attacked: int = 0  # examples attacked in this run
    reused: int = 0  # examples taken from the journals of an earlier, interrupted run
    already_done: bool = False  # the stage had finished this trial before: nothing was evaluated


@dataclass
class StageOutcome:
    split: str
    trials: list[TrialOutcome] = field(default_factory=list)
    mlflow_warning: str | None = None


def choose_trials(search_dir: Path, scfg: SearchConfig, stage: TestStageSettings) -> dict[str, list[str]]:
    """Trial id -> why it is evaluated (``front``, ``best <method>``, ``named``), front members first. A named
    trial that did not finish, or diverged, is a one-line error."""
    from distat.search.driver import trial_points
    from distat.tracking.pareto import best_per_method, non_dominated

    points = trial_points(search_dir, clean_floor(scfg), scfg)
    if not points:
        raise DistatError(f"{search_dir}: no finished trial to evaluate")
    chosen: dict[str, list[str]] = {}
    for point, on_front in zip(points, non_dominated(points), strict=True):
        if on_front:
            chosen.setdefault(point.trial_id, []).append("front")
    if stage.best_per_method:
        for method, point in best_per_method(points).items():
            chosen.setdefault(point.trial_id, []).append(f"best {method}")
    by_id = {p.trial_id: p for p in points}
    for trial_id in stage.trials:
        point = by_id.get(trial_id)
        if point is None:
            known = ", ".join(sorted(by_id)) or "none"
            raise DistatError(f"trial {trial_id} did not finish in {search_dir} (finished: {known})")
        if point.diverged:
            raise DistatError(f"trial {trial_id} diverged: it has no model to evaluate")
        chosen.setdefault(trial_id, []).append("named")
    return chosen


def _stage_key(stage: TestStageSettings, scfg: SearchConfig, weights: str) -> str:
    """What makes a trial's test numbers what they are, short: the checkpoint's weights (their digest), the attacks
    and their options, the split, the subset size and seed. (Resource fingerprints live in the journals' spec
    hashes.)"""
    att = stage.attack(scfg.attack)
    key = {"checkpoint": weights, "split": stage.split, "n": stage.n,
           "seed": stage.seed if stage.seed is not None else scfg.seed,
           "attack": att.model_dump(mode="json", exclude={"actors", "cpus_per_actor", "gpus_per_actor"})}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def read_test_metrics(trial_dir: Path) -> dict[str, Any] | None:
    """A trial's test metrics (``test_``-prefixed), or None when the test stage has not finished it."""
    path = trial_dir / STAGE_DIR / METRICS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return dict(data["metrics"])
    except (ValueError, KeyError, TypeError):
        raise DistatError(f"{path}: not a test-stage result (remove it to evaluate the trial again)") from None


def run_test_stage(state: SearchState, stage: TestStageSettings, *, tracking_uri: str | None = None,
                   notify: Callable[[str], None] = lambda _: None,
                   progress: Callable[[str, str, int, int], None] | None = None,
                   trials: Sequence[str] | None = None) -> StageOutcome:
    """Evaluate the chosen trials (or ``trials``, in that order, when given) of the search in ``state`` on the test
    split. ``notify`` gets one line per trial, and one if the tracking server could not take the results (they
    are on disk); ``progress(trial_id, attack, done, total)`` each attacked example or shard."""
    from distat.attacks.journal import checkpoint_digest

    scfg = state.search
    folder = state.dir
    if trials is None:
        plan = choose_trials(folder, scfg, stage)
    else:
        plan = {t: ["named"] for t in trials}
    finished = finished_trials(folder)
    att = stage.attack(scfg.attack)
    seed = stage.seed if stage.seed is not None else scfg.seed
    gen = None
    if att.static:  # the ADA victim's attack of the test subset: the static set, from the search's shared cache
        from distat.search.ada import generator

        gen = generator(state)
    outcome = StageOutcome(split=stage.split)
    for trial_id, reasons in plan.items():
        trial_dir = folder / TRIALS_DIR / trial_id
        if trial_id not in finished:
            raise DistatError(f"trial {trial_id} did not finish in {folder}")
        checkpoint = _checkpoint(trial_dir)
        weights = checkpoint_digest(checkpoint)
        key = _stage_key(stage, scfg, weights)
        out = trial_dir / STAGE_DIR
        done = _finished(out, key)
        if done is not None:
            outcome.trials.append(TrialOutcome(trial_id, reasons, done, already_done=True))
            notify(f"trial {trial_id} ({', '.join(reasons)}): already evaluated on {stage.split}")
            continue
        tally = EvalTally()

        def step(name: str, count: int, total: int, trial_id: str = trial_id) -> None:
            if progress is not None:
                progress(trial_id, name, count, total)

        metrics = evaluate_checkpoint(att, state.resources, checkpoint, out, split=stage.split, n=stage.n, seed=seed,
                                      tally=tally, progress=step, clean_split=True, weights=weights,
                                      work_cache=state.work_cache, generator=gen)
        prefixed = {f"{PREFIX}{k}": v for k, v in metrics.items()}
        write_json(out / METRICS_FILE, {"stage_key": key, "reasons": reasons, "split": stage.split,
                                        "metrics": prefixed}, sort_keys=True)
        attacked, reused = sum(tally.attacked.values()), sum(tally.reused.values())
        outcome.trials.append(TrialOutcome(trial_id, reasons, prefixed, attacked=attacked, reused=reused))
        notify(f"trial {trial_id} ({', '.join(reasons)}): {stage.split} clean_acc {metrics['clean_acc']:.3f}, "
               f"robust_acc {metrics['robust_acc']:.3f} ({metrics['robust_attack']}); attacked {attacked} "
               f"example(s)" + (f", {reused} kept from an interrupted run" if reused else ""))
    uri = tracking_uri or state.tracking_uri
    outcome.mlflow_warning = _log_to_mlflow(uri, scfg.name, folder, outcome)
    if outcome.mlflow_warning:
        notify(outcome.mlflow_warning)
    return outcome


def _checkpoint(trial_dir: Path) -> Path:
    try:
        result = TrainResult.load(trial_dir)
    except (OSError, ValueError) as e:
        raise DistatError(f"{trial_dir}: no training result to evaluate ({first_line(e)})") from None
    if result.diverged or not result.checkpoint:
        raise DistatError(f"trial {trial_dir.name} diverged: it has no model to evaluate")
    path = Path(result.checkpoint)
    if not path.is_dir():  # a search folder that moved: the checkpoint is where the trial folder is now
        moved = trial_dir / "checkpoints" / path.name
        if not moved.is_dir():
            raise DistatError(f"trial {trial_dir.name}: its checkpoint {path} is gone")
        path = moved
    return path


def _finished(out: Path, key: str) -> dict[str, Any] | None:
    path = out / METRICS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return dict(data["metrics"]) if data.get("stage_key") == key and isinstance(data.get("metrics"), dict) else None


def _log_to_mlflow(uri: str, search: str, folder: Path, outcome: StageOutcome) -> str | None:
    """Each evaluated trial's test metrics (and spec tags) on its MLflow child run; a warning line when the
    tracking server cannot take them (the results are on disk)."""
    from distat.tracking.mlflow import Tracker, redact, result_tags

    fresh = [t for t in outcome.trials if not t.already_done]
    if not fresh:
        return None
    try:
        tracker = Tracker(uri, search, folder)
        for t in fresh:
            run = tracker.child_run(t.trial_id)
            tracker.log_metrics(run, t.metrics, step=0)
            tags = result_tags(t.metrics, prefix=PREFIX)
            tags["distat.test_reasons"] = ", ".join(t.reasons)
            tracker.set_tags(run, tags)
    except Exception as e:  # noqa: BLE001 - any tracking failure: the results stay on disk
        return (f"distat: warning: test metrics not logged to MLflow ({type(e).__name__}: {redact(first_line(e))}); "
                f"they are in each trial's {STAGE_DIR}/{METRICS_FILE}")
    return None
