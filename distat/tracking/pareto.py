"""The Pareto front of a search's trials over the clean objective (clean accuracy by default) and robust
accuracy, both maximised.

A search may maximise another clean metric instead (:data:`CLEAN_METRICS`: ``macro_f1`` or ``balanced_acc``,
for imbalanced data where the majority class alone scores a high accuracy). Its value is
:attr:`TrialPoint.clean_acc` whatever the metric (the field keeps its name: it is "the clean objective"), and
the interval keyed ``clean_acc`` is that objective's; what the metric changes is what a user reads: the table's
columns are named after it (``macro_f1``, ``macro_f1_lo``...) and the plots and tooltips use its label
(``macro-F1``). The floor that makes a trial infeasible is on clean accuracy whatever the objective, and is
worded so.

A trial is a :class:`TrialPoint`. Point ``p`` *dominates* ``q`` when ``p`` is at least as good as ``q`` in
both objectives and strictly better in at least one; the front is the set of points no other point dominates.
Consequences worth stating:

* identical points do not dominate each other, so duplicates are all on the front;
* of two points with the same clean objective only the one with the higher robust accuracy is on the front
  (and the same with the roles swapped);
* diverged trials and points whose objectives are not finite (NaN, ±inf) are never on the front and never
  dominate anything: a trial that blew up must not hide a real one;
* neither are *infeasible* trials (below the search's clean-accuracy floor): a model collapsed to the
  majority class looks "robust" (its few correct answers are hard to flip) and would otherwise sit on the
  front.

Accuracies are measured on finite samples (a few hundred dev examples, often a few dozen attacked ones), so a
point may carry a 95% :class:`Interval` (Wilson score, computed by the caller from the counts behind the
accuracy: :func:`distat.attacks.metrics.wilson_interval`) for each accuracy, keyed by metric name (the clean
objective's under ``clean_acc``, whichever metric it is; none where it has no such interval). A point off the
front is **within noise** of a front member when it has both objectives' intervals, so does the member, and its
clean interval overlaps the member's clean interval *and* its robust interval overlaps the member's robust
interval (closed intervals: touching counts). Such a trial is not shown as plainly dominated: the data cannot
tell it apart from that front member (:func:`within_noise`). A point without a count has no interval and is
never within noise: no interval is shown rather than a wrong one. Points name their AT method (``method``, the
label, e.g. ``adaptive_pgd``) next to the trial id in every artifact.

Artifacts for the parent run of a search (:func:`write_artifacts`): ``pareto.csv`` (:func:`front_table`, one
row per trial), ``pareto.png`` (matplotlib, Agg canvas, no pyplot global state) and ``pareto.html``: one
self-contained file (inline SVG, a little vanilla JavaScript, no external resource) whose points sit at their
objectives with their intervals as error bars, front points coloured and joined by the staircase of the
dominated region, within-noise points orange, dominated points grey, and a table of the front (and the trials
within noise of it) below. The SVG is complete without JavaScript (native ``<title>`` tooltips), so it
still reads in viewers that sandbox scripts; the script adds a richer hover tooltip, row/point highlighting
and a switch to hide dominated trials, and marks the root element ``data-pareto-ready="1"`` once it has run.

The **hypervolume history** (:func:`hypervolume_history`) is the hypervolume of the front of the first *i*
finished trials, for every *i*, with the fixed reference point :data:`REFERENCE` ``(0, 0)``: it never decreases,
and a flat stretch is trials that did not improve the front (dominated, diverged, infeasible, or not better than
the reference). Given the trials' finish order, :func:`write_artifacts` adds ``hypervolume_history.csv``
(``step, trial_id, hypervolume``), ``hypervolume_history.png`` (a step plot) and ``hypervolume_history.html``
(self-contained, inline SVG and a table of every step), so a user sees when the search stopped improving.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from distat.atomic import atomic_file, write_text
from distat.dicts import flatten

__all__ = [
    "CLEAN_METRICS",
    "DIVERGED_COLOR",
    "DOMINATED_COLOR",
    "FRONT_COLOR",
    "WITHIN_NOISE_COLOR",
    "BEST_RULE",
    "REFERENCE",
    "HypervolumeStep",
    "Interval",
    "TrialPoint",
    "best_per_method",
    "clean_label",
    "front_table",
    "hypervolume",
    "hypervolume_history",
    "hypervolume_steps",
    "in_finish_order",
    "non_dominated",
    "pareto_front",
    "plot_html",
    "plot_hypervolume_html",
    "plot_hypervolume_png",
    "plot_png",
    "reference_text",
    "write_artifacts",
    "within_noise",
    "write_front_csv",
    "write_hypervolume_csv",
]

FRONT_COLOR = "#1f77b4"
DOMINATED_COLOR = "#b3b3b3"
DIVERGED_COLOR = "#7f7f7f"
WITHIN_NOISE_COLOR = "#ff7f0e"
DEFAULT_TITLE = "Pareto front: clean vs robust accuracy"
OBJECTIVES = ("clean_acc", "robust_acc")  # the fields of a point (and keys of its objectives' intervals)
CLEAN_METRICS = {"clean_acc": "clean accuracy", "macro_f1": "macro-F1", "balanced_acc": "balanced accuracy"}
"""The clean objectives a search may maximise, metric name -> the label plots and tables show for it."""
_CI_SUFFIXES = ("_lo", "_hi", "_n")
REFERENCE = (0.0, 0.0)
"""The hypervolume's reference point (clean objective, robust accuracy): the worst value of each."""
HISTORY_STEM = "hypervolume_history"  # hypervolume_history.csv / .png / .html


def clean_label(clean_metric: str) -> str:
    """The label of a clean objective (:data:`CLEAN_METRICS`); ValueError naming the known ones otherwise."""
    try:
        return CLEAN_METRICS[clean_metric]
    except KeyError:
        raise ValueError(f"unknown clean objective {clean_metric!r}: expected one of {', '.join(CLEAN_METRICS)}") \
            from None


def _core_columns(clean_metric: str) -> tuple[str, ...]:
    """The table's fixed columns, the clean objective's named after its metric."""
    names = (clean_metric, "robust_acc")
    return ("trial_id", "method", *(f"{name}{suffix}" for name in names for suffix in ("", *_CI_SUFFIXES)),
            "on_front", "within_noise", "within_noise_of", "diverged", "infeasible")


def _title(title: str | None, clean_metric: str) -> str:
    """The given title, else the default one for the clean objective (:data:`DEFAULT_TITLE` for accuracy)."""
    if title is not None:
        return title
    label = clean_label(clean_metric)
    return DEFAULT_TITLE if clean_metric == "clean_acc" else f"Pareto front: {label} vs robust accuracy"



@dataclass(frozen=True)
class Interval:
    """A 95% interval ``[lo, hi]`` of an accuracy and ``n``, the number of examples it was measured on."""

    lo: float
    hi: float
    n: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "lo", float(self.lo))
        object.__setattr__(self, "hi", float(self.hi))
        if isinstance(self.n, bool) or int(self.n) != self.n:
            raise ValueError(f"Interval: n must be a whole number, got {self.n!r}")
        object.__setattr__(self, "n", int(self.n))
        if not 0.0 <= self.lo <= self.hi <= 1.0 or self.n < 0:
            raise ValueError(f"Interval: need 0 <= lo <= hi <= 1 and n >= 0, got [{self.lo}, {self.hi}], n {self.n}")

    def overlaps(self, other: Interval) -> bool:
        """Whether the two closed intervals share a point."""
        return self.lo <= other.hi and other.lo <= self.hi


