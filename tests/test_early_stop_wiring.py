"""Early stopping's wiring without a cluster: the search-file settings, the probe's attack settings, a stopped
trial as a complete Optuna observation and as a finished trial on disk, and the probe's rank agreement."""

from __future__ import annotations

import copy
import json
import math

import optuna
import pytest
from test_search_space import BASE

from distat.errors import ConfigError
from distat.search.driver import SearchSpace, trial_points
from distat.search.probe import PROBE_DIR, PROBE_FILE, probe_settings, proxy_agreement
from distat.search.searcher import build_searcher
from distat.search.space import OBJECTIVES, describe, parse_search_config
from distat.search.state import SearchState, TrialResult, finished_trials, is_finished
from distat.search.trial import record_stopped

from helpers import shared_data_dir


def _config(early_stop: dict | None = None, **changes) -> object:
    data = copy.deepcopy(BASE)
    data["trial"]["train"]["epochs"] = 3
    if early_stop is not None:
        data["search"]["early_stop"] = early_stop
    for key, value in changes.items():
        data[key] = value
    return parse_search_config(data)


def test_rungs_must_leave_epochs_to_save():
    assert _config({"rungs": [1, 2]}).search.early_stop.rungs == (1, 2)
    with pytest.raises(ConfigError, match=r"search\.early_stop\.rungs: rung 3 is not before the last epoch"):
        _config({"rungs": [1, 3]})
    params = {**BASE["params"], "epochs": {"choice": [2, 4]}}  # a searched epochs value counts too
    with pytest.raises(ConfigError, match=r"rung 2 is not before the last epoch of every trial \(epochs 2\)"):
        _config({"rungs": [2]}, params=params)
    with pytest.raises(ConfigError, match="stop_fraction"):
        _config({"rungs": [1], "stop_fraction": 1.0})
    line = describe(_config({"rungs": [1], "probe_n": 16}))
    assert "early stopping: at epoch(s) 1, a probe of 16 dev examples, 200 queries each; the bottom 0.667" in line
    assert "ranked only, never stopped" in describe(_config({"rungs": [1], "stop": False}))


def test_the_probe_is_one_recipe_on_a_small_subset_under_a_query_budget_in_process():
    data = copy.deepcopy(BASE)
    data["attack"] = {"recipes": ["pwws", {"recipe": "textfooler", "options": {"max_candidates": 7}}],
                      "objective": "textfooler", "n": 20, "actors": 2,
                      "static_sets": [{"name": "adv", "path": str(shared_data_dir() / "advglue" / "sst2.tsv")}]}
    data["search"]["early_stop"] = {"rungs": [1], "probe_n": 8, "probe_query_budget": 50}
    data["trial"]["train"]["epochs"] = 2
    att = probe_settings(parse_search_config(data))
    assert [r.key for r in att.attacks] == ["textfooler"] and att.static_sets == ()
    assert att.attacks[0].options.max_candidates == 7 and att.attacks[0].options.query_budget == 50
    assert (att.n, att.actors, att.objective) == (8, 0, "min")


def _searcher():
    s = build_searcher(SearchSpace(_config({"rungs": [1]})), list(OBJECTIVES), seed=1, clean_acc_floor=0.5)
    s.set_search_properties(None, None, {})
    return s


