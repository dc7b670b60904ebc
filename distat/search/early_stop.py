"""Multi-objective early stopping: asynchronous successive halving over two maximised objectives.

At each *rung* (an epoch listed in :attr:`EarlyStopSettings.rungs`) a running trial reports a cheap proxy of
both objectives (its clean accuracy and a robust accuracy on a small seeded probe subset under a query
budget). The trial is compared with every trial that has reached the same rung so far and is stopped if it
falls in the bottom ``stop_fraction`` of them, in the spirit of MO-ASHA (Schmucker et al., 2021):

* the trials at a rung are ordered by non-dominated sorting (:func:`nondominated_ranks`), ties within a front
  broken by NSGA-II crowding distance (:func:`crowding_distances`), then by arrival (:func:`order_at_rung`);
* asynchronous: only the arriving trial is judged, as soon as it arrives; a trial is never revisited when
  later arrivals push it down, and nobody waits for a rung to fill. The first ``min_compared - 1`` arrivals at
  a rung always continue;
* a trial on the first front (non-dominated at its rung) is never stopped, whatever its position;
* with a constraint (the search's clean-accuracy floor), domination is constrained (:func:`constrained_ranks`):
  a trial below the floor at its rung ranks after every trial above it, so a model collapsed to one class,
  whose "robust" accuracy looks high, is not on the first front.

Everything but :class:`MOSuccessiveHalving` and :class:`RungBookKeeper` is pure: :class:`RungBook` is plain,
picklable data, and the functions take value tuples. :class:`MOSuccessiveHalving` is the Ray Tune
``TrialScheduler`` over a :class:`RungBook`. Tune (2.60) never saves or restores a scheduler's state in its
experiment snapshot (``TuneController.save_to_dir`` saves the searcher and the callbacks only), so
:class:`RungBookKeeper` is a Tune callback that carries the book through the snapshot: put it in the run
config's callbacks beside the scheduler it keeps.

A trial stopped here is not a failure and not a pruned trial: its last reported result (the rung's) is its
final result, and :meth:`MOSuccessiveHalving.stopped_trials` says which trials ended at which rung with which
values, for the searcher to record the rung on the Optuna trial (the trial writes that final result itself:
:func:`distat.search.trial.record_stopped`). :func:`rank_agreement` measures, before the
proxy is trusted, how well its ranking agrees with the full evaluation's over the trials evaluated both ways.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from distat.search.space import EarlyStopSettings

__all__ = [
    "Decision",
    "EarlyStopSettings",
    "MOSuccessiveHalving",
    "RungBook",
    "RungBookKeeper",
    "crowding_distances",
    "dominates",
    "nondominated_ranks",
    "constrained_ranks",
    "order_at_rung",
    "rank_agreement",
    "spearman",
]

log = logging.getLogger(__name__)

Values = tuple[float, ...]


# --- pure functions: every objective is maximised; NaN counts as the worst value ---------------------------

def _clean(values: Sequence[Sequence[float]]) -> list[Values]:
    """The value tuples as floats with NaN replaced by -inf (worst); all of one length."""
    out = [tuple(-math.inf if math.isnan(float(v)) else float(v) for v in point) for point in values]
    if out and any(len(p) != len(out[0]) for p in out):
        lengths = sorted({len(p) for p in out})
        raise ValueError(f"every point needs the same number of objectives, got lengths {lengths}")
    return out


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether ``a`` Pareto-dominates ``b`` (maximising): no worse on every objective, better on one."""
    return _dom(*_clean([a, b]))


def nondominated_ranks(values: Sequence[Sequence[float]]) -> list[int]:
    """The front of each point: 0 for the non-dominated ones, 1 for those dominated only by front 0, ...

    Fast non-dominated sorting (Deb et al., NSGA-II): O(M N²) comparisons for N points of M objectives.
    """
    points = _clean(values)
    n = len(points)
    dominated_by_me: list[list[int]] = [[] for _ in range(n)]
    dominating_me = [0] * n
    for i in range(n):
        for j in range(i + 1, n):
            if _dom(points[i], points[j]):
                dominated_by_me[i].append(j)
                dominating_me[j] += 1
            elif _dom(points[j], points[i]):
                dominated_by_me[j].append(i)
                dominating_me[i] += 1
    ranks = [0] * n
    front = [i for i in range(n) if dominating_me[i] == 0]
    rank = 0
    while front:
        following = []
        for i in front:
            ranks[i] = rank
            for j in dominated_by_me[i]:
                dominating_me[j] -= 1
                if dominating_me[j] == 0:
                    following.append(j)
        front = following
        rank += 1
    return ranks