@dataclass(frozen=True)
class TrialPoint:
    """One finished (or diverged) trial: its two objectives, the searched values and extra metrics, its AT
    method's label (None when unknown) and the 95% interval of each accuracy whose count is known, by metric
    name (``clean_acc``, ``robust_acc`` or an extra's name). ``clean_acc`` is the clean objective, whichever
    metric the search maximises (module docstring), and so is the interval keyed ``clean_acc``."""

    trial_id: str
    clean_acc: float
    robust_acc: float
    params: dict[str, Any] = field(default_factory=dict)
    diverged: bool = False
    extra: dict[str, float] = field(default_factory=dict)
    infeasible: bool = False  # below the search's clean-accuracy floor
    method: str | None = None
    intervals: dict[str, Interval] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # objectives arrive from metric dicts (numpy scalars, None for a trial that never reported)
        object.__setattr__(self, "trial_id", str(self.trial_id))
        object.__setattr__(self, "method", None if self.method is None else str(self.method))
        object.__setattr__(self, "clean_acc", _as_float(self.clean_acc))
        object.__setattr__(self, "robust_acc", _as_float(self.robust_acc))
        object.__setattr__(self, "diverged", bool(self.diverged))
        object.__setattr__(self, "infeasible", bool(self.infeasible))

    @property
    def valid(self) -> bool:
        """Whether the point takes part in the front: not diverged, feasible, both objectives finite."""
        return not self.diverged and not self.infeasible and math.isfinite(self.clean_acc) and math.isfinite(self.robust_acc)

    @property
    def plottable(self) -> bool:
        """Whether the point has a position (both objectives finite), diverged or not."""
        return math.isfinite(self.clean_acc) and math.isfinite(self.robust_acc)

    @property
    def label(self) -> str:
        """The trial id with its method, as every artifact names the point: ``3f2a9c1e (adaptive_pgd)``."""
        return f"{self.trial_id} ({self.method})" if self.method else self.trial_id


def _as_float(value: Any) -> float:
    if value is None:
        return math.nan
    return float(value)


BEST_RULE = ("each method's best trial on the search's own (dev) numbers: the feasible trial with the highest robust "
             "objective, ties broken by clean accuracy")
"""How :func:`best_per_method` chooses, in words (a report states it under its table)."""


def best_per_method(points: Sequence[TrialPoint]) -> dict[str, TrialPoint]:
    """Method label -> its best trial by :data:`BEST_RULE`, among the points that take part in the front
    (:attr:`TrialPoint.valid`); methods in order of their best trial's robust accuracy, highest first. The choice
    reads dev numbers only, so a test-split table built on it is not selected on test."""
    best: dict[str, TrialPoint] = {}
    for p in points:
        if not p.valid or p.method is None:
            continue
        held = best.get(p.method)
        if held is None or (p.robust_acc, p.clean_acc, held.trial_id) > (held.robust_acc, held.clean_acc, p.trial_id):
            best[p.method] = p
    return dict(sorted(best.items(), key=lambda kv: (-kv[1].robust_acc, -kv[1].clean_acc, kv[0])))


def non_dominated(points: Sequence[TrialPoint]) -> list[bool]:
    """``True`` for each point on the Pareto front (maximising both objectives), in input order.

    A sweep in ``O(n log n)``: points sorted by clean accuracy (descending), grouped by equal clean accuracy.
    A point is on the front when it has the best robust accuracy of its group and that value beats every
    robust accuracy seen among points with a strictly higher clean accuracy.
    """
    on_front = [False] * len(points)
    order = sorted((i for i, p in enumerate(points) if p.valid), key=lambda i: -points[i].clean_acc)
    best_higher = -math.inf  # best robust accuracy among points with a strictly higher clean accuracy
    start = 0
    while start < len(order):
        clean = points[order[start]].clean_acc
        end = start
        while end < len(order) and points[order[end]].clean_acc == clean:
            end += 1
        group = order[start:end]
        best_here = max(points[i].robust_acc for i in group)
        if best_here > best_higher:
            for i in group:
                on_front[i] = points[i].robust_acc == best_here
        best_higher = max(best_higher, best_here)
        start = end
    return on_front


def within_noise(points: Sequence[TrialPoint]) -> list[tuple[str, ...]]:
    """For each point, in input order, the ids of the front members it is *within noise* of (module docstring):
    it is valid and off the front, and both its clean and its robust interval overlap that member's. Empty for
    front points, for invalid ones and for any point (or member) lacking either objective's interval."""
    flags = non_dominated(points)
    front = [p for p, keep in zip(points, flags, strict=True) if keep and _has_objective_intervals(p)]
    out: list[tuple[str, ...]] = []
    for point, on_front in zip(points, flags, strict=True):
        if on_front or not point.valid or not _has_objective_intervals(point):
            out.append(())
            continue
        out.append(tuple(
            f.trial_id for f in front
            if all(point.intervals[name].overlaps(f.intervals[name]) for name in OBJECTIVES)
        ))
    return out


def _has_objective_intervals(point: TrialPoint) -> bool:
    return all(name in point.intervals for name in OBJECTIVES)


def pareto_front(points: Sequence[TrialPoint]) -> list[TrialPoint]:
    """The points on the front, by clean accuracy descending (robust accuracy ascending), ties by trial id."""
    front = [p for p, keep in zip(points, non_dominated(points), strict=True) if keep]
    return sorted(front, key=lambda p: (-p.clean_acc, p.robust_acc, p.trial_id))


def hypervolume(points: Sequence[TrialPoint], reference: tuple[float, float] = REFERENCE) -> float:
    """Exact 2-D hypervolume (area) dominated by the front and bounded below by ``reference``.

    Only front points strictly better than the reference in both objectives contribute; an empty front
    gives 0.
    With the front sorted by clean accuracy descending (so robust accuracy ascending), the area is the sum of
    the horizontal slabs ``(clean_i - ref_clean) * (robust_i - robust_{i-1})`` with ``robust_0 = ref_robust``.
    """
    ref_clean, ref_robust = _check_reference(reference)
    front = [p for p in pareto_front(points) if p.clean_acc > ref_clean and p.robust_acc > ref_robust]
    area = 0.0
    previous = ref_robust
    for p in front:
        area += (p.clean_acc - ref_clean) * (p.robust_acc - previous)
        previous = p.robust_acc
    return area


class HypervolumeStep(NamedTuple):
    """The hypervolume after the ``step``-th finished trial (1-based), that trial, and whether it raised the
    hypervolume (above the previous step's; above 0 for the first)."""

    step: int
    trial_id: str
    hypervolume: float
    improved: bool


