"""Multi-objective early stopping (distat.search.early_stop): non-dominated sorting, crowding distance, Spearman,
the rung book's asynchronous successive halving, and the Ray Tune scheduler over it (called directly with
stand-in trials; one slow test runs it under a real Tune loop)."""

from __future__ import annotations

import logging
import math
import pickle
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from distat.search.early_stop import (
    EarlyStopSettings,
    MOSuccessiveHalving,
    RungBook,
    RungBookKeeper,
    constrained_ranks,
    crowding_distances,
    dominates,
    nondominated_ranks,
    order_at_rung,
    rank_agreement,
    spearman,
)

NAN = math.nan
INF = math.inf

#: The issue's toy search: B is dominated by A (and by D); A, C and D are mutually non-dominated.
TOY = {"A": (0.80, 0.30), "B": (0.70, 0.20), "C": (0.60, 0.40), "D": (0.85, 0.25)}
METRICS = ("clean_acc", "probe_robust_acc")


def _book(**kw):
    return RungBook(EarlyStopSettings(**{"rungs": (1,), **kw}))


# --- settings -----------------------------------------------------------------------------------------------

def test_settings_defaults_and_yaml_lists():
    s = EarlyStopSettings.model_validate({"rungs": [1, 3]})
    assert s.rungs == (1, 3)
    assert (s.stop_fraction, s.min_compared, s.probe_n, s.probe_query_budget, s.probe_seed) == (2 / 3, 2, 32, 200, 0)
    assert EarlyStopSettings(rungs=(2,), probe_query_budget=None).probe_query_budget is None


@pytest.mark.parametrize(("data", "fragment"), [
    ({}, "Field required"),
    ({"rungs": []}, "at least one epoch"),
    ({"rungs": [2, 2]}, "strictly increasing"),
    ({"rungs": [3, 1]}, "strictly increasing"),
    ({"rungs": [0]}, "greater than or equal to 1"),
    ({"rungs": [1.5]}, "valid integer"),
    ({"rungs": [1], "stop_fraction": 1.0}, "less than 1"),
    ({"rungs": [1], "stop_fraction": 0}, "greater than 0"),
    ({"rungs": [1], "min_compared": 1}, "greater than or equal to 2"),
    ({"rungs": [1], "probe_n": 0}, "greater than or equal to 1"),
    ({"rungs": [1], "probe_query_budget": 0}, "greater than or equal to 1"),
    ({"rungs": [1], "probe_seed": -1}, "greater than or equal to 0"),
    ({"rungs": [1], "stop_fraktion": 0.5}, "Extra inputs are not permitted"),
])
def test_settings_reject_bad_values_with_one_clear_message(data, fragment):
    with pytest.raises(ValidationError) as err:
        EarlyStopSettings.model_validate(data)
    messages = [e["msg"] for e in err.value.errors()]
    assert len(messages) == 1 and fragment in messages[0] and "\n" not in messages[0]


def test_settings_are_frozen():
    s = EarlyStopSettings(rungs=(1,))
    with pytest.raises(ValidationError):
        s.stop_fraction = 0.9


# --- non-dominated sorting ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("values", "ranks"), [
    ([], []),
    ([(0.5, 0.5)], [0]),
    ([(1, 1), (0, 0), (1, 0), (0, 1), (0.5, 0.5)], [0, 2, 1, 1, 1]),
    ([(1, 1), (3, 3), (2, 2)], [2, 0, 1]),  # a chain, shuffled
    ([(1, 1), (1, 1)], [0, 0]),  # equal points do not dominate each other
    ([(1, 0.5), (1, 0.4)], [0, 1]),  # equal on one objective, better on the other: dominates
    ([(1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 0, 0)], [0, 0, 0, 1]),  # three objectives
    ([(NAN, 0.5), (0.1, 0.5)], [1, 0]),  # NaN is the worst value
    ([(NAN, 0.9), (0.5, 0.1)], [0, 0]),  # ... but better on the other objective is still not dominated
    ([(NAN, NAN), (NAN, NAN)], [0, 0]),
])
def test_nondominated_ranks(values, ranks):
    assert nondominated_ranks(values) == ranks


def test_dominates_is_strict_and_maximising():
    assert dominates((0.8, 0.3), (0.7, 0.2)) and not dominates((0.7, 0.2), (0.8, 0.3))
    assert dominates((0.8, 0.3), (0.8, 0.2)) and not dominates((0.8, 0.3), (0.8, 0.3))
    assert dominates((0.0, 0.0), (NAN, 0.0))


