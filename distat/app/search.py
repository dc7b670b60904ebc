"""``distat search``, ``distat resume``, ``distat extend`` and ``distat pareto``.

Search and resume share one shape: check everything that can be checked without a cluster (the config, the
attack resources, the tracking server), start Ray (:func:`distat.search.cluster.ray_session`), check the
cluster fits one trial before anything is written, run the search, and finish it (the Pareto front on disk
and on the MLflow parent run) unless it was interrupted.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distat.app.resources import AttackResources, Notify, _quiet
from distat.errors import DistatError

if TYPE_CHECKING:  # imported where used: `distat resources show` loads this module and needs neither
    from distat.search.progress import Listener
    from distat.search.space import SearchConfig

_JOIN_GRACE_S = 30.0  # on an existing cluster, how long nodes may still be joining before "too few GPUs" is final
_FRONT_COLUMNS = ("trial_id", "method", "clean_acc", "clean_acc_lo", "clean_acc_hi", "clean_acc_n", "robust_acc",
                  "robust_acc_lo", "robust_acc_hi", "robust_acc_n", "within_noise_of", "static_robust_acc",
                  "ada_examples")


def _front_columns(clean_metric: str) -> tuple[str, ...]:
    """The front table's shown columns when the clean objective is ``clean_metric``: its own columns in place of
    ``clean_acc``'s, and then clean accuracy too where the points carry it as an extra (the floor reads it)."""
    if clean_metric == "clean_acc":
        return _FRONT_COLUMNS
    renamed = tuple(clean_metric + c.removeprefix("clean_acc") if c.startswith("clean_acc") else c
                    for c in _FRONT_COLUMNS)
    return (*renamed, "clean_acc")


@dataclass
class FrontSummary:
    """The Pareto front of a search, ready to show: counts, hypervolume, who was left out and why, the rows of
    the front and of the trials within noise of it (a pandas DataFrame of the shown columns: the objectives
    with their 95% intervals ``<objective>_lo/_hi/_n``, empty where no count was recorded, the clean one named
    after ``clean_metric``; ``within_noise_of`` empty on front rows), where its files are, and, given the order
    the trials finished, the hypervolume after each of them (:func:`distat.tracking.pareto.hypervolume_steps`,
    reference point ``reference``)."""

    total: int
    on_front: int
    hypervolume: float
    below_floor: list[str]
    diverged: list[str]
    table: Any  # pandas.DataFrame (empty when no trial finished)
    has_static: bool
    files: dict[str, Path]
    tracking_uri: str  # credentials masked
    within_noise: list[str] = field(default_factory=list)  # off the front, both intervals overlapping a member's
    clean_metric: str = "clean_acc"  # the clean objective (distat.tracking.pareto.CLEAN_METRICS)
    early_stop: str | None = None  # with search.early_stop: who was stopped, and the probe's rank agreement
    history: list[Any] = field(default_factory=list)  # HypervolumeStep per finished trial; empty without the order
    reference: tuple[float, float] = (0.0, 0.0)  # the hypervolume's reference point

    @classmethod
    def of(cls, points: list[Any], files: dict[str, Path], tracking_uri: str,
           clean_metric: str = "clean_acc", finish_order: list[str] | None = None) -> FrontSummary:
        """The summary of ``points``; ``finish_order`` (every point's trial id, first finished first) adds the
        hypervolume history."""
        import pandas as pd

        from distat.tracking.mlflow import redact
        from distat.tracking.pareto import (
            REFERENCE,
            clean_label,
            front_table,
            hypervolume,
            hypervolume_steps,
            in_finish_order,
            non_dominated,
        )

        clean_label(clean_metric)  # an unknown metric is refused with or without points
        history = [] if finish_order is None else hypervolume_steps(in_finish_order(points, finish_order), REFERENCE)
        if not points:
            return cls(0, 0, 0.0, [], [], pd.DataFrame(), False, files, redact(tracking_uri),
                       clean_metric=clean_metric, reference=REFERENCE)
        table = front_table(points, clean_metric)
        shown_columns = _front_columns(clean_metric)
        cols = [c for c in table.columns if c in shown_columns or c.startswith("param.")]
        shown = table["on_front"] | table["within_noise"]  # the front first (front_table's order)
        return cls(total=len(points), on_front=sum(non_dominated(points)), hypervolume=hypervolume(points),
                   below_floor=[p.trial_id for p in points if p.infeasible and not p.diverged],
                   diverged=[p.trial_id for p in points if p.diverged],
                   table=table[shown][cols].reset_index(drop=True),
                   has_static="static_robust_acc" in table.columns, files=files,
                   tracking_uri=redact(tracking_uri), within_noise=list(table[table["within_noise"]]["trial_id"]),
                   clean_metric=clean_metric, history=history, reference=REFERENCE)