def hypervolume_history(points: Sequence[TrialPoint], reference: tuple[float, float] = REFERENCE) -> list[float]:
    """The hypervolume of the first ``i`` points, for ``i = 1 .. len(points)``: ``points`` in the order their
    trials finished. Diverged and infeasible trials count as finished but never change the front, so never the
    hypervolume; the last value is :func:`hypervolume` of all the points. Never decreasing: each value is the
    hypervolume of a front at least as large as the one before.

    Incremental: each point is compared with the running front only (:func:`non_dominated`), and the area is
    recomputed (:func:`hypervolume`) only when the point joins the front, so each value is exactly
    :func:`hypervolume` of the points so far.
    """
    _check_reference(reference)
    front: list[TrialPoint] = []
    value = 0.0
    out = []
    for point in points:
        if point.valid:
            candidates = [*front, point]
            flags = non_dominated(candidates)
            if flags[-1]:  # on the front of the trials so far: the ones it dominates leave it
                front = [p for p, keep in zip(candidates, flags, strict=True) if keep]
                value = hypervolume(front, reference)
        out.append(value)
    return out


def hypervolume_steps(points: Sequence[TrialPoint],
                      reference: tuple[float, float] = REFERENCE) -> list[HypervolumeStep]:
    """:func:`hypervolume_history` with each step's trial and whether it raised the hypervolume."""
    steps = []
    previous = 0.0
    for i, (point, value) in enumerate(zip(points, hypervolume_history(points, reference), strict=True), start=1):
        steps.append(HypervolumeStep(i, point.trial_id, value, value > previous))
        previous = value
    return steps


def in_finish_order(points: Sequence[TrialPoint], finish_order: Sequence[str]) -> list[TrialPoint]:
    """``points`` reordered as ``finish_order`` (trial ids, first finished first); ValueError unless it names
    every point's trial exactly once."""
    by_id = {p.trial_id: p for p in points}
    if len(by_id) != len(points):
        raise ValueError("finish order: the points' trial ids are not unique")
    if len(set(finish_order)) != len(finish_order) or set(finish_order) != set(by_id):
        missing = sorted(set(by_id) - set(finish_order))
        unknown = sorted(set(finish_order) - set(by_id))
        raise ValueError(f"finish order must name every trial once (missing: {missing}, unknown: {unknown}, "
                         f"{len(finish_order)} ids for {len(by_id)} trials)")
    return [by_id[trial_id] for trial_id in finish_order]


def reference_text(reference: tuple[float, float] = REFERENCE) -> str:
    """The reference point as the artifacts and the CLI state it: ``0, 0``."""
    return f"{float(reference[0]):g}, {float(reference[1]):g}"


def _check_reference(reference: tuple[float, float]) -> tuple[float, float]:
    ref_clean, ref_robust = float(reference[0]), float(reference[1])
    if not (math.isfinite(ref_clean) and math.isfinite(ref_robust)):
        raise ValueError(f"hypervolume reference must be finite, got {reference!r}")
    return ref_clean, ref_robust


def front_table(points: Sequence[TrialPoint], clean_metric: str = "clean_acc") -> pd.DataFrame:
    """One row per trial: ``trial_id, method``, each objective with its interval (``clean_acc, clean_acc_lo,
    clean_acc_hi, clean_acc_n``, the same for ``robust_acc``; empty without a count; the clean objective's columns
    are named after ``clean_metric``: ``macro_f1, macro_f1_lo...``), ``on_front,
    within_noise, within_noise_of`` (the front members' ids, space-separated), ``diverged, infeasible``, then the
    searched values as ``param.<name>`` columns (nested dicts flattened with dots, missing values empty), then
    the extras under their own names, then the intervals of extras (``<name>_lo, _hi, _n``). Rows: the front
    first, then by robust accuracy descending (NaN last), clean objective descending, trial id.
    """
    clean_label(clean_metric)  # an unknown metric is refused, not written as a column
    core = _core_columns(clean_metric)
    column_of = {"clean_acc": clean_metric, "robust_acc": "robust_acc"}  # objective -> its column
    flags = non_dominated(points)
    noise = within_noise(points)
    rows: list[dict[str, Any]] = []
    param_columns: dict[str, None] = {}
    extra_columns: dict[str, None] = {}
    interval_columns: dict[str, None] = {}
    for point, on_front, peers in zip(points, flags, noise, strict=True):
        row: dict[str, Any] = {
            "trial_id": point.trial_id,
            "method": point.method,
            clean_metric: point.clean_acc,
            "robust_acc": point.robust_acc,
            "on_front": on_front,
            "within_noise": bool(peers),
            "within_noise_of": " ".join(peers),
            "diverged": point.diverged,
            "infeasible": point.infeasible,
        }
        flat = flatten(point.params, prefix="param.", keep_empty=True)
        param_columns.update(dict.fromkeys(flat))
        for name in point.extra:
            if name in core or name.startswith("param."):
                raise ValueError(
                    f"extra metric {name!r} of trial {point.trial_id!r} clashes with a column name"
                )
        extra_columns.update(dict.fromkeys(point.extra))
        row.update(flat)
        row.update(point.extra)
        for name, ci in point.intervals.items():
            column = column_of.get(name, name)
            cells = dict(zip((f"{column}{s}" for s in _CI_SUFFIXES), (ci.lo, ci.hi, ci.n), strict=True))
            clash = [c for c in cells if name not in OBJECTIVES and (c in core or c in point.extra)]
            if clash:
                raise ValueError(f"interval column {clash[0]!r} of trial {point.trial_id!r} clashes with a column name")
            if name not in OBJECTIVES:
                interval_columns.update(dict.fromkeys(cells))
            row.update(cells)
        rows.append(row)
    # each extra's interval columns together, in the order lo, hi, n
    by_metric = sorted(interval_columns, key=lambda c: (c.rsplit("_", 1)[0], _CI_SUFFIXES.index(f"_{c.rsplit('_', 1)[1]}")))
    columns = [*core, *sorted(param_columns), *sorted(extra_columns), *by_metric]
    table = pd.DataFrame(rows, columns=columns)
    for column in columns:
        if column.endswith("_n") and f"{column.removesuffix('_n')}_lo" in columns:
            table[column] = table[column].astype("Int64")  # a count stays a whole number; missing stays empty
    if table.empty:
        return table
    table = table.sort_values(
        ["on_front", "robust_acc", clean_metric, "trial_id"],
        ascending=[False, False, False, True],
        na_position="last",
        kind="mergesort",
    )
    return table.reset_index(drop=True)


def write_front_csv(points: Sequence[TrialPoint], path: str | Path, clean_metric: str = "clean_acc") -> Path:
    """Write :func:`front_table` as CSV (no index) and return the path."""
    path = Path(path)
    table = front_table(points, clean_metric)  # before the file: a refused metric leaves no empty file
    with atomic_file(path) as part:
        table.to_csv(part, index=False)
    return path


def _staircase(front: Sequence[TrialPoint]) -> list[tuple[float, float]]:
    """Vertices of the front's staircase from the most robust point to the most accurate one: from each point
    down to the next point's robust accuracy, then across to it (the boundary of the dominated region)."""
    ordered = sorted(front, key=lambda p: (p.clean_acc, -p.robust_acc))
    vertices: list[tuple[float, float]] = []
    for i, p in enumerate(ordered):
        if i:
            vertices.append((ordered[i - 1].clean_acc, p.robust_acc))
        vertices.append((p.clean_acc, p.robust_acc))
    return vertices