def test_mixed_numbers_of_objectives_are_an_error():
    with pytest.raises(ValueError, match="same number of objectives"):
        nondominated_ranks([(1, 2), (1, 2, 3)])


# --- crowding distance ----------------------------------------------------------------------------------------

def test_crowding_distance_per_front_with_infinite_boundaries():
    values = [(0, 1), (0.25, 0.75), (0.5, 0.5), (1, 0),  # front 0, range 1 on both objectives
              (0, 0.5), (0.1, 0.4), (0.2, 0.3)]  # front 1, range 0.2 on both: normalised by its own range
    ranks = nondominated_ranks(values)
    assert ranks == [0, 0, 0, 0, 1, 1, 1]
    got = crowding_distances(values, ranks)
    # (0.25, 0.75): (0.5 - 0) / 1 + (1 - 0.5) / 1; (0.5, 0.5): (1 - 0.25) / 1 + (0.75 - 0) / 1
    # (0.1, 0.4): (0.2 - 0) / 0.2 + (0.5 - 0.3) / 0.2
    assert got == pytest.approx([INF, 1.0, 1.5, INF, INF, 2.0, INF])


def test_crowding_small_fronts_are_all_boundary_and_constant_objectives_add_nothing():
    assert crowding_distances([(1, 1)], [0]) == [INF]
    assert crowding_distances([(1, 0), (0, 1)], [0, 0]) == [INF, INF]
    values = [(0, 1, 5), (0.5, 0.5, 5), (1, 0, 5)]  # one front; the third objective is constant
    assert crowding_distances(values, nondominated_ranks(values)) == pytest.approx([INF, 2.0, INF])


def test_crowding_nan_is_a_boundary_and_does_not_inflate_its_neighbour():
    values = [(NAN, 0.9), (0.2, 0.6), (0.4, 0.4), (0.8, 0.1)]  # one front
    ranks = nondominated_ranks(values)
    assert ranks == [0, 0, 0, 0]
    got = crowding_distances(values, ranks)
    # objective 1, finite range 0.6: (0.2): (0.4 - 0.2 [NaN counts as the finite minimum]) / 0.6;
    # (0.4): (0.8 - 0.2) / 0.6. Objective 2, range 0.8: (0.6): (0.9 - 0.4) / 0.8; (0.4): (0.6 - 0.1) / 0.8
    assert got[0] == INF and got[3] == INF
    assert got[1] == pytest.approx(0.2 / 0.6 + 0.5 / 0.8)
    assert got[2] == pytest.approx(0.6 / 0.6 + 0.5 / 0.8)


def test_order_at_rung_is_front_then_crowding_then_index():
    assert order_at_rung(list(TOY.values())) == [2, 3, 0, 1]  # C, D (boundaries, by index), A, then B (front 1)
    assert order_at_rung([(0.5, 0.5), (0.5, 0.5)]) == [0, 1]
    assert order_at_rung([(0.1, 0.1), (0.9, 0.1), (0.1, 0.9)]) == [1, 2, 0]


# --- Spearman -------------------------------------------------------------------------------------------------

def test_spearman_perfect_agreement_and_disagreement():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [1, 4, 9]) == pytest.approx(1.0)  # monotone, not linear
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_spearman_hand_computed():
    # no ties: d = (-1, 1, -1, 1, 0), 1 - 6 * 4 / (5 * 24) = 0.8
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    # ties: ranks (1, 2.5, 2.5, 4) vs (1, 2, 3, 4): cov 4.5, variances 4.5 and 5 -> 4.5 / sqrt(22.5) = sqrt(0.9)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(math.sqrt(0.9))
    # the plain 1 - 6 Σd² / (n (n² - 1)) formula gives 0.95 here: wrong with ties
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) != pytest.approx(0.95)


def test_spearman_undefined_cases_are_nan():
    assert math.isnan(spearman([1, 2], [1, 2]))
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]))
    assert math.isnan(spearman([1, 2, NAN], [1, 2, 3]))  # two pairs left
    assert spearman([1, 2, NAN, 3], [1, 2, 0, 3]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="paired"):
        spearman([1, 2, 3], [1, 2])


