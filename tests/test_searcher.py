"""The searcher on its own (no cluster): two objectives, the clean-accuracy floor as an Optuna constraint,
and the study's history surviving the save/restore that `distat resume` goes through."""

from __future__ import annotations

import copy

import optuna
import pytest
from test_search_space import BASE

from distat.search.driver import SearchSpace as _Space
from distat.search.searcher import Feasibility, build_searcher
from distat.search.space import OBJECTIVES


def _space():
    from distat.search.space import parse_search_config

    return _Space(parse_search_config(copy.deepcopy(BASE)))


def _searcher(floor):
    s = build_searcher(_space(), list(OBJECTIVES), seed=5, clean_acc_floor=floor)
    s.set_search_properties(None, None, {})
    return s


def _finish(searcher, trial_id, clean, robust, diverged=0.0):
    config = searcher.suggest(trial_id)
    assert config is not None
    searcher.on_trial_complete(trial_id, {"clean_acc": clean, "robust_acc": robust, "diverged": diverged})
    return config


def _constraints(searcher):
    return {t.number: t.system_attrs.get("constraints") for t in searcher._ot_study.get_trials()}


def test_floor_marks_collapsed_and_diverged_trials_infeasible():
    s = _searcher(0.65)
    _finish(s, "a", 0.80, 0.12)
    _finish(s, "collapsed", 0.60, 0.69)
    _finish(s, "blew_up", 0.70, 0.0, diverged=1.0)
    cons = _constraints(s)
    assert cons[0] == (0.0,)
    assert cons[1] == (pytest.approx(0.05),)
    assert cons[2] == (1.0,)
    attrs = [t.user_attrs for t in s._ot_study.get_trials()]
    assert attrs[1] == {"clean_acc": 0.60, "robust_acc": 0.69, "diverged": 0.0}
    assert [t.values for t in s._ot_study.get_trials()] == [[0.80, 0.12], [0.60, 0.69], [0.70, 0.0]]


def test_no_floor_no_constraint():
    s = _searcher(None)
    _finish(s, "a", 0.60, 0.69)
    assert _constraints(s) == {0: None}


def test_feasibility_reads_user_attrs():
    f = Feasibility(0.5)
    trial = optuna.trial.create_trial(values=[0.4, 0.1], user_attrs={"clean_acc": 0.4})
    assert f(trial) == (pytest.approx(0.1),)
    assert f(optuna.trial.create_trial(values=[0.7, 0.1], user_attrs={"clean_acc": 0.7})) == (0.0,)


def test_history_and_constraint_survive_save_and_restore(tmp_path):
    s = _searcher(0.65)
    configs = [_finish(s, f"t{i}", 0.6 + 0.05 * i, 0.3) for i in range(3)]
    pending = s.suggest("in_flight")
    s.save(str(tmp_path / "searcher.pkl"))

    restored = build_searcher(_space(), list(OBJECTIVES), seed=5, clean_acc_floor=0.65)
    restored.restore(str(tmp_path / "searcher.pkl"))
    trials = restored._ot_study.get_trials()
    assert len(trials) == 4  # three finished and the one in flight
    assert [t.user_attrs["clean_acc"] for t in trials[:3]] == [0.6, 0.65, 0.7]
    assert all(c["method"] == t.params["method"] for c, t in zip(configs, trials, strict=False))
    assert [t.values for t in trials[:3]] == [[0.6, 0.3], [0.65, 0.3], [0.7, 0.3]]
    assert [t.system_attrs.get("constraints") for t in trials[:3]] == [(pytest.approx(0.05),), (0.0,), (0.0,)]
    # the in-flight trial is still open and completes into the same study, with no duplicate
    assert pending is not None
    restored.on_trial_complete("in_flight", {"clean_acc": 0.9, "robust_acc": 0.5, "diverged": 0.0})
    done = [t for t in restored._ot_study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4
    assert done[-1].values == [0.9, 0.5]
    # the sampler still carries the constraint after unpickling
    assert isinstance(restored._ot_study.sampler._constraints_func, Feasibility)