def _error_bars(ax: Any, points: Sequence[TrialPoint], color: str, zorder: int) -> None:
    """Each point's 95% intervals as error bars (a missing interval: no bar on that axis)."""
    def spans(name: str, value: float, point: TrialPoint) -> tuple[float, float]:
        ci = point.intervals.get(name)
        return (0.0, 0.0) if ci is None else (max(value - ci.lo, 0.0), max(ci.hi - value, 0.0))

    with_bars = [p for p in points if any(name in p.intervals for name in OBJECTIVES)]
    if not with_bars:
        return
    xerr = list(zip(*(spans("clean_acc", p.clean_acc, p) for p in with_bars), strict=True))
    yerr = list(zip(*(spans("robust_acc", p.robust_acc, p) for p in with_bars), strict=True))
    ax.errorbar([p.clean_acc for p in with_bars], [p.robust_acc for p in with_bars], xerr=xerr, yerr=yerr,
                fmt="none", ecolor=color, elinewidth=0.9, capsize=2.0, alpha=0.7, zorder=zorder)


def plot_png(points: Sequence[TrialPoint], path: str | Path, title: str | None = None,
             clean_metric: str = "clean_acc") -> Path:
    """A PNG scatter of all trials with their 95% intervals as error bars: the front coloured and joined by its
    staircase, trials within noise of the front orange, dominated trials grey, diverged trials (where they have
    objectives) marked ×; front and within-noise points labelled ``trial (method)`` (up to 15 of each). The x axis
    is the clean objective's label; ``title`` defaults to one naming it. Uses the Agg canvas directly (no
    pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    label = clean_label(clean_metric)
    title = _title(title, clean_metric)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = non_dominated(points)
    noisy = [bool(peers) for peers in within_noise(points)]
    front = [p for p, keep in zip(points, flags, strict=True) if keep]
    near = [p for p, keep in zip(points, noisy, strict=True) if keep]
    dominated = [p for p, keep, n in zip(points, flags, noisy, strict=True) if not keep and not n and p.valid]
    diverged = [p for p in points if p.diverged and p.plottable]
    infeasible = [p for p in points if p.infeasible and not p.diverged and p.plottable]
    unplotted = sum(not p.plottable for p in points)

    fig = Figure(figsize=(7.0, 5.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    _error_bars(ax, [*dominated, *infeasible, *diverged], DOMINATED_COLOR, zorder=1)
    _error_bars(ax, near, WITHIN_NOISE_COLOR, zorder=1)
    _error_bars(ax, front, FRONT_COLOR, zorder=1)
    if dominated:
        ax.scatter([p.clean_acc for p in dominated], [p.robust_acc for p in dominated], s=28,
                   color=DOMINATED_COLOR, label=f"dominated ({len(dominated)})", zorder=2)
    if near:
        ax.scatter([p.clean_acc for p in near], [p.robust_acc for p in near], s=36, color=WITHIN_NOISE_COLOR,
                   edgecolors="white", linewidths=0.6, label=f"within noise of the front ({len(near)})", zorder=3)
        if len(near) <= 15:
            for p in near:
                ax.annotate(p.label, (p.clean_acc, p.robust_acc), textcoords="offset points",
                            xytext=(5, -9), fontsize=7, color=WITHIN_NOISE_COLOR)
    if infeasible:
        ax.scatter([p.clean_acc for p in infeasible], [p.robust_acc for p in infeasible], s=28,
                   facecolors="none", edgecolors=DOMINATED_COLOR, label=f"below clean-acc floor ({len(infeasible)})",
                   zorder=2)
    if diverged:
        ax.scatter([p.clean_acc for p in diverged], [p.robust_acc for p in diverged], s=40, marker="x",
                   color=DIVERGED_COLOR, label=f"diverged ({len(diverged)})", zorder=2)
    if front:
        stairs = _staircase(front)
        ax.plot([x for x, _ in stairs], [y for _, y in stairs], color=FRONT_COLOR, linewidth=1.6, zorder=3)
        ax.scatter([p.clean_acc for p in front], [p.robust_acc for p in front], s=46, color=FRONT_COLOR,
                   edgecolors="white", linewidths=0.8, label=f"Pareto front ({len(front)})", zorder=4)
        if len(front) <= 15:
            for p in front:
                ax.annotate(p.label, (p.clean_acc, p.robust_acc), textcoords="offset points",
                            xytext=(5, 4), fontsize=7, color=FRONT_COLOR)
    ax.set_xlabel(label)
    ax.set_ylabel("robust accuracy")
    ax.set_title(title)
    ax.grid(True, color="#e6e6e6", linewidth=0.8, zorder=0)
    if any(p.intervals for p in points):
        ax.text(0.99, 0.01, "bars: 95% Wilson intervals", transform=ax.transAxes, ha="right", fontsize=7,
                color=DIVERGED_COLOR)
    if unplotted:
        ax.text(0.01, 0.01, f"{unplotted} trial(s) without finite objectives not shown",
                transform=ax.transAxes, fontsize=7, color=DIVERGED_COLOR)
    if front or near or dominated or diverged or infeasible:
        ax.legend(loc="best", fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no trial to show", transform=ax.transAxes, ha="center", va="center")
    fig.tight_layout()
    with atomic_file(path) as part:
        fig.savefig(part, format="png")
    return path


# ---------------------------------------------------------------------------------------------------- HTML

_WIDTH, _HEIGHT = 760, 520
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 70, 24, 20, 56


def _nice_ticks(lo: float, hi: float, count: int = 6) -> tuple[float, float, list[float]]:
    """An axis range covering ``[lo, hi]`` with about ``count`` round ticks (1, 2, 2.5 or 5 × 10^k apart)."""
    if not hi > lo:
        lo, hi = lo - 0.05, hi + 0.05
    raw = (hi - lo) / max(count - 1, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * magnitude >= raw)
    start = math.floor(lo / step + 1e-9) * step
    stop = math.ceil(hi / step - 1e-9) * step
    n = round((stop - start) / step)
    ticks = [round(start + i * step, 12) for i in range(n + 1)]
    return start, stop, ticks


def _fmt(value: float) -> str:
    return "NaN" if math.isnan(value) else f"{value:.4f}"


def _ci_text(ci: Interval | None) -> str:
    """An interval for display, ``[0.7912, 0.8451] (n = 872)``; empty without one."""
    return "" if ci is None else f"[{ci.lo:.4f}, {ci.hi:.4f}] (n = {ci.n})"


def _param_text(value: Any) -> str:
    """A parameter value for display: strings as they are, floats to 6 significant digits, else JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:.6g}"
    try:
        return json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return str(value)


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


