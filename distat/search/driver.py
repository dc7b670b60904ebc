"""The driver of a search: start it, restore it after the driver died, finish it.

Ray Tune runs the trials (:mod:`distat.search.trial`) with Optuna's multi-objective sampler
(:mod:`distat.search.searcher`) over the YAML's space (:mod:`distat.search.space`); an MLflow callback logs
every trial to its child run. Results live on disk (:mod:`distat.search.state`), so a search survives its
driver: :func:`resume_search` continues from Tune's snapshot and the trial folders.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from distat.errors import DistatError, first_line
from distat.search.space import SearchConfig, clean_floor
from distat.search.state import (
    FINAL_FILE,
    STATE_FILE,
    TRIALS_DIR,
    SavedTrackingUri,
    SearchState,
    TrialResult,
    finish_order,
    finished_trials,
    is_finished,
)

log = logging.getLogger(__name__)

ORPHANS_DIR = "orphaned_trials"
PARETO_DIR = "pareto"


class SearchSpace:
    """A picklable define-by-run space (the searcher's state, this included, is pickled in snapshots)."""

    def __init__(self, scfg: SearchConfig) -> None:
        self.data = scfg.model_dump(mode="json", by_alias=True)
        self._fn: Any = None

    def __call__(self, trial: Any) -> Any:
        if self._fn is None:
            from distat.search.space import define_by_run

            self._fn = define_by_run(SearchConfig.model_validate(self.data))
        return self._fn(trial)

    def __getstate__(self) -> dict[str, Any]:
        return {"data": self.data, "_fn": None}


def _searcher(scfg: SearchConfig, points_to_evaluate: list[dict[str, Any]] | None = None,
              priors: Sequence[Any] = ()) -> Any:
    from distat.search.searcher import build_searcher

    searcher = build_searcher(SearchSpace(scfg), list(scfg.search.objectives), seed=scfg.seed,
                              clean_acc_floor=clean_floor(scfg), points_to_evaluate=points_to_evaluate)
    for prior in priors:  # a warm start's observations (distat.search.warm_start)
        searcher.add_prior(prior)
    return searcher


def warm_start(state: SearchState) -> Any:
    """The :class:`~distat.search.warm_start.WarmStart` of the search ``state`` describes, or None without one."""
    source = state.search.search.warm_start
    if source is None:
        return None
    from distat.search.evaluation import planned_spec_hash
    from distat.search.warm_start import check_source, collect

    check_source(Path(source), state.dir)
    return collect(Path(source), state.search, planned_spec_hash(state.search, state.resources))


class TrialConfigOf:
    """A trial's method label and whole config from its sampled params, for its MLflow child run (picklable:
    Tune's snapshot pickles the callback that holds it)."""

    def __init__(self, state: SearchState) -> None:
        self.state = state

    def __call__(self, params: dict[str, Any], trial_id: str) -> tuple[str, dict[str, Any]]:
        from distat.search.space import apply_params, sampled_params

        scfg = self.state.search
        cfg = apply_params(scfg, sampled_params(scfg, params), str(self.state.trial_dir(trial_id)))
        return cfg.method.label, cfg.model_dump(mode="json")


def _early_stopping(state: SearchState) -> tuple[Any, list[Any]]:
    """The scheduler of ``search.early_stop`` (None without it) and the callback keeping its book in Tune's
    snapshot. The scheduler tells a trial its rung decision through the trial's folder; a stopped trial ends
    itself and reports its rung result as its final one (:mod:`distat.search.trial`)."""
    es = state.search.search.early_stop
    if es is None:
        return None, []
    from distat.search.early_stop import MOSuccessiveHalving, RungBookKeeper
    from distat.search.probe import PROBE_METRIC, DecisionWriter

    floor = clean_floor(state.search)
    scheduler = MOSuccessiveHalving(es, (state.search.search.clean_metric, PROBE_METRIC),
                                    on_decision=DecisionWriter(state.dir),
                                    floor=("clean_acc", floor) if floor is not None else None)
    return scheduler, [RungBookKeeper(scheduler)]


class HypervolumeHistoryOf:
    """The hypervolume of the front after each finished trial, ``[(trial id, hypervolume), ...]`` in the order
    the trials finished, from their ``final.json`` files, for the MLflow parent run's ``hypervolume`` metric
    (picklable: Tune's snapshot pickles the callback that holds it; the points read so far are not pickled).
    A finished trial's file never changes, so each is read once."""

    def __init__(self, state: SearchState) -> None:
        self.state = state
        self._seen: dict[str, tuple[TrialResult, Any]] = {}

    def __call__(self) -> list[tuple[str, float]]:
        from distat.tracking.pareto import hypervolume_history

        scfg = self.state.search
        seen = self.__dict__.setdefault("_seen", {})
        results = {}
        for final in sorted((self.state.dir / TRIALS_DIR).glob(f"*/{FINAL_FILE}")):  # finished_trials' order
            trial_id = final.parent.name
            if trial_id not in seen:
                result = TrialResult.load(final.parent)
                seen[trial_id] = (result, _point(result, self.state.dir, clean_floor(scfg), scfg))
            results[trial_id] = seen[trial_id][0]
        order = finish_order(results)
        return list(zip(order, hypervolume_history([seen[t][1] for t in order]), strict=True))

    def __getstate__(self) -> dict[str, Any]:
        return {"state": self.state, "_seen": {}}


def _run_config(state: SearchState, callbacks: Sequence[Any]) -> Any:
    from ray import tune

    from distat.search.cluster import LeakSweeper
    from distat.tracking.mlflow import MLflowTrialCallback

    return tune.RunConfig(
        name=state.dir.name, storage_path=str(state.dir.parent.resolve()),
        callbacks=[MLflowTrialCallback(state.tracking_uri, state.search.name, state.dir,
                                       uri_source=SavedTrackingUri(state.dir),
                                       search_config=state.search.model_dump(mode="json"),
                                       trial_config=TrialConfigOf(state),
                                       hypervolume_history=HypervolumeHistoryOf(state)),
                   LeakSweeper(), *callbacks],
        failure_config=tune.FailureConfig(max_failures=1), verbose=0,
    )


def check_new_search(search_dir: Path) -> None:
    """Refuse to start a search where one already is (before Ray, MLflow or any folder is touched)."""
    if (search_dir / STATE_FILE).exists():
        raise DistatError(f"{search_dir} already holds a search: `distat resume {search_dir}` "
                          "continues it, or pick another name / --storage")
    if search_dir.exists() and not search_dir.is_dir():
        raise DistatError(f"{search_dir} is a file, not a search folder: pick another name / --storage")


def new_state(scfg: SearchConfig, *, storage: Path, tracking_uri: str, cache_dir: Path,
              resource_overrides: dict[str, str] | None = None) -> SearchState:
    """The state of a new search (not saved yet)."""
    return SearchState(search=scfg, search_dir=str(storage / scfg.name), cache_dir=str(cache_dir),
                       resource_overrides=resource_overrides or {}, tracking_uri=tracking_uri)


def start_search(scfg: SearchConfig, *, storage: Path, tracking_uri: str, cache_dir: Path,
                 resource_overrides: dict[str, str] | None = None, callbacks: Sequence[Any] = (),
                 points_to_evaluate: list[dict[str, Any]] | None = None, warm: Any = None) -> Any:
    """Run a new search to completion; returns Tune's ResultGrid. ``points_to_evaluate``: parameter values
    (by search-space name) to try first, e.g. known-good settings or a benchmark's fixed configurations.
    ``warm``: the search's :func:`warm_start`, when the caller has it already."""
    search_dir = storage / scfg.name
    check_new_search(search_dir)
    search_dir.mkdir(parents=True, exist_ok=True)
    state = new_state(scfg, storage=storage, tracking_uri=tracking_uri, cache_dir=cache_dir,
                      resource_overrides=resource_overrides)
    state.save()
    return _fit_new(state, callbacks, points_to_evaluate, warm)


def _fit_new(state: SearchState, callbacks: Sequence[Any] = (),
             points_to_evaluate: list[dict[str, Any]] | None = None, warm: Any = None) -> Any:
    from ray import tune

    from distat.search.trial import trainable

    scfg = state.search
    warm = warm if warm is not None else warm_start(state)
    scheduler, stopping = _early_stopping(state)
    tuner = tune.Tuner(
        trainable(state),
        # reuse_actors: the next trial runs in the finished trial's trainable process (~2.5 s per trial less:
        # a fresh process imports Ray Tune/Train first); it holds no CPU, only the trial's bookkeeping. A trial
        # early stopping stops ends by itself: its Train workers wait at the rung for the scheduler's decision
        # (probe.wait_for_decision) and end their loop; an actor Tune killed instead would leave its Ray Train
        # placement group behind, holding the CPUs the next trials wait for.
        tune_config=tune.TuneConfig(search_alg=_searcher(scfg, points_to_evaluate or list(scfg.search.points),
                                                         warm.used if warm is not None else ()),
                                    num_samples=scfg.search.num_samples, scheduler=scheduler,
                                    max_concurrent_trials=scfg.search.max_concurrent,
                                    reuse_actors=True),
        run_config=_run_config(state, [*stopping, *callbacks]),
    )
    return tuner.fit()


def resume_plan(search_dir: Path) -> str:
    """``"restore"`` when Tune saved its experiment state (``Tuner.restore`` continues it), ``"restart"`` when
    the driver died before that: the search then starts afresh in the same folder (:func:`resume_search`)."""
    from ray import tune

    return "restore" if tune.Tuner.can_restore(str(search_dir)) else "restart"


def discard_unfinished_trials(search_dir: Path) -> list[str]:
    """Remove trial folders without a final result (a search restarted from nothing re-runs them anyway);
    returns their names. Finished trials are kept."""
    trials = search_dir / TRIALS_DIR
    removed = []
    if trials.is_dir():
        for folder in sorted(trials.iterdir()):
            if folder.is_dir() and not is_finished(folder):
                shutil.rmtree(folder)
                removed.append(folder.name)
    return removed


def resume_search(search_dir: Path, callbacks: Sequence[Any] = (),
                  on_restart: Callable[[list[str]], None] | None = None) -> Any:
    """Restore a search from its directory after the driver stopped (even SIGKILL) and run it to the end.

    Completed trials are kept (not re-run); the Optuna searcher's state comes back from Tune's experiment
    snapshot; unfinished and errored trials restart, and their training resumes from the newest distat
    checkpoint in their trial folder; MLflow child runs are found again by tag. The snapshot also holds the
    run config with its callbacks (the MLflow one comes back empty, reads the tracking URI from
    ``distat_search.json`` and finds its runs by tag).

    If the driver died before Tune saved anything (see :func:`resume_plan`), the search starts afresh in
    place with the saved state, after its unfinished trial folders are removed (``on_restart`` gets their
    names); ``callbacks`` are used then only (a restored run keeps its own).
    """
    from ray import tune

    from distat.search.cluster import plan_trials
    from distat.search.trial import trainable

    state = SearchState.load(search_dir)
    if resume_plan(search_dir) == "restart":
        gone = discard_unfinished_trials(search_dir)
        if on_restart is not None:
            on_restart(gone)
        return _fit_new(state.updated(search_dir=str(search_dir)), callbacks)
    set_aside_unknown_trials(search_dir)
    plan_trials(search_dir, state.search.search.num_samples)  # an extend interrupted before Tune saved again
    tuner = tune.Tuner.restore(str(search_dir), trainable=trainable(state), resume_unfinished=True,
                               resume_errored=True)
    return tuner.fit()


def extend_plan(search_dir: Path, trials: int) -> SearchState:
    """Plan ``trials`` more trials for the search in ``search_dir`` (saved in its state); returns the new state.
    :func:`resume_search` then runs them in the same study: Tune's restored experiment with its searcher (the
    Optuna study holding every earlier trial), the same storage, spec and MLflow parent run. A killed or stopped
    search finishes its unfinished trials on the way, as ``distat resume`` would."""
    if trials < 1:
        raise DistatError(f"--trials must be at least 1, got {trials}")
    state = SearchState.load(search_dir)
    total = state.search.search.num_samples + trials
    search = state.search.model_copy(update={"search": state.search.search.model_copy(update={"num_samples": total})})
    new = state.model_copy(update={"search": search})
    new.save()
    return new


def set_aside_unknown_trials(search_dir: Path) -> list[str]:
    """Move trial folders of trials Tune's last snapshot does not hold to ``orphaned_trials/``; returns their ids.

    Tune snapshots its experiment every 10 s or more: a trial started in the seconds before the driver died is
    not in it, so the restored search never runs that trial id again (the searcher suggests a new trial in
    its place). Its folder would be an extra, unfinished trial in ``trials/``; it is kept aside instead.
    """
    from distat.search.cluster import snapshot_trial_ids

    known = snapshot_trial_ids(search_dir)
    trials = search_dir / TRIALS_DIR
    if known is None or not trials.is_dir():
        return []
    moved = []
    for folder in sorted(p for p in trials.iterdir() if p.is_dir() and p.name not in known):
        target = search_dir / ORPHANS_DIR / folder.name
        target.parent.mkdir(exist_ok=True)
        shutil.move(str(folder), str(target))
        moved.append(folder.name)
        log.warning("trial %s started after Tune's last snapshot of the search and is not in it: its folder is moved "
                    "to %s%s", folder.name, target,
                    "" if not is_finished(target) else " (it had finished: its result is not counted)")
    return moved


def stopped_early(grid: Any, num_samples: int, search_dir: Path) -> bool:
    """Whether Tune returned before the search's end: it catches Ctrl-C (SIGINT) itself, saves its state and
    returns normally, leaving trials unfinished or unstarted. Tune marks a trial it stopped that way TERMINATED
    like a finished one, so "finished" is read from the trial folders (a ``final.json``), errored trials from
    Tune."""
    done = len(finished_trials(search_dir))
    return len(grid) < num_samples or done + grid.num_errors < num_samples


_EXTRA_PREFIXES = ("attack_", "perturbed", "probe_", "early_stopped_epoch", "avg_queries", "robust_acc_", "robust_acc.", "static_", "victim_", "ada_",
                   "macro_f1", "balanced_acc", "majority_rate", "robust_macro_f1", "robust_balanced_acc")


def trial_points(search_dir: Path, clean_acc_floor: float | None = None,
                 scfg: SearchConfig | None = None) -> list[Any]:
    """One :class:`~distat.tracking.pareto.TrialPoint` per finished trial, read from the search directory
    (complete on disk whatever happened to the driver or the tracking server), in the order the trials finished
    (:func:`~distat.search.state.finish_order`). Trials below ``clean_acc_floor`` are marked infeasible (kept in
    the table, off the front). Each point names its method (from ``scfg`` when given, else from a searched
    ``method``) and carries the 95% Wilson interval of each accuracy whose count the trial recorded
    (:func:`_intervals`)."""
    from distat.attacks.spec import HASH_KEY, check_same_spec

    finished = finished_trials(search_dir)
    # one column per objective: numbers measured under different threat models (a resource rebuilt between a
    # driver kill and `distat resume`, a searched data.path) must not share it; trials from before specs were
    # recorded, and diverged ones (never attacked), are left out of the check
    check_same_spec({f"trial {r.trial_id}": r.metrics.get(HASH_KEY) for r in finished.values()
                     if isinstance(r.metrics.get(HASH_KEY), str)}, what="robust accuracies on the front")
    return [_point(finished[trial_id], search_dir, clean_acc_floor, scfg) for trial_id in finish_order(finished)]


def _point(result: TrialResult, search_dir: Path, clean_acc_floor: float | None, scfg: SearchConfig | None) -> Any:
    """The :class:`~distat.tracking.pareto.TrialPoint` of one finished trial (:func:`trial_points`)."""
    from distat.tracking.pareto import OBJECTIVES as FRONT_OBJECTIVES
    from distat.tracking.pareto import TrialPoint

    clean_metric = scfg.search.clean_metric if scfg is not None else "clean_acc"
    m = result.metrics
    intervals = _intervals(m, result.train)
    if clean_metric != "clean_acc":  # the clean objective is a score without a count behind it: no interval
        intervals.pop("clean_acc", None)
    # bounds recorded at attack time are columns of the intervals now (the objectives' always are)
    covered = {f"{name}{end}" for name in {*intervals, *FRONT_OBJECTIVES} for end in ("_lo", "_hi", "_n")}
    extra = {k: float(v) for k, v in m.items()
             if k.startswith(_EXTRA_PREFIXES) and isinstance(v, (int, float)) and k not in covered
             and k != clean_metric}
    if clean_metric != "clean_acc" and isinstance(m.get("clean_acc"), (int, float)):
        extra["clean_acc"] = float(m["clean_acc"])  # beside the clean objective, and what the floor reads
    return TrialPoint(trial_id=result.trial_id, clean_acc=float(m.get(clean_metric, math.nan)),
                      robust_acc=float(m.get("robust_acc", math.nan)), params=result.params,
                      diverged=bool(m.get("diverged", 0.0)), extra=extra,
                      infeasible=clean_acc_floor is not None and not float(m.get("clean_acc", 0.0)) >= clean_acc_floor,
                      method=_method_label(scfg, result.params, search_dir / TRIALS_DIR / result.trial_id),
                      intervals=intervals)


def _intervals(metrics: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    """The Wilson 95% interval of each accuracy of a trial whose count is recorded: ``clean_acc`` over the dev
    examples (``dev_n`` of the training metrics), ``robust_acc`` and ``attack_clean_acc`` over the attacked ones
    (``n``). A count that is missing (a search from before counts were recorded, a diverged trial) or that does
    not fit the accuracy (``acc * n`` not a whole number) gives no interval rather than a wrong one."""
    from distat.attacks.metrics import wilson_interval
    from distat.tracking.pareto import Interval

    # robust_acc_n: the objective's count (a static set's size when that is the worst case), else the subset's
    counts = {"clean_acc": train.get("dev_n"), "robust_acc": metrics.get("robust_acc_n", metrics.get("n")),
              "attack_clean_acc": metrics.get("n")}
    out = {}
    for name, n in counts.items():
        acc = metrics.get(name)
        if not isinstance(n, (int, float)) or not isinstance(acc, (int, float)) or isinstance(acc, bool):
            continue
        if not (math.isfinite(n) and n >= 1 and n == int(n) and math.isfinite(acc) and 0.0 <= acc <= 1.0):
            continue
        hits = acc * n
        if abs(hits - round(hits)) > 1e-6 * max(n, 1.0):
            log.debug("trial metric %s = %r is not a count out of %r: no interval", name, acc, n)
            continue
        lo, hi = wilson_interval(round(hits), int(n))
        out[name] = Interval(lo, hi, int(n))
    return out


def _method_label(scfg: SearchConfig | None, params: dict[str, Any], trial_dir: Path) -> str | None:
    """The label of a trial's AT method (``adaptive_pgd``): its whole config built from the search's, else a
    searched ``method`` value as it was sampled; None when neither says."""
    if scfg is not None:
        from distat.search.space import apply_params, sampled_params

        try:
            return apply_params(scfg, sampled_params(scfg, params), str(trial_dir)).method.label
        except DistatError as e:  # params of an older version of the space: fall back to what was sampled
            log.debug("method of %s not rebuilt from its params: %s", trial_dir.name, first_line(e))
    method = params.get("method")
    if not isinstance(method, str):
        return None
    from distat.methods import label_of

    return label_of({"name": method}) or method


def finish_search(scfg: SearchConfig, search_dir: Path, tracking_uri: str) -> tuple[list[Any], dict[str, Path]]:
    """Pareto artifacts (the front and the hypervolume history) into ``search_dir/pareto`` and onto the MLflow
    parent run, with every step of its ``hypervolume`` metric the callback did not log. A tracking server lost by
    now costs the parent run its artifacts (one warning), not the search: the front is on disk. Returns the points
    in the order their trials finished and the files."""
    from distat.tracking.mlflow import HYPERVOLUME_METRIC, Tracker, redact
    from distat.tracking.pareto import hypervolume_history, write_artifacts

    points = trial_points(search_dir, clean_floor(scfg), scfg)
    files = write_artifacts(points, search_dir / PARETO_DIR, clean_metric=scfg.search.clean_metric,
                            finish_order=[p.trial_id for p in points])
    try:
        tracker = Tracker(tracking_uri, scfg.name, search_dir)
        tracker.close_stray_children({p.trial_id for p in points})
        tracker.log_artifacts(tracker.parent_id, search_dir / PARETO_DIR)
        tracker.log_missing_steps(tracker.parent_id, HYPERVOLUME_METRIC, hypervolume_history(points))
        tracker.finish(tracker.parent_id)
    except Exception as e:  # noqa: BLE001 - any tracking failure: the results stay on disk
        log.warning("the Pareto front was not logged to MLflow (%s: %s); it is in %s", type(e).__name__,
                    redact(first_line(e)), search_dir / PARETO_DIR)
    return points, files