@dataclass
class SearchOutcome:
    search_dir: Path
    interrupted: bool  # stopped before its end (Ctrl-C): continue with `distat resume`
    front: FrontSummary | None = None  # None when interrupted
    messages: list[str] = field(default_factory=list)


def _with_early_stop(front: FrontSummary, search_dir: Path, config: SearchConfig) -> FrontSummary:
    """``front`` with the early-stopping line of a search that has ``search.early_stop``."""
    if config.search.early_stop is not None:
        from distat.search.probe import proxy_agreement

        front.early_stop = proxy_agreement(search_dir).summary()
    return front


def fs_path(value: str | os.PathLike[str], what: str) -> Path:
    """A filesystem path given by the user; a URI (``s3://``, ``gs://``...) is refused: every node reads and
    writes these folders as files, so they must be a path on a filesystem all nodes mount (NFS, EFS, a PVC)."""
    text = str(value)
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise DistatError(f"{what} {text!r} is a {scheme}:// URI: distat needs a shared filesystem path "
                          "(mounted at the same place on every node, e.g. /mnt/efs/searches), not an object store")
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise DistatError(f"{what} {text}: is a file, not a folder")
    return path


def _credentials_warning(uri: str) -> str | None:
    from distat.tracking.mlflow import redact

    if redact(uri) == uri:
        return None
    return (f"distat: warning: the tracking URI {redact(uri)} holds credentials, and distat stores the URI in the "
            "search folder: prefer MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD")


@contextlib.contextmanager
def _cluster_for(scfg: SearchConfig, address: str | None) -> Iterator[None]:
    """Ray started, and the cluster known to fit one trial: nothing is written (search folder, MLflow runs)
    before that."""
    from distat.search.capacity import check_cluster_fits
    from distat.search.cluster import ray_session

    with ray_session(address):
        check_cluster_fits(scfg, wait_s=_JOIN_GRACE_S if address else 0.0)
        yield


def _listeners(listener: Listener | None, total: int) -> list[Any]:
    from distat.search.progress import progress_callback

    return [progress_callback(total, listener)] if listener is not None else []


def require_recipes(where: AttackResources, config: SearchConfig) -> None:
    """Every recipe the search (and its test stage, when it runs after the search) attacks with finds its
    resources (one line naming what is missing otherwise)."""
    recipes = config.attack.recipe_names
    if config.evaluate.after_search:
        recipes += config.evaluate.attack(config.attack).recipe_names
    for recipe in dict.fromkeys(recipes):
        where.require(recipe)


def check_splits(config: SearchConfig) -> None:
    """Before Ray starts: the trial's train and dev splits and the attacked split resolve for its data (a
    one-line error naming the data and its splits otherwise), rather than every trial failing after training;
    so does the test split when the test stage runs after the search."""
    from distat.config import resolve_data, resolve_split

    data = config.base_trial().data
    resolve_split(resolve_data(data), config.attack.split)
    if config.evaluate.after_search:
        resolve_split(data, config.evaluate.split)


def _after_search(search_dir: Path, tracking_uri: str, notify: Notify) -> None:
    """The test stage, when the search's YAML asks for it (``evaluate.after_search``), on the search's cluster."""
    from distat.search.state import SearchState
    from distat.search.test_stage import run_test_stage

    state = SearchState.load(search_dir)
    if not state.search.evaluate.after_search:
        return
    notify(f"test stage: the front and each method's best trial on the {state.search.evaluate.split} split")
    run_test_stage(state, state.search.evaluate, tracking_uri=tracking_uri, notify=notify)


