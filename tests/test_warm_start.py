"""Warm start without a cluster: which of an old search's finished trials fit a new search (its space and its
threat model), and how they reach the new searcher's study as complete observations."""

from __future__ import annotations

import copy
from pathlib import Path

import optuna
import pytest
from test_search_space import ADAPTIVE, BASE

from distat.errors import DistatError
from distat.search.driver import SearchSpace
from distat.search.searcher import build_searcher
from distat.search.space import OBJECTIVES, parse_search_config
from distat.search.state import SearchState, TrialResult
from distat.search.warm_start import check_source, collect, space_point


def _config(params: dict | None = None, **search) -> object:
    data = copy.deepcopy(BASE)
    if params is not None:
        data["params"] = params
    data["search"].update(search)
    return parse_search_config(data)


def _old_search(folder: Path, trials: dict[str, tuple[dict, dict]]) -> Path:
    """A finished search folder: its state and one final.json per trial (params, metrics)."""
    scfg = _config()
    folder.mkdir(parents=True)
    SearchState(search=scfg, search_dir=str(folder), cache_dir=str(folder / "cache"),
                tracking_uri="sqlite:///unused.db").save()
    for trial_id, (params, metrics) in trials.items():
        out = folder / "trials" / trial_id
        out.mkdir(parents=True)
        TrialResult(trial_id=trial_id, params=params, metrics=metrics, train={}, train_wall=(0.0, 1.0),
                    placement={}).save(out)
    return folder


def _metrics(clean: float, robust: float, spec: str = "aaaa", **more: object) -> dict:
    return {"clean_acc": clean, "robust_acc": robust, "threat_spec_hash": spec, **more}


def test_space_point_checks_ranges_choices_and_conditions():
    scfg = _config()
    params, dists = space_point(scfg, {"method": "pgd", "adv_lr": 0.05, "adv_steps": 2})
    assert params == {"method": "pgd", "adv_lr": 0.05, "adv_steps": 2}
    assert isinstance(dists["adv_lr"], optuna.distributions.FloatDistribution) and dists["adv_lr"].log
    adaptive = {"method": ADAPTIVE[0], "adv_lr": 0.05, "adv_steps": 2, "beta": 2.0, "w_lr": 1.0}
    assert set(space_point(scfg, adaptive)[1]) == set(adaptive)  # the conditional ones apply to adaptive AT

    assert space_point(scfg, {"method": "pgd", "adv_lr": 0.5, "adv_steps": 2}) == "adv_lr = 0.5 outside [0.01, 0.1]"
    assert "method = 'smart' outside choices" in space_point(scfg, {"method": "smart", "adv_lr": 0.05, "adv_steps": 2})
    assert space_point(scfg, {"method": "pgd", "adv_lr": 0.05, "adv_steps": 2, "alpha": 1}) == \
        "parameter(s) alpha not searched here"
    assert "adv_steps" in space_point(scfg, {"method": "pgd", "adv_lr": 0.05})  # one the space needs is missing
    assert space_point(scfg, {"method": "pgd", "adv_lr": 0.05, "adv_steps": 2, "beta": 2.0}) == \
        "parameter(s) beta do not apply here to these values"  # beta is searched for adaptive AT only


def test_collect_uses_only_trials_of_the_same_threat_model_and_space(tmp_path):
    ok = {"method": "pgd", "adv_lr": 0.02, "adv_steps": 1}
    old = _old_search(tmp_path / "old", {
        "t1": (ok, _metrics(0.8, 0.3)),
        "t2": ({**ok, "adv_lr": 0.3}, _metrics(0.7, 0.4)),
        "t3": (ok, _metrics(0.75, 0.35, spec="bbbb")),
        "t4": (ok, _metrics(0.5, 0.0, diverged=1.0)),
        "t5": (ok, {"clean_acc": 0.8, "threat_spec_hash": "aaaa"}),
    })
    warm = collect(old, _config(), "aaaa")
    assert [p.trial_id for p in warm.used] == ["t1"]
    assert warm.used[0].values == (0.8, 0.3) and warm.used[0].params == ok
    assert warm.left_out == {
        "t2": "adv_lr = 0.3 outside [0.01, 0.1]",
        "t3": "another threat model (spec bbbb, this search's aaaa)",
        "t4": "diverged",
        "t5": "no robust_acc",
    }
    line = warm.summary()
    assert line.startswith(f"warm start from {old}: 1 of 5 finished trial(s) used; left out: t2: adv_lr")
    assert "t3: another threat model" in line


def test_collect_refuses_a_folder_that_is_not_a_search(tmp_path):
    with pytest.raises(DistatError, match="not a distat search directory"):
        collect(tmp_path, _config(), "aaaa")
    with pytest.raises(DistatError, match="this search's own folder"):
        check_source(tmp_path, tmp_path)


@pytest.mark.parametrize("floor", [None, 0.65])
def test_priors_are_complete_observations_the_sampler_learns_from(tmp_path, floor):
    scfg = _config()
    old = _old_search(tmp_path / "old", {f"t{i}": ({"method": "pgd", "adv_lr": lr, "adv_steps": 1},
                                                   _metrics(clean, robust))
                                         for i, (lr, clean, robust) in enumerate([(0.01, 0.9, 0.1), (0.02, 0.6, 0.5),
                                                                                  (0.09, 0.8, 0.3)])})
    warm = collect(old, scfg, "aaaa")
    searcher = build_searcher(SearchSpace(scfg), list(OBJECTIVES), seed=1, clean_acc_floor=floor)
    for prior in warm.used:
        searcher.add_prior(prior)
    searcher.set_search_properties(None, None, {})
    trials = searcher._ot_study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert [t.values for t in trials] == [[0.9, 0.1], [0.6, 0.5], [0.8, 0.3]]
    assert [t.user_attrs["warm_start"] for t in trials] == [str(old / "trials" / f"t{i}") for i in range(3)]
    assert [t.user_attrs["clean_acc"] for t in trials] == [0.9, 0.6, 0.8]
    constraints = [t.system_attrs.get("constraints") for t in trials]
    if floor is None:
        assert constraints == [None] * 3
    else:  # the 0.6-clean trial is below the floor, as the study would have judged it
        assert constraints[0] == (0.0,) and constraints[1] == (pytest.approx(0.05),) and constraints[2] == (0.0,)
    # the searcher goes on from them: its next trial is number 3 of the same study
    config = searcher.suggest("new")
    assert config is not None and searcher._ot_trials["new"].number == 3
