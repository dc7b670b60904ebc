"""``distat report <search dir>``: the paper-style table of a search (one row per method, clean and robust
accuracy per attack and static set, each with its interval and n), from the search folder alone.

Numbers come from the test stage (``distat evaluate``) when it has run, else from the search's own dev
evaluation (said in the table's title and notes). Rows are each method's best trial chosen on dev numbers
(:data:`distat.tracking.pareto.BEST_RULE`), or every trial on the front with ``all_front``. Each robust column
holds numbers of one threat-model spec: rows measured under different specs are refused (one line naming both
hashes). The table goes to stdout as Markdown and into ``<search dir>/report/`` as Markdown, CSV, LaTeX and
HTML, which are also attached to the search's MLflow parent run.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distat.errors import DistatError, first_line

REPORT_DIR = "report"
_SPLITS = ("auto", "test", "dev")
_SCORE_TITLES = {"macro_f1": "Macro-F1 %", "balanced_acc": "Balanced acc %"}


@dataclass
class ReportOutcome:
    markdown: str
    split: str
    files: dict[str, Path]
    tracking_uri: str  # where the search's runs are (credentials masked)
    warnings: list[str] = field(default_factory=list)


def _interval(metrics: dict[str, Any], lo: str, hi: str, n: str) -> Any:
    from distat.tracking.pareto import Interval

    values = [metrics.get(k) for k in (lo, hi, n)]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return None
    return Interval(float(values[0]), float(values[1]), int(values[2]))


def _value(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _robust_metrics(metrics: dict[str, Any], name: str, only: bool) -> dict[str, Any]:
    """Attack ``name``'s numbers from a trial's metrics (unprefixed): ``robust_acc.<name>`` and its siblings, or,
    for a result from before per-attack names (one attack, ``only``), the unsuffixed ones."""
    suffixed = {k.removesuffix(f".{name}"): v for k, v in metrics.items() if k.endswith(f".{name}")}
    if "robust_acc" in suffixed:
        return suffixed
    if only:
        return {k: metrics.get(k) for k in ("robust_acc", "robust_acc_lo", "robust_acc_hi", "n", "threat_spec_hash")}
    return {}


@dataclass
class _Search:
    """One search's chosen rows: (point, notes) and, once the split is known, their metrics (unprefixed)."""

    folder: Path
    scfg: Any
    chosen: list[tuple[Any, tuple[str, ...]]]
    tests: dict[str, dict[str, Any] | None]
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)


def _chosen(folder: Path, all_front: bool) -> _Search:
    from distat.search.driver import trial_points
    from distat.search.space import clean_floor
    from distat.search.state import TRIALS_DIR, SearchState
    from distat.search.test_stage import read_test_metrics
    from distat.tracking.pareto import best_per_method, non_dominated

    scfg = SearchState.load(folder).search
    points = trial_points(folder, clean_floor(scfg), scfg)
    if not points:
        raise DistatError(f"{folder}: no finished trial yet")
    if all_front:
        chosen = [(p, ("front",)) for p, on in zip(points, non_dominated(points), strict=True) if on]
    else:
        chosen = [(p, ()) for p in best_per_method(points).values()]
    if not chosen:
        raise DistatError(f"{folder}: no feasible trial (every trial diverged or fell below the clean floor)")
    tests = {p.trial_id: read_test_metrics(folder / TRIALS_DIR / p.trial_id) for p, _ in chosen}
    return _Search(folder, scfg, chosen, tests)


def _load_metrics(search: _Search, split: str) -> None:
    from distat.search.state import finished_trials
    from distat.search.test_stage import PREFIX

    if split == "test":
        missing = [t for t, v in search.tests.items() if v is None]
        if missing:
            raise DistatError(f"no test numbers for trial(s) {', '.join(missing)}: run `distat evaluate {search.folder} "
                              + " ".join(f"--trial {t}" for t in missing) + "` first")
        search.metrics = {t: {k.removeprefix(PREFIX): v for k, v in (m or {}).items()} for t, m in search.tests.items()}
        return
    finals = finished_trials(search.folder)
    for p, _ in search.chosen:
        metrics = dict(finals[p.trial_id].metrics)
        clean = p.intervals.get("clean_acc")
        if clean is not None:
            metrics.update(clean_acc_lo=clean.lo, clean_acc_hi=clean.hi, clean_n=clean.n)
        search.metrics[p.trial_id] = metrics