def test_a_stopped_trial_is_a_complete_observation_of_its_rung_values():
    s = _searcher()
    assert s.suggest("full") is not None and s.suggest("stopped") is not None
    s.on_trial_complete("full", {"clean_acc": 0.8, "robust_acc": 0.3, "epoch": 3.0, "probe_robust_acc": 0.4})
    # what Tune hands the searcher for a trial its scheduler stopped: the rung epoch's result
    s.on_trial_complete("stopped", {"clean_acc": 0.6, "probe_robust_acc": 0.1, "epoch": 1.0, "done": True})
    full, stopped = s._ot_study.get_trials()
    assert full.state == stopped.state == optuna.trial.TrialState.COMPLETE
    assert full.values == [0.8, 0.3] and "early_stopped_epoch" not in full.user_attrs
    assert stopped.values == [0.6, 0.1] and stopped.user_attrs["early_stopped_epoch"] == 1.0
    assert stopped.system_attrs["constraints"] == (0.0,)  # judged by the floor like any trial
    # an errored trial stays what it was, even with a probe in its last result
    assert s.suggest("broken") is not None
    s.on_trial_complete("broken", {"clean_acc": 0.6, "probe_robust_acc": 0.1, "epoch": 1.0}, error=True)
    broken = s._ot_study.get_trials()[2]
    assert broken.state != optuna.trial.TrialState.COMPLETE and "early_stopped_epoch" not in broken.user_attrs


def _search_dir(tmp_path, scfg):
    folder = tmp_path / "s"
    folder.mkdir()
    state = SearchState(search=scfg, search_dir=str(folder), cache_dir=str(tmp_path), tracking_uri="sqlite:///x.db")
    state.save()
    return state


def _finished(state, trial_id, clean, robust, probe):
    out = state.trial_dir(trial_id)
    (out / PROBE_DIR / "epoch_001").mkdir(parents=True)
    (out / PROBE_DIR / "epoch_001" / PROBE_FILE).write_text(json.dumps({"epoch": 1, "probe_robust_acc": probe}))
    TrialResult(trial_id=trial_id, params={"method": "pgd", "adv_lr": 0.05, "adv_steps": 1},
                metrics={"clean_acc": clean, "robust_acc": robust}, train={}, train_wall=(0.0, 1.0),
                placement={}).save(out)


def test_a_stopped_trial_is_finished_on_disk_off_the_front_and_agreement_is_measured(tmp_path):
    state = _search_dir(tmp_path, _config({"rungs": [1]}))
    for i, (clean, robust, probe) in enumerate([(0.80, 0.30, 0.35), (0.75, 0.40, 0.50), (0.70, 0.20, 0.25)]):
        _finished(state, f"t{i}", clean, robust, probe)
    state.trial_dir("dead").mkdir(parents=True)
    record_stopped(state, "dead", {"method": "pgd", "adv_lr": 0.05, "adv_steps": 1},
                   {"clean_acc": 0.5, "probe_robust_acc": 0.0, "probe_threat_spec_hash": "abc", "epoch": 1,
                    "time_probe_s": 3.0, "done": True}, 1)
    assert is_finished(state.trial_dir("dead"))  # `distat resume` will not run it again
    result = finished_trials(state.dir)["dead"]
    assert result.metrics["early_stopped_epoch"] == 1.0 and "robust_acc" not in result.metrics
    assert result.metrics["probe_threat_spec_hash"] == "abc" and result.params["adv_lr"] == 0.05
    point = next(p for p in trial_points(state.dir, 0.1, state.search) if p.trial_id == "dead")
    assert math.isnan(point.robust_acc) and not point.valid and point.extra["early_stopped_epoch"] == 1.0
    agreement = proxy_agreement(state.dir)
    assert agreement.stopped == ("dead",) and agreement.n == 3 and agreement.rho == pytest.approx(1.0)
    assert agreement.summary() == ("early stopping: 1 trial(s) stopped at a rung (dead); the probe's ranking vs the "
                                   "full robust evaluation's: Spearman +1.00 over 3 trial(s) evaluated both ways")


def test_the_probe_leaves_the_training_random_state_as_it_was():
    import random

    import numpy as np
    import torch

    from distat.search.probe import random_state_kept

    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    with random_state_kept():  # what an attack does to the global generators
        torch.manual_seed(0)
        np.random.seed(0)
        random.seed(0)
        torch.rand(10)
    after = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(after[0], expected[0]) and np.array_equal(after[1], expected[1]) and after[2] == expected[2]
