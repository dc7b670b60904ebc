"""The searcher: Ray Tune's ``OptunaSearch`` with two objectives and an optional clean-accuracy floor.

The floor is an Optuna constraint (``constraints_func``, ≤ 0 feasible): trials below it, and diverged trials,
are infeasible, so TPE stops treating a model collapsed to the majority class as a good robust point. Optuna
evaluates the constraint before the trial's values are stored, so :class:`Searcher` copies ``clean_acc`` and
``diverged`` from the final result into the Optuna trial's user attributes first (they also make the study's
history self-explanatory). Everything here is module level: Tune pickles the searcher, sampler included,
into its experiment snapshot, and ``distat resume`` unpickles it.
"""

from __future__ import annotations

import warnings
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from distat.search.probe import PROBE_METRIC

__all__ = ["Feasibility", "Searcher", "build_searcher"]

_COPIED = ("clean_acc", "robust_acc", "diverged")


class Feasibility:
    """Constraint value for one Optuna trial: how far clean accuracy is below the floor, +1 if diverged."""

    def __init__(self, floor: float) -> None:
        self.floor = floor

    def __call__(self, trial: optuna.trial.FrozenTrial) -> tuple[float]:
        clean = float(trial.user_attrs.get("clean_acc", 0.0))
        diverged = float(trial.user_attrs.get("diverged", 0.0))
        return (max(self.floor - clean, 0.0) + diverged,)


class Searcher(OptunaSearch):
    """``OptunaSearch`` that records the final metrics on the Optuna trial before telling the study."""

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and result and not error and "robust_acc" not in result \
                and isinstance(result.get(PROBE_METRIC), (int, float)):
            # stopped early at a rung (search.early_stop): a complete observation of its rung values, tagged with
            # the rung, never a pruned trial (multi-objective samplers break on those)
            result = {**result, "robust_acc": float(result[PROBE_METRIC])}
            ot_trial.set_user_attr("early_stopped_epoch", float(result.get("epoch") or 0.0))
        if ot_trial is not None and result and trial_id not in self._completed_trials:
            for key in _COPIED:
                value = result.get(key)
                if isinstance(value, (int, float)):
                    ot_trial.set_user_attr(key, float(value))
        super().on_trial_complete(trial_id, result, error)


    def add_prior(self, prior: Any) -> None:
        """A finished trial from elsewhere (a :class:`~distat.search.warm_start.Prior`) as a complete observation
        of the study: Optuna's samplers learn from it, Tune never runs it. It carries the user attributes a trial
        of this study gets (the clean floor reads ``clean_acc``) and ``warm_start`` (where it came from); its
        feasibility is recorded as Optuna records it for a trial the study ran (a constrained TPE ranks a trial
        without one below every other)."""
        from optuna.samplers._base import _CONSTRAINTS_KEY

        attrs = {"clean_acc": prior.clean_acc, "robust_acc": prior.robust_acc, "diverged": 0.0,
                 "warm_start": prior.source}

        def frozen(system_attrs: dict[str, Any] | None = None) -> optuna.trial.FrozenTrial:
            return optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, values=list(prior.values),
                                             params=prior.params, distributions=prior.distributions,
                                             user_attrs=attrs, system_attrs=system_attrs)

        feasibility = getattr(self._sampler, "_constraints_func", None)
        trial = frozen() if feasibility is None else frozen({_CONSTRAINTS_KEY: tuple(feasibility(frozen()))})
        self._ot_study.add_trial(trial)


def build_searcher(space: Any, objectives: list[str], *, seed: int, clean_acc_floor: float | None,
                   points_to_evaluate: list[dict[str, Any]] | None = None) -> Searcher:
    """A searcher maximising ``objectives`` over the define-by-run ``space``; ``points_to_evaluate`` (parameter
    values by name) are tried first, in order, before the sampler suggests anything."""
    modes = ["max"] * len(objectives)
    points = points_to_evaluate or None
    if clean_acc_floor is None:
        return Searcher(space=space, metric=objectives, mode=modes, seed=seed, points_to_evaluate=points)
    # Ray's default sampler (TPE), now with the constraint
    with warnings.catch_warnings():  # constraints_func is "experimental" since Optuna 3.0
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=seed, constraints_func=Feasibility(float(clean_acc_floor)))
    return Searcher(space=space, metric=objectives, mode=modes, sampler=sampler, points_to_evaluate=points)