def search(config: SearchConfig, *, storage: str | os.PathLike[str] = "runs/searches", tracking_uri: str | None = None,
           address: str | None = None, cache_dir: str | os.PathLike[str] | None = None,
           resource_overrides: dict[str, str] | None = None, listener: Listener | None = None,
           notify: Notify = _quiet, describe: Callable[[str], None] | None = None) -> SearchOutcome:
    """Run the search ``config`` into ``storage/<name>``, attacking with the resources in ``cache_dir``
    (default ``$DISTAT_CACHE_DIR`` or ``~/.cache/distat``). ``listener`` hears every trial event, ``notify``
    gets messages; ``describe`` gets the search's description once it is sure to start."""
    from distat.search.driver import check_new_search, finish_search, start_search, stopped_early
    from distat.search.space import describe as describe_search
    from distat.tracking.mlflow import Tracker, check_reachable, default_tracking_uri

    root = fs_path(storage, "--storage").resolve()
    if cache_dir is not None:
        fs_path(cache_dir, "--cache-dir")
    where = AttackResources.at(cache_dir, resource_overrides)
    uri = tracking_uri or default_tracking_uri()
    require_recipes(where, config)
    check_splits(config)
    search_dir = root / config.name
    check_new_search(search_dir)
    check_reachable(uri)  # an unreachable server fails here, before Ray starts
    warm = None
    if config.search.warm_start is not None:  # read, and checked, before Ray starts
        from distat.search.driver import new_state, warm_start

        source = fs_path(config.search.warm_start, "search.warm_start").resolve()  # kept for `distat resume`
        config = config.model_copy(update={"search": config.search.model_copy(update={"warm_start": str(source)})})
        warm = warm_start(new_state(config, storage=root, tracking_uri=uri, cache_dir=where.cache,
                                    resource_overrides=where.overrides))
    with _cluster_for(config, address):
        tracker = Tracker(uri, config.name, search_dir)  # the experiment and the parent run
        warning = _credentials_warning(uri)
        if warning:
            notify(warning)
        (describe or notify)(describe_search(config))
        if warm is not None:
            notify(f"distat: {warm.summary()}")
            _tag_warm_start(tracker, warm)
        grid = start_search(config, storage=root, tracking_uri=uri, cache_dir=where.cache,
                            resource_overrides=where.overrides,
                            callbacks=_listeners(listener, config.search.num_samples), warm=warm)
        if stopped_early(grid, config.search.num_samples, search_dir):
            return SearchOutcome(search_dir, interrupted=True)
        points, files = finish_search(config, search_dir, uri)
        _after_search(search_dir, uri, notify)
    return SearchOutcome(search_dir, interrupted=False, front=_with_early_stop(
        FrontSummary.of(points, files, uri, clean_metric=config.search.clean_metric,
                        finish_order=[p.trial_id for p in points]), search_dir, config))


def _tag_warm_start(tracker: Any, warm: Any) -> None:
    """The warm start on the parent run: where from, which trials were used, why the others were not."""
    tracker.set_tags(tracker.parent_id, {
        "distat.warm_start.source": str(warm.source),
        "distat.warm_start.used": ",".join(p.trial_id for p in warm.used)[:5000] or "-",
        "distat.warm_start.left_out": "; ".join(f"{k}: {v}" for k, v in sorted(warm.left_out.items()))[:5000] or "-",
    })


def resume(search_dir: str | os.PathLike[str], *, address: str | None = None, tracking_uri: str | None = None,
           cache_dir: str | os.PathLike[str] | None = None, listener: Listener | None = None,
           notify: Notify = _quiet) -> SearchOutcome:
    """Continue the search in ``search_dir`` after its driver stopped (Ctrl-C, SIGKILL, lost node).
    ``tracking_uri`` / ``cache_dir``: where they are now, if they moved (saved in the search folder)."""
    return _continue(search_dir, 0, address=address, tracking_uri=tracking_uri, cache_dir=cache_dir,
                     listener=listener, notify=notify)