_CSS = ("""
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 16px; color: #222; }
h1 { font-size: 18px; margin: 0 0 4px 0; }
p.summary { margin: 0 0 8px 0; color: #555; font-size: 13px; }
#pareto-plot { display: block; max-width: 100%; height: auto; }
.axis line, .axis path { stroke: #444; stroke-width: 1; }
.grid line { stroke: #ececec; stroke-width: 1; }
.axis text { font-size: 11px; fill: #333; }
.axis-label { font-size: 13px; fill: #222; }
.front-line { fill: none; stroke: FRONT; stroke-width: 2; }
.point { cursor: pointer; }
circle.front { fill: FRONT; stroke: #fff; stroke-width: 1; }
circle.dominated { fill: DOMINATED; stroke: none; }
circle.within-noise { fill: NOISE; stroke: #fff; stroke-width: 1; }
.errorbar { stroke-width: 1; opacity: 0.7; }
.errorbar.front { stroke: FRONT; }
.errorbar.within-noise { stroke: NOISE; }
.errorbar.dominated, .errorbar.infeasible, .errorbar.diverged { stroke: DOMINATED; }
circle.infeasible { fill: none; stroke: DOMINATED; stroke-width: 1.5; }
path.diverged { stroke: DIVERGED; stroke-width: 2; fill: none; }
.point.highlight { stroke: #000; stroke-width: 2.5; }
svg.hide-dominated .dominated, svg.hide-dominated .diverged, svg.hide-dominated .infeasible { display: none; }
table.front-table tr.noise-row td { color: #8a4a00; }
#pareto-tooltip { position: fixed; display: none; pointer-events: none; background: rgba(255,255,255,0.97);
  border: 1px solid #999; border-radius: 4px; padding: 6px 8px; font-size: 12px; max-width: 360px;
  box-shadow: 0 2px 6px rgba(0,0,0,0.15); white-space: pre-wrap; word-break: break-word; }
table.front-table { border-collapse: collapse; margin-top: 12px; font-size: 13px; }
table.front-table th, table.front-table td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
table.front-table th { background: #f4f4f4; }
table.front-table tr.highlight td { background: #e8f1fa; }
label.toggle { font-size: 13px; }
""".replace("FRONT", FRONT_COLOR).replace("DOMINATED", DOMINATED_COLOR).replace("DIVERGED", DIVERGED_COLOR)
    .replace("NOISE", WITHIN_NOISE_COLOR))

# Data reach the script only through data-* attributes (escaped) and leave it only through textContent, so no
# trial id or parameter value is ever parsed as markup or code.
_JS = """
(function () {
  "use strict";
  var svg = document.getElementById("pareto-plot");
  var tip = document.getElementById("pareto-tooltip");
  var toggle = document.getElementById("show-dominated");
  var rows = {};
  Array.prototype.forEach.call(document.querySelectorAll("tr.front-row, tr.noise-row"), function (row) {
    rows[row.getAttribute("data-trial")] = row;
  });
  function describe(el) {
    var method = el.getAttribute("data-method");
    var cleanCi = el.getAttribute("data-clean-ci"), robustCi = el.getAttribute("data-robust-ci");
    var lines = ["trial " + el.getAttribute("data-trial") + (method ? " (" + method + ")" : ""),
                 "__CLEAN_LABEL__: " + el.getAttribute("data-clean") + (cleanCi ? " " + cleanCi : ""),
                 "robust accuracy: " + el.getAttribute("data-robust") + (robustCi ? " " + robustCi : ""),
                 "status: " + el.getAttribute("data-status")];
    var params = {};
    try { params = JSON.parse(el.getAttribute("data-params") || "{}"); } catch (e) { params = {}; }
    Object.keys(params).sort().forEach(function (k) { lines.push(k + " = " + params[k]); });
    return lines.join("\\n");
  }
  function setHighlight(trial, on) {
    Array.prototype.forEach.call(svg.querySelectorAll(".point"), function (el) {
      if (el.getAttribute("data-trial") === trial) { el.classList.toggle("highlight", on); }
    });
    if (rows[trial]) { rows[trial].classList.toggle("highlight", on); }
  }
  Array.prototype.forEach.call(svg.querySelectorAll(".point"), function (el) {
    el.addEventListener("mouseenter", function (ev) {
      tip.textContent = describe(el);
      tip.style.display = "block";
      setHighlight(el.getAttribute("data-trial"), true);
    });
    el.addEventListener("mousemove", function (ev) {
      tip.style.left = (ev.clientX + 14) + "px";
      tip.style.top = (ev.clientY + 14) + "px";
    });
    el.addEventListener("mouseleave", function () {
      tip.style.display = "none";
      setHighlight(el.getAttribute("data-trial"), false);
    });
  });
  Object.keys(rows).forEach(function (trial) {
    rows[trial].addEventListener("mouseenter", function () { setHighlight(trial, true); });
    rows[trial].addEventListener("mouseleave", function () { setHighlight(trial, false); });
  });
  toggle.addEventListener("change", function () { svg.classList.toggle("hide-dominated", !toggle.checked); });
  document.documentElement.setAttribute("data-pareto-ready", "1");
})();
"""


def _status(point: TrialPoint, on_front: bool, peers: Sequence[str]) -> str:
    if on_front:
        return "front"
    if peers:
        return "within-noise"
    return "diverged" if point.diverged else "infeasible" if point.infeasible else "dominated"


def _html_page(title: str, css: str, body: list[str]) -> str:
    """A self-contained HTML page: ``title`` as its title and heading, ``css`` inline, then ``body``'s parts."""
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">', f"<title>{_esc(title)}</title>",
        f"<style>{css}</style>", "</head>", "<body>", f"<h1>{_esc(title)}</h1>", *body, "</body>", "</html>", "",
    ])


def _svg_axes(sx: Any, sy: Any, box: tuple[float, float, float, float], x_ticks: Sequence[float],
              y_ticks: Sequence[float], *, tick_marks: bool) -> list[str]:
    """An SVG plot's grid (closed) and axes with their tick labels (the axis group left open for its label):
    ``sx``/``sy`` map data to pixels inside ``box`` = (left, right, top, bottom)."""
    left, right, top, bottom = box
    out = [f'<line x1="{sx(t):.2f}" y1="{top}" x2="{sx(t):.2f}" y2="{bottom}"/>' for t in x_ticks]
    out += [f'<line x1="{left}" y1="{sy(t):.2f}" x2="{right}" y2="{sy(t):.2f}"/>' for t in y_ticks]
    out += ["</g>", '<g class="axis">', f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}"/>',
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}"/>']
    for t in x_ticks:
        if tick_marks:
            out.append(f'<line x1="{sx(t):.2f}" y1="{bottom}" x2="{sx(t):.2f}" y2="{bottom + 5}"/>')
        out.append(f'<text x="{sx(t):.2f}" y="{bottom + 18}" text-anchor="middle">{t:g}</text>')
    for t in y_ticks:
        if tick_marks:
            out.append(f'<line x1="{left - 5}" y1="{sy(t):.2f}" x2="{left}" y2="{sy(t):.2f}"/>')
        out.append(f'<text x="{left - 8}" y="{sy(t) + 4:.2f}" text-anchor="end">{t:g}</text>')
    return out