def test_rank_agreement_over_trials_evaluated_both_ways():
    proxy = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 9.0}
    full = {"a": 10.0, "b": 30.0, "c": 20.0, "x": 5.0}
    rho, n = rank_agreement(proxy, full)  # ranks (1, 2, 3) vs (1, 3, 2): 1 - 6 * 2 / (3 * 8)
    assert n == 3 and rho == pytest.approx(0.5)


# --- the rung book --------------------------------------------------------------------------------------------

def test_first_arrival_continues():
    d = _book().record("A", 1, (0.1, 0.1))
    assert not d.stop and d.position is None and d.compared == 1 and "only 1" in d.reason


def test_dominated_later_arrival_is_stopped():
    book = _book()
    book.record("A", 1, (0.8, 0.3))
    d = book.record("B", 1, (0.7, 0.2))
    assert d.stop and (d.position, d.compared, d.rank) == (2, 2, 1)
    assert book.stopped == {"B": (1, (0.7, 0.2))}


def test_earlier_arrivals_are_never_revisited():
    book = _book()
    assert not book.record("B", 1, (0.7, 0.2)).stop  # alone at the rung
    d = book.record("A", 1, (0.8, 0.3))  # dominates B, but only the arriving trial is judged
    assert not d.stop and d.position == 1
    assert book.stopped == {}


def test_a_first_front_arrival_is_never_stopped():
    book = _book()
    book.record("X", 1, (0.9, 0.1))
    book.record("Y", 1, (0.1, 0.9))
    d = book.record("Z", 1, (0.5, 0.5))  # non-dominated, but least crowding: last of 3, in the bottom 1
    assert (d.position, d.compared, d.rank) == (3, 3, 0)
    assert not d.stop and "first front" in d.reason


def test_min_compared_is_respected():
    book = _book(min_compared=3)
    book.record("A", 1, (0.8, 0.3))
    assert not book.record("B", 1, (0.7, 0.2)).stop  # dominated, but only 2 of the 3 needed
    d = book.record("C", 1, (0.1, 0.1))
    assert d.stop and (d.position, d.compared) == (3, 3)
    assert set(book.stopped) == {"C"}


def test_epochs_that_are_not_rungs_are_ignored_and_rungs_are_separate():
    book = RungBook(EarlyStopSettings(rungs=(2, 4)))
    book.record("A", 1, (0.9, 0.9))
    assert not book.record("B", 1, (0.1, 0.1)).stop  # epoch 1 is not a rung
    assert not book.record("B", 3, (0.1, 0.1)).stop
    assert book.at == {2: {}, 4: {}}
    book.record("A", 2, (0.9, 0.9))
    assert not book.record("B", 4, (0.1, 0.1)).stop  # alone at rung 4: rung 2's values do not count
    assert book.record("B", 2, (0.1, 0.1)).stop


def test_stop_fraction_sets_how_many_positions_are_the_bottom():
    book = _book(stop_fraction=0.25)
    book.record("A", 1, (0.8, 0.3))
    assert not book.record("B", 1, (0.7, 0.2)).stop  # floor(0.25 * 2) = 0: nobody is in the bottom
    book.record("C", 1, (0.6, 0.1))
    d = book.record("D", 1, (0.5, 0.0))  # floor(0.25 * 4) = 1, D is last
    assert d.stop and d.position == 4
    book2 = _book(stop_fraction=0.75)
    for tid, v in [("A", (0.9, 0.9)), ("B", (0.8, 0.8)), ("C", (0.7, 0.7))]:
        book2.record(tid, 1, v)
    assert book2.record("D", 1, (0.85, 0.85)).stop  # position 2 of 4, in the bottom floor(3) = 3


def test_recording_again_replaces_values_and_judges_again():
    book = _book()
    book.record("A", 1, (0.8, 0.3))
    assert book.record("B", 1, (0.7, 0.2)).stop
    d = book.record("B", 1, (0.9, 0.4))  # e.g. resumed from a checkpoint older than the book
    assert not d.stop and book.stopped == {} and list(book.at[1]) == ["A", "B"]


def test_nan_values_are_worst_and_stopped():
    book = _book()
    book.record("A", 1, (0.5, 0.1))
    assert book.record("N", 1, (NAN, 0.1)).stop