def _dom(a: Values, b: Values) -> bool:
    return all(x >= y for x, y in zip(a, b, strict=True)) and any(x > y for x, y in zip(a, b, strict=True))


def crowding_distances(values: Sequence[Sequence[float]], ranks: Sequence[int]) -> list[float]:
    """NSGA-II crowding distance of each point within its own front (``ranks`` from :func:`nondominated_ranks`).

    Per objective, a front's points are sorted by that objective; the two extreme points get an infinite
    distance, every other point adds the gap between its two neighbours divided by the front's range on
    that objective (an objective on which the front is constant adds nothing). A NaN value is the front's
    minimum on its objective (so an extreme point); in gaps it counts as the smallest finite value there, so
    it does not make its neighbour look isolated.
    """
    points = _clean(values)
    if len(ranks) != len(points):
        raise ValueError(f"{len(points)} points but {len(ranks)} ranks")
    distances = [0.0] * len(points)
    for rank in set(ranks):
        members = [i for i, r in enumerate(ranks) if r == rank]
        for m in range(len(points[members[0]])):
            finite = [points[i][m] for i in members if math.isfinite(points[i][m])]
            ordered = sorted(members, key=lambda i, m=m: (points[i][m], i))
            distances[ordered[0]] = distances[ordered[-1]] = math.inf
            if len(finite) < 2 or max(finite) == min(finite):
                continue
            low, span = min(finite), max(finite) - min(finite)
            for before, here, after in zip(ordered, ordered[1:], ordered[2:], strict=False):
                gap = max(points[after][m], low) - max(points[before][m], low)
                distances[here] += gap / span
    return distances


def constrained_ranks(values: Sequence[Sequence[float]], violations: Sequence[float] | None = None) -> list[int]:
    """The front of each point under constrained domination (Deb, 2000; NSGA-II's constraint handling, as in
    Optuna's constrained samplers): a feasible point (violation ≤ 0) is better than every infeasible one, the
    feasible points are sorted into fronts by :func:`nondominated_ranks`, and the infeasible ones come after
    them, in order of increasing violation (equal violations share a front). Without ``violations`` every
    point is feasible."""
    if violations is None:
        return nondominated_ranks(values)
    if len(violations) != len(values):
        raise ValueError(f"{len(values)} points but {len(violations)} violations")
    # DEVIATION: MO-ASHA ranks every trial by its objectives alone; distat's search has a constraint (the clean
    # floor, an Optuna constraint too), and a model collapsed to one class below it has a high "robust" accuracy
    # that would put it on the first front. Constrained domination is how NSGA-II and Optuna handle constraints.
    feasible = [i for i, v in enumerate(violations) if not v > 0.0]
    ranks = [0] * len(values)
    for i, r in zip(feasible, nondominated_ranks([values[i] for i in feasible]), strict=True):
        ranks[i] = r
    after = max((ranks[i] for i in feasible), default=-1) + 1
    levels = sorted({float(v) for v in violations if v > 0.0})
    for i, v in enumerate(violations):
        if v > 0.0:
            ranks[i] = after + levels.index(float(v))
    return ranks


def order_at_rung(values: Sequence[Sequence[float]], violations: Sequence[float] | None = None) -> list[int]:
    """Indices of the points best first: by front (:func:`constrained_ranks`), then by crowding distance
    (larger first), then by index."""
    ranks = constrained_ranks(values, violations)
    return _best_first(ranks, crowding_distances(values, ranks))


def _best_first(ranks: Sequence[int], crowding: Sequence[float]) -> list[int]:
    return sorted(range(len(ranks)), key=lambda i: (ranks[i], -crowding[i], i))


