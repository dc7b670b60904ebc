"""Warm start: a previous search's finished trials as prior observations of a new search's searcher.

``search.warm_start: <search dir>`` (or ``distat search --warm-start DIR``). A trial of the old search is used
only when it says something true about the new search:

* its robust number was measured under the same threat model: its ``threat_spec_hash`` equals the one the
  new search's trials will record (:func:`distat.search.evaluation.planned_spec_hash`). Numbers from another
  threat model are never mixed in silently: such trials are listed as left out, with both hashes;
* its parameters are a point of the new space: every parameter the new space suggests for those values is
  there and inside its range or choices, and it has no parameter the new space does not search (a setting
  the new search fixes may differ from the value the old trial ran with);
* it finished with both objectives (a diverged trial is left out: its numbers are not a model's).

The trial's other settings (the base trial config: backbone, epochs, data) are the user's call: changing the
backbone and warm-starting from the old search is the point. Which trials were used, and why the others were
not, is returned (:class:`WarmStart`), told to the user and recorded on the MLflow parent run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distat.errors import DistatError
from distat.search.space import SearchConfig


@dataclass(frozen=True)
class Prior:
    """One old trial as an observation: the parameter values, their distributions in the new space, the
    objectives' values (in the new search's objective order) and where it came from."""

    trial_id: str
    params: dict[str, Any]
    distributions: dict[str, Any]  # optuna distributions
    values: tuple[float, ...]
    clean_acc: float
    robust_acc: float
    source: str  # <old search dir>/trials/<trial id>


@dataclass
class WarmStart:
    source: Path
    spec_hash: str
    used: list[Prior] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)  # trial id -> why

    def summary(self) -> str:
        """One line: how many were used, and why the others were not."""
        total = len(self.used) + len(self.left_out)
        line = f"warm start from {self.source}: {len(self.used)} of {total} finished trial(s) used"
        if self.left_out:
            reasons = "; ".join(f"{trial_id}: {why}" for trial_id, why in sorted(self.left_out.items()))
            line += f"; left out: {reasons}"
        return line


class _Missing(Exception):
    pass


class _Recorder:
    """Stands in for an Optuna trial while the space is replayed on given values: answers each suggestion with
    the value given, and records the distribution the space asked from."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params
        self.distributions: dict[str, Any] = {}

    def _take(self, name: str, distribution: Any) -> Any:
        if name not in self.params:
            raise _Missing(name)
        self.distributions[name] = distribution
        return self.params[name]

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        from optuna.distributions import CategoricalDistribution

        return self._take(name, CategoricalDistribution(choices))

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> Any:
        from optuna.distributions import IntDistribution

        return self._take(name, IntDistribution(low, high, step=step, log=log))

    def suggest_float(self, name: str, low: float, high: float, step: float | None = None, log: bool = False) -> Any:
        from optuna.distributions import FloatDistribution

        return self._take(name, FloatDistribution(low, high, step=step, log=log))


def space_point(scfg: SearchConfig, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | str:
    """``params`` as a point of ``scfg``'s space: (the values the space suggests, their distributions), or why
    it is not one."""
    from distat.search.space import define_by_run

    extra = sorted(set(params) - set(scfg.params))
    if extra:
        return f"parameter(s) {', '.join(extra)} not searched here"
    recorder = _Recorder(params)
    try:
        define_by_run(scfg)(recorder)  # type: ignore[arg-type]
    except _Missing as e:
        return f"no value for {e.args[0]}, which this space searches for these values"
    for name, dist in recorder.distributions.items():
        value = params[name]
        try:
            inside = dist._contains(dist.to_internal_repr(value))  # optuna has no public "contains"
        except (ValueError, TypeError):
            inside = False
        if not inside:
            return f"{name} = {value!r} outside {_describe(dist)}"
    unused = sorted(set(params) - set(recorder.distributions))
    if unused:  # searched here, but not for these values (a condition does not hold)
        return f"parameter(s) {', '.join(unused)} do not apply here to these values"
    return {name: params[name] for name in recorder.distributions}, recorder.distributions


def _describe(dist: Any) -> str:
    if hasattr(dist, "choices"):
        return "choices [" + ", ".join(map(str, dist.choices)) + "]"
    return f"[{dist.low}, {dist.high}]"


def collect(source: Path, scfg: SearchConfig, spec_hash: str) -> WarmStart:
    """The trials of the search in ``source`` that can warm-start the search ``scfg`` (whose trials will record
    ``spec_hash``), and why each other finished trial cannot."""
    from distat.attacks.spec import HASH_KEY
    from distat.search.state import TRIALS_DIR, SearchState, finished_trials

    SearchState.load(source)  # one line when it is not a search folder
    out = WarmStart(source=source, spec_hash=spec_hash)
    objectives = list(scfg.search.objectives)
    for trial_id, result in finished_trials(source).items():
        m = result.metrics
        if m.get("diverged"):
            out.left_out[trial_id] = "diverged"
            continue
        recorded = m.get(HASH_KEY)
        if recorded != spec_hash:
            out.left_out[trial_id] = f"another threat model (spec {recorded or 'not recorded'}, this search's {spec_hash})"
            continue
        values = [m.get(name) for name in objectives]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            missing = [name for name, v in zip(objectives, values, strict=True) if not isinstance(v, (int, float))]
            out.left_out[trial_id] = f"no {', '.join(missing) or 'finite objective values'}"
            continue
        point = space_point(scfg, result.params)
        if isinstance(point, str):
            out.left_out[trial_id] = point
            continue
        params, distributions = point
        out.used.append(Prior(trial_id=trial_id, params=params, distributions=distributions,
                              values=tuple(float(v) for v in values), clean_acc=float(m.get("clean_acc", values[0])),
                              robust_acc=float(m["robust_acc"]), source=str(source / TRIALS_DIR / trial_id)))
    return out


def check_source(source: Path, search_dir: Path) -> None:
    """A warm start reads another search's folder: not this search's own."""
    if source.resolve() == search_dir.resolve():
        raise DistatError(f"search.warm_start {source} is this search's own folder: `distat extend` adds trials to it")