def test_toy_search_stops_the_dominated_trial_at_the_first_rung():
    book = _book(stop_fraction=0.5, min_compared=2)
    decisions = {tid: book.record(tid, 1, values) for tid, values in TOY.items()}  # arrival order A, B, C, D
    assert {tid: d.stop for tid, d in decisions.items()} == {"A": False, "B": True, "C": False, "D": False}
    assert book.stopped == {"B": (1, TOY["B"])}
    # A: alone. B: 2nd of 2, front 1, bottom floor(1) = 1. C: 2nd of 3 (front {A, C}, both boundaries: by arrival).
    # D: 2nd of 4 (front {A, C, D}, a boundary). A is 3rd of 4 then, in the bottom 2, but is never revisited.
    assert [(d.position, d.compared, d.rank) for d in decisions.values()] == [
        (None, 1, None), (2, 2, 1), (2, 3, 0), (2, 4, 0)]
    assert order_at_rung(list(book.at[1].values())) == [2, 3, 0, 1]


@pytest.mark.parametrize("values, violations, ranks", [
    ([(0.8, 0.3), (0.5, 0.9), (0.9, 0.9)], [0.0, 0.0, 0.12], [0, 0, 1]),  # infeasible: after every feasible front
    ([(0.8, 0.3), (0.7, 0.2), (0.5, 0.9), (0.5, 0.95)], [0.0, 0.0, 0.2, 0.1], [0, 1, 3, 2]),  # then by violation
    ([(0.1, 0.1), (0.9, 0.9), (0.5, 0.5)], [0.3, 0.1, 0.1], [1, 0, 0]),  # none feasible: least violation first
    ([(0.8, 0.3), (0.7, 0.2)], None, [0, 1]),  # no constraint: plain non-dominated sorting
])
def test_constrained_ranks_put_feasible_fronts_first_then_violation_order(values, violations, ranks):
    assert constrained_ranks(values, violations) == ranks
    assert [ranks[i] for i in order_at_rung(values, violations)] == sorted(ranks)


def test_constrained_ranks_need_one_violation_per_point():
    with pytest.raises(ValueError, match="2 points but 1 violations"):
        constrained_ranks([(0.1, 0.1), (0.2, 0.2)], [0.0])


def test_a_collapsed_trial_below_the_floor_is_not_protected_by_its_high_robust_value():
    # predicting one class: robust accuracy looks high, clean accuracy is below the floor. Without the floor it
    # is on the first front (nobody dominates it) and continues; with it, it ranks last and is stopped
    plain, floored = _book(), _book()
    for book in (plain, floored):
        book.record("A", 1, (0.80, 0.30))
        book.record("B", 1, (0.82, 0.25))
    assert not plain.record("C", 1, (0.53, 0.50)).stop
    d = floored.record("C", 1, (0.53, 0.50), violation=0.12)
    assert d.stop and (d.position, d.rank) == (3, 1) and "0.12 below the clean floor" in d.reason
    back = RungBook.from_dict(floored.to_dict())
    assert back.violation[1] == {"A": 0.0, "B": 0.0, "C": 0.12} and back.stopped == floored.stopped
    old = floored.to_dict()
    del old["violation"]  # a book saved before constraints: every trial in it was feasible
    assert RungBook.from_dict(old).violation == {1: {}}


# --- the scheduler --------------------------------------------------------------------------------------------

def _trial(tid):
    return SimpleNamespace(trial_id=tid)


def _result(epoch, values, **extra):
    return {"epoch": epoch, METRICS[0]: values[0], METRICS[1]: values[1], "training_iteration": epoch, **extra}


def _scheduler(**kw):
    return MOSuccessiveHalving(EarlyStopSettings(**{"rungs": (1,), **kw}), METRICS)


def _run_toy(scheduler):
    return {tid: scheduler.on_trial_result(None, _trial(tid), _result(1, v)) for tid, v in TOY.items()}


def test_scheduler_toy_search_stops_only_the_dominated_trial(caplog):
    scheduler = _scheduler()
    with caplog.at_level(logging.INFO, logger="distat.search.early_stop"):
        decisions = _run_toy(scheduler)
    assert decisions == {"A": "CONTINUE", "B": "STOP", "C": "CONTINUE", "D": "CONTINUE"}
    assert scheduler.stopped_trials() == {"B": (1, TOY["B"])}
    stops = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(stops) == 1 and "trial B" in stops[0].getMessage() and "rung 1" in stops[0].getMessage()
    assert "position 2 of 2" in stops[0].getMessage()