def _average_ranks(xs: Sequence[float]) -> list[float]:
    """1-based ranks of ``xs`` ascending, tied values sharing the mean of the ranks they span."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and xs[order[end + 1]] == xs[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation of paired samples (ties get average ranks; the Pearson correlation of the
    ranks). Pairs with a NaN on either side are left out; NaN when fewer than 3 pairs remain or when one side
    is constant."""
    if len(a) != len(b):
        raise ValueError(f"spearman needs paired samples, got {len(a)} and {len(b)} values")
    pairs = [(float(x), float(y)) for x, y in zip(a, b, strict=True) if not (math.isnan(x) or math.isnan(y))]
    if len(pairs) < 3:
        return math.nan
    ra = _average_ranks([x for x, _ in pairs])
    rb = _average_ranks([y for _, y in pairs])
    mean = (len(pairs) + 1) / 2  # the mean of average ranks is always (n + 1) / 2
    cov = sum((x - mean) * (y - mean) for x, y in zip(ra, rb, strict=True))
    var_a = sum((x - mean) ** 2 for x in ra)
    var_b = sum((y - mean) ** 2 for y in rb)
    if var_a == 0 or var_b == 0:
        return math.nan
    return cov / math.sqrt(var_a * var_b)


def rank_agreement(proxy: Mapping[str, float], full: Mapping[str, float]) -> tuple[float, int]:
    """How well the proxy's ranking of trials agrees with the full evaluation's: Spearman's ρ over the trials
    (keys) present in both mappings with a value on both sides, and how many trials that is."""
    shared = [t for t in proxy if t in full and not (math.isnan(proxy[t]) or math.isnan(full[t]))]
    return spearman([proxy[t] for t in shared], [full[t] for t in shared]), len(shared)


# --- the scheduler's memory ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Decision:
    """What :meth:`RungBook.record` decided for one trial at one epoch, and why.

    ``position`` is 1-based among ``compared`` trials at the rung (None when the trial was not judged);
    ``rank`` is its front (0 = non-dominated) and ``crowding`` its crowding distance within that front.
    """

    trial_id: str
    epoch: int
    stop: bool
    reason: str
    compared: int = 0
    position: int | None = None
    rank: int | None = None
    crowding: float | None = None