def extend(search_dir: str | os.PathLike[str], trials: int, *, address: str | None = None,
           tracking_uri: str | None = None, cache_dir: str | os.PathLike[str] | None = None,
           listener: Listener | None = None, notify: Notify = _quiet) -> SearchOutcome:
    """Run ``trials`` more trials in the search in ``search_dir``, in the same study (searcher history, MLflow
    parent run, storage and threat-model spec kept), after it finished, was stopped or was killed; the front
    and the report are rewritten with every trial. Unfinished trials of a stopped or killed search are
    finished on the way, as ``resume`` would."""
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise DistatError(f"--trials must be a whole number of at least 1, got {trials!r}")
    return _continue(search_dir, trials, address=address, tracking_uri=tracking_uri, cache_dir=cache_dir,
                     listener=listener, notify=notify)


def _continue(search_dir: str | os.PathLike[str], more: int, *, address: str | None, tracking_uri: str | None,
              cache_dir: str | os.PathLike[str] | None, listener: Listener | None, notify: Notify) -> SearchOutcome:
    """``resume`` (``more`` = 0) and ``extend`` (``more`` new trials planned before the search continues)."""
    from distat.search.driver import extend_plan, finish_search, resume_search, stopped_early
    from distat.search.state import SearchState, finished_trials
    from distat.tracking.mlflow import check_reachable

    folder = fs_path(search_dir, "search folder").resolve()
    cache = fs_path(cache_dir, "--cache-dir").resolve() if cache_dir else None
    state = SearchState.load(folder)
    scfg = state.search
    uri = tracking_uri or state.tracking_uri
    cache_path = str(cache) if cache is not None else state.cache_dir
    require_recipes(AttackResources(Path(cache_path), state.resource_overrides), scfg)
    check_splits(scfg)
    check_reachable(uri)
    with _cluster_for(scfg, address):
        state = state.updated(tracking_uri=uri, cache_dir=cache_path)  # the trials and the MLflow callback read it
        if more:
            done = len(finished_trials(folder))
            state = extend_plan(folder, more)  # after every check: a refused extend changes nothing
            scfg = state.search
            notify(f"distat extend: {more} more trial(s) in the same study: {scfg.search.num_samples} planned, "
                   f"{done} finished so far")

        def restarting(gone: list[str]) -> None:
            notify(f"distat resume: {folder} has no Tune experiment state (the driver stopped before Tune "
                   f"saved any): starting the search afresh in place"
                   + (f", removed {len(gone)} unfinished trial folder(s)" if gone else ""))

        grid = resume_search(folder, callbacks=_listeners(listener, scfg.search.num_samples), on_restart=restarting)
        if stopped_early(grid, scfg.search.num_samples, folder):
            return SearchOutcome(folder, interrupted=True)
        points, files = finish_search(scfg, folder, uri)
        _after_search(folder, uri, notify)
    return SearchOutcome(folder, interrupted=False, front=_with_early_stop(
        FrontSummary.of(points, files, uri, clean_metric=scfg.search.clean_metric,
                        finish_order=[p.trial_id for p in points]), folder, scfg))


def pareto(search_dir: str | os.PathLike[str]) -> FrontSummary:
    """The front of a search's finished trials again, its CSV/PNG/HTML and the hypervolume history rewritten."""
    from distat.search.driver import PARETO_DIR, trial_points
    from distat.search.space import clean_floor
    from distat.search.state import SearchState
    from distat.tracking.pareto import write_artifacts

    folder = fs_path(search_dir, "search folder").resolve()
    state = SearchState.load(folder)
    points = trial_points(folder, clean_floor(state.search), state.search)
    if not points:
        raise DistatError(f"{folder}: no finished trial yet")
    metric = state.search.search.clean_metric
    order = [p.trial_id for p in points]  # trial_points gives them in the order they finished
    files = write_artifacts(points, folder / PARETO_DIR, clean_metric=metric, finish_order=order)
    return _with_early_stop(FrontSummary.of(points, files, state.tracking_uri, clean_metric=metric, finish_order=order),
                            folder, state.search)