def _svg(points: Sequence[TrialPoint], flags: Sequence[bool], label: str) -> str:
    noise = within_noise(points)
    shown = [(p, _status(p, keep, peers)) for p, keep, peers in zip(points, flags, noise, strict=True)
             if p.plottable]
    # the axes cover the error bars too
    xs = [v for p, _ in shown for v in (p.clean_acc, *_bounds(p, "clean_acc"))] or [0.0, 1.0]
    ys = [v for p, _ in shown for v in (p.robust_acc, *_bounds(p, "robust_acc"))] or [0.0, 1.0]
    pad_x = 0.04 * (max(xs) - min(xs)) or 0.02
    pad_y = 0.04 * (max(ys) - min(ys)) or 0.02
    x_lo, x_hi, x_ticks = _nice_ticks(min(xs) - pad_x, max(xs) + pad_x)
    y_lo, y_hi, y_ticks = _nice_ticks(min(ys) - pad_y, max(ys) + pad_y)
    left, right = _MARGIN_LEFT, _WIDTH - _MARGIN_RIGHT
    top, bottom = _MARGIN_TOP, _HEIGHT - _MARGIN_BOTTOM

    def sx(v: float) -> float:
        return left + (v - x_lo) / (x_hi - x_lo) * (right - left)

    def sy(v: float) -> float:
        return bottom - (v - y_lo) / (y_hi - y_lo) * (bottom - top)

    out = [
        f'<svg id="pareto-plot" width="{_WIDTH}" height="{_HEIGHT}" viewBox="0 0 {_WIDTH} {_HEIGHT}" '
        f'role="img" aria-label="{_esc(label)} vs robust accuracy of every trial">',
        '<g class="grid">',
    ]
    out += _svg_axes(sx, sy, (left, right, top, bottom), x_ticks, y_ticks, tick_marks=True)
    out.append(f'<text class="axis-label" x="{(left + right) / 2:.2f}" y="{_HEIGHT - 14}" '
               f'text-anchor="middle">{_esc(label)}</text>')
    out.append(f'<text class="axis-label" x="18" y="{(top + bottom) / 2:.2f}" text-anchor="middle" '
               f'transform="rotate(-90 18 {(top + bottom) / 2:.2f})">robust accuracy</text>')
    out.append("</g>")

    front = [p for p, status in shown if status == "front"]
    if len(front) > 1:
        coords = " ".join(f"{sx(x):.2f},{sy(y):.2f}" for x, y in _staircase(front))
        out.append(f'<polyline class="front-line" points="{coords}"/>')

    # dominated and diverged first, so within-noise and then front points are drawn on top
    layers = sorted(shown, key=lambda item: {"front": 2, "within-noise": 1}.get(item[1], 0))
    out.append('<g class="errorbars">')
    for p, status in layers:
        x, y = sx(p.clean_acc), sy(p.robust_acc)
        if (ci := p.intervals.get("clean_acc")) is not None:
            out.append(f'<line class="errorbar {status}" data-trial="{_esc(p.trial_id)}" data-axis="clean" '
                       f'x1="{sx(ci.lo):.2f}" y1="{y:.2f}" x2="{sx(ci.hi):.2f}" y2="{y:.2f}"/>')
        if (ci := p.intervals.get("robust_acc")) is not None:
            out.append(f'<line class="errorbar {status}" data-trial="{_esc(p.trial_id)}" data-axis="robust" '
                       f'x1="{x:.2f}" y1="{sy(ci.lo):.2f}" x2="{x:.2f}" y2="{sy(ci.hi):.2f}"/>')
    out.append("</g>")
    out.append('<g class="points">')
    for p, status in layers:
        keep = status == "front"
        params = {k: _param_text(v) for k, v in p.params.items()}
        clean_ci, robust_ci = _ci_text(p.intervals.get("clean_acc")), _ci_text(p.intervals.get("robust_acc"))
        attrs = (
            f'class="point {status}" data-trial="{_esc(p.trial_id)}" data-method="{_esc(p.method or "")}" '
            f'data-clean="{_fmt(p.clean_acc)}" data-robust="{_fmt(p.robust_acc)}" '
            f'data-clean-ci="{_esc(clean_ci)}" data-robust-ci="{_esc(robust_ci)}" data-status="{status}" '
            f'data-params="{_esc(json.dumps(params, sort_keys=True))}"'
        )
        title = "\n".join([
            f"trial {p.label}: {status.replace('-', ' ')}",
            f"{label} {_fmt(p.clean_acc)} {clean_ci}".rstrip(),
            f"robust accuracy {_fmt(p.robust_acc)} {robust_ci}".rstrip(),
            *(f"{k} = {v}" for k, v in sorted(params.items())),
        ])
        x, y = sx(p.clean_acc), sy(p.robust_acc)
        if status == "diverged":
            d = (f"M{x - 5:.2f},{y - 5:.2f} L{x + 5:.2f},{y + 5:.2f} "
                 f"M{x - 5:.2f},{y + 5:.2f} L{x + 5:.2f},{y - 5:.2f}")
            out.append(f'<path {attrs} d="{d}"><title>{_esc(title)}</title></path>')
        else:
            radius = 6 if keep else 5 if status == "within-noise" else 4.5
            out.append(f'<circle {attrs} cx="{x:.2f}" cy="{y:.2f}" r="{radius}"><title>{_esc(title)}</title>'
                       "</circle>")
    out.append("</g>")
    if not shown:
        out.append(f'<text x="{(left + right) / 2:.2f}" y="{(top + bottom) / 2:.2f}" text-anchor="middle">'
                   "no trial to show</text>")
    out.append("</svg>")
    return "\n".join(out)


def _bounds(point: TrialPoint, name: str) -> tuple[float, ...]:
    ci = point.intervals.get(name)
    return () if ci is None else (ci.lo, ci.hi)


def _front_html_table(points: Sequence[TrialPoint], label: str) -> str:
    """The front (rows ``front-row``), then the trials within noise of it (rows ``noise-row``), each by robust
    accuracy descending: trial, method, both objectives (the clean one headed ``label``) with their intervals,
    status, searched values."""
    def order(p: TrialPoint) -> tuple[float, float, str]:
        return -p.robust_acc, -p.clean_acc, p.trial_id

    front = sorted(pareto_front(points), key=order)
    near = sorted(((p, peers) for p, peers in zip(points, within_noise(points), strict=True) if peers),
                  key=lambda item: order(item[0]))
    rows = [(p, "front-row", "Pareto front") for p in front]
    rows += [(p, "noise-row", f"within noise of {', '.join(peers)}") for p, peers in near]
    names = sorted({name for p, _, _ in rows for name in p.params})
    head = "".join(f"<th>{_esc(n)}</th>" for n in ["trial", "method", label, "95% interval",
                                                    "robust accuracy", "95% interval", "status", *names])
    body = []
    for p, cls, status in rows:
        cells = [p.trial_id, p.method or "", _fmt(p.clean_acc), _ci_text(p.intervals.get("clean_acc")),
                 _fmt(p.robust_acc), _ci_text(p.intervals.get("robust_acc")), status]
        cells += [_param_text(p.params[n]) if n in p.params else "" for n in names]
        tds = "".join(f"<td>{_esc(c)}</td>" for c in cells)
        body.append(f'<tr class="{cls}" data-trial="{_esc(p.trial_id)}">{tds}</tr>')
    caption = f"Pareto front ({len(front)} trials)"
    if near:
        caption += f" and {len(near)} trial(s) within noise of it (both 95% intervals overlap a front member's)"
    return (
        f'<table class="front-table" id="front-table"><caption>{_esc(caption)}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(body) + "\n</tbody></table>"
    )