def _spec_of(search: _Search, trial_id: str, split: str, name: str | None, digest: Any) -> Any:
    """The whole spec behind ``digest`` when its file is there (a refusal can then say what differs), else the
    hash itself (None when the result has none)."""
    from distat.attacks.spec import read_spec
    from distat.search.state import TRIALS_DIR
    from distat.search.test_stage import STAGE_DIR

    if not isinstance(digest, str):
        return None
    folder = search.folder / TRIALS_DIR / trial_id
    try:
        spec = read_spec(folder / STAGE_DIR if split == "test" else folder, name)
    except DistatError:
        spec = None
    return spec if spec is not None and spec.hash == digest else digest


def _outcomes(search: _Search, trial_id: str, split: str, name: str) -> dict[int, float] | None:
    """Per attacked example of attack ``name``: 1.0 when the model was still right under attack, by the example's
    index in the attacked subset; None when the records are not there (a static set, an older result)."""
    from distat.attacks.metrics import read_records_csv
    from distat.search.evaluation import attack_stem
    from distat.search.state import TRIALS_DIR
    from distat.search.test_stage import STAGE_DIR

    att = search.scfg.evaluate.attack(search.scfg.attack) if split == "test" else search.scfg.attack
    if name not in [r.key for r in att.attacks]:
        return None
    folder = search.folder / TRIALS_DIR / trial_id
    path = (folder / STAGE_DIR if split == "test" else folder) / f"{attack_stem(att, name)}.csv"
    if not path.is_file():
        return None
    try:
        return {r.index: float(r.status == "failed") for r in read_records_csv(path)}
    except DistatError:
        return None


def _paired_notes(searches: list[_Search], split: str, names: list[str], rows: list[Any]) -> list[str]:
    """Per recipe column: each row's robust accuracy minus the column's best, paired over the same attacked
    examples (bootstrap 95%): what the data resolves even where two Wilson intervals overlap."""
    from distat.paired import paired_difference

    row_search = [(s, p.trial_id) for s in searches for p, _ in s.chosen]
    notes = []
    for name in names:
        scores = {i: _outcomes(s, t, split, name) for i, (s, t) in enumerate(row_search)}
        ranked = [i for i in range(len(rows)) if scores[i] and rows[i].cells.get(name) is not None
                  and rows[i].cells[name].value is not None]
        if len(ranked) < 2:
            continue
        best = max(ranked, key=lambda i: rows[i].cells[name].value)
        parts = []
        for i in ranked:
            if i == best:
                continue
            common = sorted(set(scores[i]) & set(scores[best]))
            if not common:
                continue
            d = paired_difference([scores[i][k] for k in common], [scores[best][k] for k in common])
            parts.append(f"{rows[i].label} ({rows[i].trial_id}) {d.describe()}" + ("" if d.resolved else " ~"))
        if parts:
            notes.append(f"paired Δ {name} RA vs {rows[best].label} ({rows[best].trial_id}), the same examples, "
                         f"bootstrap 95%: " + "; ".join(parts))
    if notes:
        notes.append("~: the paired interval holds 0 (not resolved by these examples)")
    return notes