class RungBook:
    """Which trials reached which rung with which values, and which of them were stopped there.

    ``at[rung]`` maps trial id → values in arrival order (arrival breaks the last ties of the ordering);
    ``violation[rung]`` maps trial id → how far it was outside the constraint there (0: feasible);
    ``stopped`` maps trial id → (rung, values) for every trial stopped. A trial recorded again at a rung it
    already reached (a trial resumed from a checkpoint older than the book) replaces its values there,
    keeps its arrival place, and is judged again.
    """

    def __init__(self, settings: EarlyStopSettings) -> None:
        self.settings = settings
        self.at: dict[int, dict[str, Values]] = {rung: {} for rung in settings.rungs}
        self.violation: dict[int, dict[str, float]] = {rung: {} for rung in settings.rungs}
        self.stopped: dict[str, tuple[int, Values]] = {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a book pickled before constraints (an older search's tuner.pkl) has no violations: all feasible
        self.__dict__.update(state)
        if "violation" not in state:
            self.violation = {rung: {} for rung in self.at}

    def record(self, trial_id: str, rung_epoch: int, values: Sequence[float], violation: float = 0.0) -> Decision:
        """Record ``trial_id``'s values at ``rung_epoch`` (and its constraint ``violation``, 0 when feasible)
        and decide whether it stops there.

        Not a rung: continue, nothing recorded. Fewer than ``min_compared`` trials at the rung (this one
        included): continue. Otherwise the rung's trials are ordered by :func:`order_at_rung`; the trial
        stops when its position is among the last ``floor(stop_fraction * n)`` of the ``n``, unless it is
        on the first front.
        """
        if rung_epoch not in self.at:
            return Decision(trial_id, rung_epoch, False, f"epoch {rung_epoch} is not a rung")
        point = tuple(float(v) for v in values)
        rung = self.at[rung_epoch]
        if rung and len(point) != len(next(iter(rung.values()))):
            raise ValueError(f"trial {trial_id} reported {len(point)} values at rung {rung_epoch}, "
                             f"the others {len(next(iter(rung.values())))}")
        rung[trial_id] = point
        violations = self.violation.setdefault(rung_epoch, {})
        violations[trial_id] = max(float(violation), 0.0) if math.isfinite(float(violation)) else math.inf
        self.stopped.pop(trial_id, None)
        n = len(rung)
        if n < self.settings.min_compared:
            return Decision(trial_id, rung_epoch, False, f"only {n} of the {self.settings.min_compared} trials "
                            f"needed have reached rung {rung_epoch}", compared=n)
        ids = list(rung)
        points = [rung[t] for t in ids]
        outside = [violations.get(t, 0.0) for t in ids]
        ranks = constrained_ranks(points, outside)
        crowding = crowding_distances(points, ranks)
        order = _best_first(ranks, crowding)  # order_at_rung, from the ranks and crowding already computed
        me = ids.index(trial_id)
        position = order.index(me) + 1
        cut = math.floor(self.settings.stop_fraction * n + 1e-9)  # 0.29 * 100 is 28.999999999999996
        in_bottom = position > n - cut
        # DEVIATION: MO-ASHA (Syne Tune's MOASHA) stops any arrival outside the top 1/η of its rung; here a trial
        # on the rung's first front is never stopped. With the few trials of a search, the front at a rung is a
        # large share of it, and stopping a non-dominated trial on crowding alone can remove a point of the final
        # front (the hypervolume the issue asks to keep).
        would_stop = in_bottom and ranks[me] != 0
        stop = would_stop and self.settings.stop
        below = f", {outside[me]:.3g} below the clean floor" if outside[me] > 0 else ""
        where = (f"position {position} of {n} at rung {rung_epoch} (front {ranks[me]}, crowding {crowding[me]:.3g}"
                 f"{below})")
        if stop:
            reason = f"{where}: in the bottom {cut}"
            self.stopped[trial_id] = (rung_epoch, point)
        elif would_stop:
            reason = f"{where}: in the bottom {cut}, not stopped (early_stop.stop: false)"
        elif in_bottom:
            reason = f"{where}: in the bottom {cut} but on the first front"
        else:
            reason = f"{where}: above the bottom {cut}"
        return Decision(trial_id, rung_epoch, stop, reason, compared=n, position=position, rank=ranks[me],
                        crowding=crowding[me])

    def to_dict(self) -> dict[str, Any]:
        """The book as JSON-able data (settings included); :meth:`from_dict` reads it back."""
        return {"settings": self.settings.model_dump(mode="json"),
                "at": {str(rung): {t: list(v) for t, v in trials.items()} for rung, trials in self.at.items()},
                "violation": {str(rung): dict(trials) for rung, trials in self.violation.items()},
                "stopped": {t: [rung, list(v)] for t, (rung, v) in self.stopped.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RungBook:
        book = cls(EarlyStopSettings.model_validate(data["settings"]))
        for rung, trials in data["at"].items():
            book.at.setdefault(int(rung), {}).update({t: tuple(map(float, v)) for t, v in trials.items()})
        for rung, trials in data.get("violation", {}).items():  # a book saved before constraints: all feasible
            book.violation.setdefault(int(rung), {}).update({t: float(v) for t, v in trials.items()})
        book.stopped = {t: (int(rung), tuple(map(float, v))) for t, (rung, v) in data["stopped"].items()}
        return book


# --- Ray Tune -------------------------------------------------------------------------------------------------

class MOSuccessiveHalving(FIFOScheduler):
    """Ray Tune scheduler: asynchronous multi-objective successive halving over the rungs of ``settings``.

    Trials start in submission order (FIFO). Each result whose ``epoch_key`` is a rung epoch and which holds
    both ``metrics`` goes to :meth:`RungBook.record`; its decision becomes ``STOP`` or ``CONTINUE``. Every
    other result continues. Tune's single-objective ``metric`` / ``mode`` are not used
    (:meth:`set_search_properties` accepts and ignores them). Results are not buffered: a trial is judged on
    the result of the rung epoch itself, and Tune ignores any result after a ``STOP``, so the stopped trial's
    last result is its rung result. A trial stopped at a rung that reports that rung's result again (its final
    result, when it stops itself: ``on_decision``) is not judged again.

    ``floor`` = (metric, value): the constraint of the search (its clean-accuracy floor); a rung result below
    it is infeasible by how far it is below (:func:`constrained_ranks`).
    """

    _supports_buffered_results = False

    def __init__(self, settings: EarlyStopSettings, metrics: tuple[str, str], *, epoch_key: str = "epoch",
                 on_decision: Any = None, floor: tuple[str, float] | None = None) -> None:
        super().__init__()
        self.floor = floor
        # on_decision(trial_id, epoch, stop, reason): told every rung decision (the trial's workers wait on it)
        self.on_decision = on_decision
        metrics = tuple(metrics)
        if len(metrics) != 2 or metrics[0] == metrics[1]:
            raise ValueError(f"early stopping compares two different metrics, got {list(metrics)}")
        self.settings = settings
        self.metrics: tuple[str, str] = metrics  # type: ignore[assignment]
        self.epoch_key = epoch_key
        self.book = RungBook(settings)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a scheduler pickled before constraints or decisions files has no floor and no on_decision
        self.__dict__.update({"floor": None, "on_decision": None, **state})

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        """Accept Tune's search properties and ignore them: the compared metrics are given at construction."""
        return True

    def rung_values(self, result: Mapping[str, Any]) -> tuple[int, Values] | None:
        """(rung epoch, values of the two metrics) when ``result`` is a rung result, else None."""
        epoch = result.get(self.epoch_key)
        if isinstance(epoch, bool) or not isinstance(epoch, int | float) or epoch != int(epoch):
            return None
        if int(epoch) not in self.book.at:
            return None
        values = [result.get(m) for m in self.metrics]
        if any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
            return None
        return int(epoch), tuple(float(v) for v in values)  # type: ignore[arg-type]

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        found = self.rung_values(result)
        if found is None:
            return TrialScheduler.CONTINUE
        epoch, values = found
        if self.book.stopped.get(str(trial.trial_id), (None,))[0] == epoch:  # its final result: already judged
            return TrialScheduler.CONTINUE
        decision = self.book.record(str(trial.trial_id), epoch, values, self.violation(result))
        tell = self.on_decision
        if tell is not None:
            try:
                tell(str(trial.trial_id), decision.epoch, decision.stop, decision.reason)
            except OSError as e:  # the workers then wait out their timeout and go on
                log.warning("early stop: the decision on trial %s was not written (%s)", trial.trial_id, e)
        if decision.stop:
            log.info("early stop: trial %s stopped at rung %d, %s", trial.trial_id, decision.epoch, decision.reason)
            # told through on_decision, the trial stops itself and reports its rung result as its final one: Tune
            # stopping a function trainable that sits in a Ray Train fit leaves its actor (reused) or its Train
            # placement group (killed) behind
            return TrialScheduler.CONTINUE if tell is not None else TrialScheduler.STOP
        log.debug("early stop: trial %s continues after epoch %d, %s", trial.trial_id, decision.epoch,
                  decision.reason)
        return TrialScheduler.CONTINUE

    def violation(self, result: Mapping[str, Any]) -> float:
        """How far ``result`` is below the floor (0: at or above it, or no floor, or the metric not reported)."""
        floor = self.floor
        if floor is None:
            return 0.0
        value = result.get(floor[0])
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(float(value)):
            return 0.0
        return max(float(floor[1]) - float(value), 0.0)

    def stopped_trials(self) -> dict[str, tuple[int, Values]]:
        """Trial id → (the rung it was stopped at, its values there), for every trial stopped so far."""
        return dict(self.book.stopped)

    def debug_string(self) -> str:
        counts = ", ".join(f"{len(t)} at epoch {r}" for r, t in sorted(self.book.at.items()))
        return (f"Multi-objective successive halving on {list(self.metrics)}: {counts}; "
                f"{len(self.book.stopped)} stopped.")

    def save(self, checkpoint_path: str) -> None:
        """Write the book to ``checkpoint_path`` (JSON, atomically). Tune 2.60 itself never calls this."""
        from distat.atomic import write_json

        write_json(checkpoint_path, self.book.to_dict())

    def restore(self, checkpoint_path: str) -> None:
        """Read back a book written by :meth:`save`."""
        import json
        from pathlib import Path

        self.book = RungBook.from_dict(json.loads(Path(checkpoint_path).read_text(encoding="utf-8")))


class RungBookKeeper(Callback):
    """A Tune callback that saves ``scheduler``'s book in Tune's experiment snapshot and restores it on resume.

    Tune snapshots its callbacks' :meth:`get_state` with the searcher (``TuneController.save_to_dir``) and
    hands it back through :meth:`set_state` when ``Tuner.restore`` resumes; the scheduler itself is only
    pickled once, empty, in ``tuner.pkl``. Tune pickles the scheduler and the run config's callbacks into that
    one file, so the unpickled keeper still holds the unpickled scheduler.
    """

    def __init__(self, scheduler: MOSuccessiveHalving) -> None:
        self.scheduler = scheduler

    def get_state(self) -> dict[str, Any] | None:
        return {"rung_book": self.scheduler.book.to_dict()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.scheduler.book = RungBook.from_dict(state["rung_book"])