def plot_html(points: Sequence[TrialPoint], path: str | Path, title: str | None = None,
              clean_metric: str = "clean_acc") -> Path:
    """Write one self-contained interactive HTML page of the trials (see the module docstring); the clean
    objective is shown under its label (axis, tooltips, table header), ``title`` defaults to one naming it."""
    label = clean_label(clean_metric)
    title = _title(title, clean_metric)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = non_dominated(points)
    n_front = sum(flags)
    n_diverged = sum(p.diverged for p in points)
    n_unplotted = sum(not p.plottable for p in points)
    n_infeasible = sum(p.infeasible and not p.diverged for p in points)
    n_noise = sum(bool(peers) for peers in within_noise(points))
    n_dominated = len(points) - n_front - n_noise - n_diverged - n_infeasible
    summary = (f"{len(points)} trials: {n_front} on the front, {n_noise} within noise of it, {n_dominated} dominated, "
               f"{n_diverged} diverged, {n_infeasible} below the clean-accuracy floor; hypervolume (reference 0, 0) {hypervolume(points):.4f}")
    if n_unplotted:
        summary += f"; {n_unplotted} without finite objectives not plotted"
    if any(p.intervals for p in points):
        summary += "; bars: 95% Wilson intervals"
    page = _html_page(title, _CSS, [
        f'<p class="summary">{_esc(summary)}</p>',
        '<label class="toggle"><input type="checkbox" id="show-dominated" checked> show dominated and '
        "diverged trials</label>",
        _svg(points, flags, label),
        '<div id="pareto-tooltip" role="tooltip"></div>',
        _front_html_table(points, label),
        # the label is one of CLEAN_METRICS' fixed strings (no quote, no markup): safe inside the script's string
        f"<script>{_JS.replace('__CLEAN_LABEL__', label)}</script>",
    ])
    write_text(path, page)
    return path


# ---------------------------------------------------------------------------------------- hypervolume history

_HISTORY_WIDTH, _HISTORY_HEIGHT = 760, 380


def _history_title(reference: tuple[float, float]) -> str:
    return f"Hypervolume after each finished trial (reference point ({reference_text(reference)}))"


def _history_summary(steps: Sequence[HypervolumeStep]) -> str:
    """``12 finished trials; hypervolume 0.4550 after the last; last improved at trial 9 of 12 (3f2a9c1e)``."""
    if not steps:
        return "no finished trial"
    improved = [s for s in steps if s.improved]
    text = f"{len(steps)} finished trials; hypervolume {steps[-1].hypervolume:.4f} after the last; "
    if not improved:
        return text + "no trial raised it above 0"
    last = improved[-1]
    return text + f"last improved at trial {last.step} of {len(steps)} ({last.trial_id})"


