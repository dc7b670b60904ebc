"""``distat evaluate <search dir>``: the test stage of a finished search (see :mod:`distat.search.test_stage`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from distat.app.resources import AttackResources, Notify, _quiet
from distat.errors import DistatError

if TYPE_CHECKING:
    from distat.search.space import TestStageSettings
    from distat.search.state import SearchState
    from distat.search.test_stage import StageOutcome

Progress = Callable[[str, str, int, int], None]


def stage_settings(stage: TestStageSettings, *, n: int | None = None, all_rows: bool = False, trials: Sequence[str] = (),
                   best_per_method: bool | None = None) -> TestStageSettings:
    """The search's ``evaluate`` settings with the command line's overrides: ``n`` (a cap), ``all_rows`` (no cap),
    more ``trials``, ``best_per_method``."""
    update: dict[str, object] = {}
    if n is not None:
        if n < 1:
            raise DistatError(f"--n {n}: attack at least one example")
        update["n"] = n
    if all_rows:
        update["n"] = None
    if trials:
        update["trials"] = tuple(dict.fromkeys([*stage.trials, *trials]))
    if best_per_method is not None:
        update["best_per_method"] = best_per_method
    return stage.model_copy(update=update)


def check_test_split(state: SearchState) -> list[str]:
    """Before anything runs: the test split resolves for the search's data (one line naming its splits
    otherwise); warnings when the search tuned on it."""
    from distat.config import resolve_data, resolve_split

    scfg = state.search
    data = scfg.base_trial().data
    test = resolve_split(data, scfg.evaluate.split)
    warnings = []
    if resolve_data(data).dev_split == test:
        warnings.append(f"distat: warning: the search tuned on split {test!r} (trial.data.dev_split): its test "
                        "numbers are not held out")
    return warnings


def evaluate(search_dir: str | os.PathLike[str], *, n: int | None = None, all_rows: bool = False,
             trials: Sequence[str] = (), only: bool = False, best_per_method: bool | None = None,
             address: str | None = None, tracking_uri: str | None = None, cache_dir: str | os.PathLike[str] | None = None,
             notify: Notify = _quiet, progress: Progress | None = None) -> StageOutcome:
    """Evaluate the front's feasible trials, each method's best and ``trials`` on the search's test split (only
    ``trials`` with ``only``); returns a :class:`distat.search.test_stage.StageOutcome`. Resumable: run it
    again after it was stopped and only what is left is evaluated."""
    from distat.app.search import fs_path
    from distat.search.state import SearchState

    folder = fs_path(search_dir, "search folder").resolve()
    state = SearchState.load(folder)
    if cache_dir is not None:
        state = state.model_copy(update={"cache_dir": str(fs_path(cache_dir, "--cache-dir").resolve())})
    if only and not trials:
        raise DistatError("--only needs --trial: which trials to evaluate")
    stage = stage_settings(state.search.evaluate, n=n, all_rows=all_rows, trials=trials,
                           best_per_method=best_per_method)
    att = stage.attack(state.search.attack)
    where = AttackResources(Path(state.cache_dir), state.resource_overrides)
    for recipe in att.recipe_names:
        where.require(recipe)
    for line in check_test_split(state):
        notify(line)
    from distat.search.cluster import ray_session
    from distat.search.test_stage import run_test_stage

    with ray_session(address) if att.actors > 0 else contextlib.nullcontext():
        return run_test_stage(state, stage, tracking_uri=tracking_uri, notify=notify, progress=progress,
                              trials=trials if only else None)