def test_scheduler_reads_the_floor_and_does_not_judge_a_stopped_trials_final_result_again():
    told = []
    scheduler = MOSuccessiveHalving(EarlyStopSettings(rungs=(1,)), METRICS, floor=("clean_acc", 0.65),
                                    on_decision=lambda *a: told.append(a))
    assert scheduler.violation({"clean_acc": 0.53}) == pytest.approx(0.12)
    assert scheduler.violation({"clean_acc": 0.70}) == 0.0 and scheduler.violation({}) == 0.0
    scheduler.on_trial_result(None, _trial("A"), _result(1, (0.80, 0.30)))
    scheduler.on_trial_result(None, _trial("B"), _result(1, (0.82, 0.25)))
    # the trial stops itself (on_decision), so Tune is told CONTINUE
    assert scheduler.on_trial_result(None, _trial("C"), _result(1, (0.53, 0.50))) == "CONTINUE"
    assert told[-1][:3] == ("C", 1, True) and scheduler.stopped_trials() == {"C": (1, (0.53, 0.50))}
    scheduler.on_trial_result(None, _trial("D"), _result(1, (0.90, 0.40)))
    # C's final result repeats its rung result: with D at the rung it would now be judged against 4 trials
    assert scheduler.on_trial_result(None, _trial("C"), _result(1, (0.53, 0.50), phase="stopped")) == "CONTINUE"
    assert len(told) == 4 and list(scheduler.book.at[1]) == ["A", "B", "C", "D"]
    assert scheduler.stopped_trials() == {"C": (1, (0.53, 0.50))}


def test_scheduler_ignores_non_rung_results_and_results_without_both_metrics():
    scheduler = _scheduler(rungs=(2,))
    scheduler.on_trial_result(None, _trial("A"), _result(2, (0.9, 0.9)))
    dominated = (0.1, 0.1)
    assert scheduler.on_trial_result(None, _trial("B"), _result(1, dominated)) == "CONTINUE"
    assert scheduler.on_trial_result(None, _trial("B"), _result(3, dominated)) == "CONTINUE"
    assert scheduler.on_trial_result(None, _trial("B"), {"epoch": 2, "clean_acc": 0.1}) == "CONTINUE"
    assert scheduler.on_trial_result(None, _trial("B"), {"clean_acc": 0.1, "probe_robust_acc": 0.1}) == "CONTINUE"
    assert scheduler.on_trial_result(None, _trial("B"), {**_result(2, dominated), "epoch": True}) == "CONTINUE"
    assert list(scheduler.book.at[2]) == ["A"]
    assert scheduler.on_trial_result(None, _trial("B"), _result(2.0, dominated)) == "STOP"  # a float epoch is fine


def test_scheduler_ignores_tune_metric_and_mode():
    scheduler = _scheduler()
    assert scheduler.set_search_properties("robust_acc", "max", config={}) is True
    assert scheduler.set_search_properties(None, None) is True
    assert scheduler.metric is None  # so Tune's strict metric check asks results for no metric of ours
    assert not scheduler.supports_buffered_results


def test_scheduler_needs_two_distinct_metrics():
    with pytest.raises(ValueError, match="two different metrics"):
        MOSuccessiveHalving(EarlyStopSettings(rungs=(1,)), ("clean_acc", "clean_acc"))
    with pytest.raises(ValueError, match="two different metrics"):
        MOSuccessiveHalving(EarlyStopSettings(rungs=(1,)), ("clean_acc",))


@pytest.mark.parametrize("dumps,loads", [(pickle.dumps, pickle.loads), ("cloudpickle", "cloudpickle")])
def test_scheduler_pickles_with_its_book_intact(dumps, loads):
    if dumps == "cloudpickle":  # what Tune uses for tuner.pkl
        from ray import cloudpickle

        dumps, loads = cloudpickle.dumps, cloudpickle.loads
    scheduler = _scheduler()
    _run_toy(scheduler)
    back = loads(dumps(scheduler))
    assert back.book.at == scheduler.book.at and back.stopped_trials() == {"B": (1, TOY["B"])}
    assert (back.metrics, back.epoch_key, back.settings) == (scheduler.metrics, "epoch", scheduler.settings)
    # the restored book still judges: 5 at the rung, E dominated by all -> last, in the bottom 2
    assert back.on_trial_result(None, _trial("E"), _result(1, (0.1, 0.1))) == "STOP"
    fresh = _scheduler()
    assert fresh.on_trial_result(None, _trial("E"), _result(1, (0.1, 0.1))) == "CONTINUE"