def write_hypervolume_csv(points: Sequence[TrialPoint], path: str | Path,
                          reference: tuple[float, float] = REFERENCE) -> Path:
    """``step, trial_id, hypervolume``: one row per finished trial, ``points`` in the order they finished
    (:func:`hypervolume_history`)."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["step", "trial_id", "hypervolume"])
    writer.writerows((s.step, s.trial_id, repr(s.hypervolume)) for s in hypervolume_steps(points, reference))
    return write_text(Path(path), buffer.getvalue())


def plot_hypervolume_png(points: Sequence[TrialPoint], path: str | Path, reference: tuple[float, float] = REFERENCE,
                         clean_metric: str = "clean_acc") -> Path:
    """A PNG step plot of the hypervolume against the number of finished trials (``points`` in the order they
    finished), the trials that raised it marked, the last of them by a dashed line; the reference point is in
    the title. Agg canvas, no pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    label = clean_label(clean_metric)
    steps = hypervolume_steps(points, reference)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(7.0, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    up = [s for s in steps if s.improved]
    flat = [s for s in steps if not s.improved]
    if steps:
        ax.step([0, *(s.step for s in steps)], [0.0, *(s.hypervolume for s in steps)], where="post",
                color=FRONT_COLOR, linewidth=1.6, zorder=2)
    if flat:
        ax.scatter([s.step for s in flat], [s.hypervolume for s in flat], s=16, color=DOMINATED_COLOR, zorder=3,
                   label=f"no improvement ({len(flat)})")
    if up:
        ax.scatter([s.step for s in up], [s.hypervolume for s in up], s=30, color=FRONT_COLOR, edgecolors="white",
                   linewidths=0.6, zorder=4, label=f"raised the hypervolume ({len(up)})")
        ax.axvline(up[-1].step, color=DIVERGED_COLOR, linestyle="--", linewidth=0.9, zorder=1)
        ax.legend(loc="lower right", fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no trial to show" if not steps else "no trial raised the hypervolume above 0",
                transform=ax.transAxes, ha="center", va="center")
    ax.set_xlim(0, max(len(steps), 1) + 0.5)  # the last marker whole
    ax.set_ylim(bottom=0.0, top=max((s.hypervolume for s in steps), default=0.0) * 1.08 or 1.0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("finished trials")
    ax.set_ylabel(f"hypervolume ({label} x robust accuracy)")
    ax.set_title(_history_title(reference), fontsize=11)
    ax.text(0.01, 0.98, _history_summary(steps), transform=ax.transAxes, ha="left", va="top", fontsize=7,
            color=DIVERGED_COLOR)
    ax.grid(True, color="#e6e6e6", linewidth=0.8, zorder=0)
    fig.tight_layout()
    with atomic_file(path) as part:
        fig.savefig(part, format="png")
    return path


def _int_ticks(n: int) -> list[int]:
    """Whole-number ticks from 0 to at least ``n``, 1, 2 or 5 × 10^k apart, at most about 10 of them."""
    step = 1
    while n / step > 10:
        step = step * 5 // 2 if str(step).startswith("2") else step * 2  # 1, 2, 5, 10, 20, 50...
    return list(range(0, n + step, step)) if n else [0, 1]


_HISTORY_CSS = ("""
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 16px; color: #222; }
h1 { font-size: 18px; margin: 0 0 4px 0; }
p.summary { margin: 0 0 8px 0; color: #555; font-size: 13px; }
#hypervolume-plot { display: block; max-width: 100%; height: auto; }
.axis line { stroke: #444; stroke-width: 1; }
.grid line { stroke: #ececec; stroke-width: 1; }
.axis text { font-size: 11px; fill: #333; }
.axis-label { font-size: 13px; fill: #222; }
.history-line { fill: none; stroke: FRONT; stroke-width: 2; }
.last-improved { stroke: DIVERGED; stroke-width: 1; stroke-dasharray: 5 4; }
circle.improved { fill: FRONT; stroke: #fff; stroke-width: 1; }
circle.flat { fill: DOMINATED; stroke: none; }
table.history-table { border-collapse: collapse; margin-top: 12px; font-size: 13px; }
table.history-table th, table.history-table td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
table.history-table th { background: #f4f4f4; }
table.history-table tr.improved td { font-weight: 600; }
""".replace("FRONT", FRONT_COLOR).replace("DOMINATED", DOMINATED_COLOR).replace("DIVERGED", DIVERGED_COLOR))


def _history_svg(points: Sequence[TrialPoint], steps: Sequence[HypervolumeStep], label: str) -> str:
    n = len(steps)
    x_ticks = _int_ticks(n)
    top_value = max((s.hypervolume for s in steps), default=0.0)
    y_lo, y_hi, y_ticks = _nice_ticks(0.0, top_value * 1.05) if top_value > 0 else (0.0, 1.0, [0.0, 0.5, 1.0])
    y_lo, y_ticks = 0.0, [t for t in y_ticks if t >= 0.0]
    left, right = _MARGIN_LEFT, _HISTORY_WIDTH - _MARGIN_RIGHT
    top, bottom = _MARGIN_TOP, _HISTORY_HEIGHT - _MARGIN_BOTTOM

    def sx(v: float) -> float:
        return left + v / x_ticks[-1] * (right - left)

    def sy(v: float) -> float:
        return bottom - (v - y_lo) / (y_hi - y_lo) * (bottom - top)

    out = [
        f'<svg id="hypervolume-plot" width="{_HISTORY_WIDTH}" height="{_HISTORY_HEIGHT}" '
        f'viewBox="0 0 {_HISTORY_WIDTH} {_HISTORY_HEIGHT}" role="img" '
        'aria-label="hypervolume of the front after each finished trial">',
        '<g class="grid">',
    ]
    out += _svg_axes(sx, sy, (left, right, top, bottom), x_ticks, y_ticks, tick_marks=False)
    out.append(f'<text class="axis-label" x="{(left + right) / 2:.2f}" y="{_HISTORY_HEIGHT - 14}" '
               'text-anchor="middle">finished trials</text>')
    middle = (top + bottom) / 2
    out.append(f'<text class="axis-label" x="18" y="{middle:.2f}" text-anchor="middle" '
               f'transform="rotate(-90 18 {middle:.2f})">hypervolume ({_esc(label)} x robust accuracy)</text>')
    out.append("</g>")
    if steps:
        # a step line: the hypervolume after i trials holds until the next trial finishes
        d = [f"M{sx(0):.2f},{sy(0.0):.2f}"]
        for s in steps:
            d.append(f"H{sx(s.step):.2f} V{sy(s.hypervolume):.2f}")
        out.append(f'<path class="history-line" d="{" ".join(d)}"/>')
        improved = [s for s in steps if s.improved]
        if improved:
            x = sx(improved[-1].step)
            out.append(f'<line class="last-improved" x1="{x:.2f}" y1="{top}" x2="{x:.2f}" y2="{bottom}">'
                       f"<title>last improved at trial {improved[-1].step}</title></line>")
        out.append('<g class="points">')
        for point, s in zip(points, steps, strict=True):
            status = "improved" if s.improved else "flat"
            title = (f"trial {s.step} of {n}: {point.label}\nhypervolume {s.hypervolume:.4f}"
                     f"{' (raised it)' if s.improved else ''}")
            radius = 4.5 if s.improved else 3
            out.append(f'<circle class="{status}" data-step="{s.step}" data-trial="{_esc(s.trial_id)}" '
                       f'data-hypervolume="{s.hypervolume!r}" cx="{sx(s.step):.2f}" cy="{sy(s.hypervolume):.2f}" '
                       f'r="{radius}"><title>{_esc(title)}</title></circle>')
        out.append("</g>")
    else:
        out.append(f'<text x="{(left + right) / 2:.2f}" y="{(top + bottom) / 2:.2f}" text-anchor="middle">'
                   "no trial to show</text>")
    out.append("</svg>")
    return "\n".join(out)


def plot_hypervolume_html(points: Sequence[TrialPoint], path: str | Path, reference: tuple[float, float] = REFERENCE,
                          clean_metric: str = "clean_acc") -> Path:
    """One self-contained HTML page (inline SVG, no script, no external resource) of the hypervolume after each
    finished trial (``points`` in the order they finished): the step plot with the trials that raised it marked,
    and a table of every step (step, trial, hypervolume, improved yes/no); the reference point is in the title."""
    label = clean_label(clean_metric)
    steps = hypervolume_steps(points, reference)
    title = _history_title(reference)
    rows = []
    for point, s in zip(points, steps, strict=True):
        cells = "".join(f"<td>{_esc(c)}</td>" for c in (s.step, point.label, f"{s.hypervolume:.4f}",
                                                          "yes" if s.improved else "no"))
        rows.append(f'<tr class="{"improved" if s.improved else "flat"}" data-step="{s.step}" '
                    f'data-trial="{_esc(s.trial_id)}">{cells}</tr>')
    table = ('<table class="history-table" id="history-table"><caption>hypervolume after each finished trial'
             "</caption><thead><tr><th>step</th><th>trial</th><th>hypervolume</th><th>improved</th></tr></thead>"
             "<tbody>\n" + "\n".join(rows) + "\n</tbody></table>")
    explained = (f"Area dominated by the front of ({label}, robust accuracy) over the reference point "
                 f"({reference_text(reference)}); diverged trials and trials below the clean-accuracy floor count as "
                 "finished but never raise it.")
    page = _html_page(title, _HISTORY_CSS, [
        f'<p class="summary">{_esc(_history_summary(steps))}</p>',
        f'<p class="summary">{_esc(explained)}</p>',
        _history_svg(points, steps, label),
        table,
    ])
    return write_text(Path(path), page)


def write_artifacts(
    points: Sequence[TrialPoint], folder: str | Path, title: str | None = None, clean_metric: str = "clean_acc",
    finish_order: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Write ``pareto.csv``, ``pareto.png`` and ``pareto.html`` into ``folder``, the clean objective named after
    ``clean_metric`` (:data:`CLEAN_METRICS`) in each; ``title`` defaults to one naming it. Given ``finish_order``
    (every point's trial id, first finished first), also ``hypervolume_history.csv``, ``.png`` and ``.html``
    (:func:`hypervolume_history`, reference point :data:`REFERENCE`).

    Returns their paths under the keys ``csv``, ``png`` and ``html`` (and ``hypervolume_csv``, ``hypervolume_png``,
    ``hypervolume_html``).
    """
    clean_label(clean_metric)  # refused before any file is written
    ordered = None if finish_order is None else in_finish_order(points, finish_order)  # likewise
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "csv": write_front_csv(points, folder / "pareto.csv", clean_metric),
        "png": plot_png(points, folder / "pareto.png", title=title, clean_metric=clean_metric),
        "html": plot_html(points, folder / "pareto.html", title=title, clean_metric=clean_metric),
    }
    if ordered is not None:
        files["hypervolume_csv"] = write_hypervolume_csv(ordered, folder / f"{HISTORY_STEM}.csv")
        files["hypervolume_png"] = plot_hypervolume_png(ordered, folder / f"{HISTORY_STEM}.png",
                                                        clean_metric=clean_metric)
        files["hypervolume_html"] = plot_hypervolume_html(ordered, folder / f"{HISTORY_STEM}.html",
                                                          clean_metric=clean_metric)
    return files