def build_table(search_dirs: Path | list[Path], *, split: str = "auto", all_front: bool = False) -> Any:
    """The :class:`~distat.tracking.report.ReportTable` of the searches in ``search_dirs`` (rows of all of them in
    one table; see the module docstring)."""
    from distat.attacks.spec import HASH_KEY, check_same_spec
    from distat.tracking.pareto import BEST_RULE
    from distat.tracking.report import Cell, Column, ReportTable, Row

    if split not in _SPLITS:
        raise DistatError(f"--split {split!r}: choose from {', '.join(_SPLITS)}")
    folders = [search_dirs] if isinstance(search_dirs, Path) else list(search_dirs)
    searches = [_chosen(folder, all_front) for folder in folders]
    if split == "auto":
        split = "test" if any(v is not None for s in searches for v in s.tests.values()) else "dev"
    for search in searches:
        _load_metrics(search, split)
    several_searches = len(searches) > 1

    def source(search: _Search, trial_id: str) -> str:
        return f"trial {trial_id}" + (f" of search {search.scfg.name}" if several_searches else "")

    # columns: every attack of every search, in order of first appearance; the objective when any has several
    names: list[str] = []
    objectives = set()
    for search in searches:
        att = search.scfg.evaluate.attack(search.scfg.attack) if split == "test" else search.scfg.attack
        names += [n for n in att.names if n not in names]
        if len(att.names) > 1:
            objectives.add(att.objective)
    columns = [Column("clean", "Clean %")]
    # imbalanced data: the clean score a search maximised beside accuracy (no interval: not a count)
    scores = [m for m in dict.fromkeys(s.scfg.search.clean_metric for s in searches) if m != "clean_acc"]
    columns += [Column(m, _SCORE_TITLES[m]) for m in scores]
    robust: dict[str, dict[tuple[int, str], dict[str, Any]]] = {}
    for name in names:
        robust[name] = {(i, t): _robust_metrics(m, name, len(names) == 1)
                        for i, s in enumerate(searches) for t, m in s.metrics.items()}
        hashes = {source(searches[i], t): _spec_of(searches[i], t, split, None if len(names) == 1 else name,
                                                   r.get(HASH_KEY))
                  for (i, t), r in robust[name].items() if r}
        check_same_spec(hashes, allow_missing=True, what=f"robust accuracies under {name}")
        digest = next((h for h in hashes.values() if h), None)
        columns.append(Column(name, f"{name} RA %", digest if isinstance(digest, str) or digest is None
                              else digest.hash))
    if objectives:
        title = "worst-case RA %" if objectives == {"min"} else f"objective RA % ({', '.join(sorted(objectives))})"
        hashes = {source(s, t): m.get(HASH_KEY) for s in searches for t, m in s.metrics.items()
                  if isinstance(m.get(HASH_KEY), str)}
        check_same_spec(hashes, allow_missing=True, what="robust objectives")
        columns.append(Column("objective", title, next(iter(hashes.values()), None)))
    rows = []
    for i, search in enumerate(searches):
        for point, notes in search.chosen:
            m = search.metrics[point.trial_id]
            cells = {"clean": Cell(_value(m, "clean_acc"), _interval(m, "clean_acc_lo", "clean_acc_hi", "clean_n"))}
            cells.update({score: Cell(_value(m, score)) for score in scores})
            for name in names:
                r = robust[name][(i, point.trial_id)]
                if r:
                    cells[name] = Cell(_value(r, "robust_acc"), _interval(r, "robust_acc_lo", "robust_acc_hi", "n"))
            if objectives:
                cells["objective"] = Cell(_value(m, "robust_acc"),
                                          _interval(m, "robust_acc_lo", "robust_acc_hi", "robust_acc_n"))
            label = point.method or "?"
            extra = (f"search {search.scfg.name}",) if several_searches else ()
            rows.append(Row(label, point.trial_id, cells, (*notes, *extra)))
    where = "test split (distat evaluate)" if split == "test" else "dev split (the search's own evaluation)"
    notes = [f"numbers on the {where}; RA = accuracy under attack",
             *_paired_notes(searches, split, names, rows)]
    if split == "dev":
        notes.append("held-out test numbers: distat evaluate on the search folder, then distat report again")
    rule = "every trial on each search's (dev) Pareto front" if all_front else BEST_RULE
    title = " + ".join(f"search {s.scfg.name}" for s in searches)
    return ReportTable(title=f"{title} — {split} split", split=split, rule=rule, columns=tuple(columns),
                       rows=tuple(rows), notes=tuple(notes))


def report(search_dir: str | os.PathLike[str], *more: str | os.PathLike[str], split: str = "auto",
           all_front: bool = False, tracking_uri: str | None = None, log_mlflow: bool = True) -> ReportOutcome:
    """Build the table (of ``search_dir`` and the ``more`` searches beside it, in one table), write it into
    ``<search dir>/report/`` and onto the first search's MLflow parent run (``tracking_uri``: where the tracking
    server is now, default the one the search used)."""
    from distat.app.search import fs_path
    from distat.search.state import SearchState
    from distat.tracking.report import to_markdown, write_report

    folder = fs_path(search_dir, "search folder").resolve()
    others = [fs_path(d, "search folder").resolve() for d in more]
    table = build_table([folder, *others], split=split, all_front=all_front)
    files = write_report(table, folder / REPORT_DIR)
    from distat.tracking.mlflow import Tracker, redact

    warnings = []
    state = SearchState.load(folder)
    uri = tracking_uri or state.tracking_uri
    if log_mlflow:
        try:
            tracker = Tracker(uri, state.search.name, folder)
            tracker.log_artifacts(tracker.parent_id, folder / REPORT_DIR)
        except Exception as e:  # noqa: BLE001 - any tracking failure: the report is on disk
            warnings.append(f"distat: warning: the report was not attached to MLflow ({type(e).__name__}: "
                            f"{redact(first_line(e))}); it is in {folder / REPORT_DIR}")
    return ReportOutcome(markdown=to_markdown(table), split=table.split, files=files, tracking_uri=redact(uri),
                         warnings=warnings)