def test_a_scheduler_pickled_by_an_older_distat_still_judges():
    # an older search's tuner.pkl: a scheduler without floor and on_decision, a book without violations.
    # Unpickling calls __setstate__ with the state pickled then
    scheduler = _scheduler()
    _run_toy(scheduler)
    book_state = {k: v for k, v in vars(scheduler.book).items() if k != "violation"}
    book = RungBook.__new__(RungBook)
    book.__setstate__(book_state)
    assert book.violation == {1: {}}
    old = MOSuccessiveHalving.__new__(MOSuccessiveHalving)
    old.__setstate__({k: v for k, v in vars(scheduler).items() if k not in ("floor", "on_decision")} | {"book": book})
    assert (old.floor, old.on_decision) == (None, None) and old.violation({"clean_acc": 0.1}) == 0.0
    assert old.on_trial_result(None, _trial("E"), _result(1, (0.1, 0.1))) == "STOP"
    assert old.book.violation[1]["E"] == 0.0 and RungBook.from_dict(old.book.to_dict()).stopped == old.book.stopped


def test_scheduler_save_and_restore_round_trip(tmp_path):
    scheduler = _scheduler()
    _run_toy(scheduler)
    scheduler.on_trial_result(None, _trial("N"), _result(1, (NAN, 0.9)))
    path = tmp_path / "book.json"
    scheduler.save(str(path))
    other = _scheduler()
    other.restore(str(path))
    assert list(other.book.at[1]) == ["A", "B", "C", "D", "N"]
    assert other.stopped_trials()["B"] == (1, TOY["B"])
    assert math.isnan(other.book.at[1]["N"][0])


def test_book_keeper_carries_the_book_through_tunes_callback_state():
    from ray import cloudpickle

    scheduler = _scheduler()
    keeper = RungBookKeeper(scheduler)
    _run_toy(scheduler)
    state = cloudpickle.loads(cloudpickle.dumps(keeper.get_state()))  # Tune pickles callback states
    # tuner.pkl holds the scheduler and the run config's callbacks in one pickle: identity survives
    fresh = _scheduler()
    scheduler2, keeper2 = cloudpickle.loads(cloudpickle.dumps((fresh, RungBookKeeper(fresh))))
    assert keeper2.scheduler is scheduler2 and scheduler2.stopped_trials() == {}
    keeper2.set_state(state)
    assert scheduler2.stopped_trials() == {"B": (1, TOY["B"])} and list(scheduler2.book.at[1]) == list(TOY)


# --- under a real Tune loop -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_under_tune_the_dominated_trial_ends_at_the_first_rung_and_the_searcher_gets_its_rung_result(tmp_path):
    """One trial at a time (arrival order A, B, C, D), three epochs each: B stops after epoch 1, and Tune
    hands the searcher B's epoch-1 result as the completed trial's result."""
    ray = pytest.importorskip("ray")
    from ray import tune
    from ray.tune.search import Searcher

    class Toy(Searcher):
        def __init__(self):
            super().__init__(metric=None, mode=None)
            self.names = list(TOY)
            self.completed = {}

        def suggest(self, trial_id):
            return {"name": self.names.pop(0)} if self.names else Searcher.FINISHED

        def on_trial_complete(self, trial_id, result=None, error=False):
            self.completed[result["name"]] = (result["epoch"], result[METRICS[0]], result[METRICS[1]])

    def trainable(config):
        clean, robust = TOY[config["name"]]
        for epoch in (1, 2, 3):
            tune.report({"epoch": epoch, "name": config["name"], METRICS[0]: clean, METRICS[1]: robust})

    scheduler = _scheduler()
    searcher = Toy()
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        grid = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=4,
                                        max_concurrent_trials=1),
            run_config=tune.RunConfig(storage_path=str(tmp_path), name="toy", verbose=0,
                                      callbacks=[RungBookKeeper(scheduler)]),
        ).fit()
    finally:
        ray.shutdown()
    epochs = {r.config["name"]: r.metrics["epoch"] for r in grid}
    assert epochs == {"A": 3, "B": 1, "C": 3, "D": 3}
    assert not grid.errors
    assert searcher.completed == {name: (1 if name == "B" else 3, *values) for name, values in TOY.items()}
    assert set(scheduler.stopped_trials()) == {r.metrics["trial_id"] for r in grid if r.config["name"] == "B"}
