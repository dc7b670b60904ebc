"""Robust metrics of an attack run, per-example records, and their CSV / static-set exports.

Every attacked example becomes one :class:`AttackRecord`; :func:`summarize` turns a list of them into
:class:`RobustMetrics` with the definitions TextAttack and TextDefender use:

* ``skipped``: the model was already wrong on the clean input, so nothing was attacked;
* ``failed``: the attack did not flip a correct prediction; ``succeeded``: it did;
* ``clean_acc = (n - skipped) / n`` and ``robust_acc = failed / n`` (accuracy under attack);
* ``attack_success_rate = succeeded / (succeeded + failed)`` (0 when nothing was attackable);
* ``perturbed_word_pct``: mean of ``100 * words_perturbed / words_total`` over successful attacks;
* ``avg_queries``: mean number of model queries over the examples that were attacked (not skipped).

For imbalanced data :func:`class_scores` gives the per-class scores under attack (``robust_macro_f1``,
``robust_recall.<c>``, ...) and :func:`robust_recall_intervals` the Wilson intervals of each class's robust
recall.

Proportions carry Wilson score 95% intervals (:func:`wilson_interval`), which behave at 0/n and n/n and for
the small attack subsets a search can afford, where the normal approximation does not.

For sentence pairs only one side (``text``: the ``sentence`` / premise) is perturbed; the other side is kept
in ``other_text``. :func:`export_adversarial_tsv` writes the successful adversarial examples as a GLUE-style
TSV split, the static-attack evaluation set of the MixADA paper, which :func:`distat.data.load_dataset`
reads back.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from distat.atomic import atomic_file
from distat.errors import DataError
from distat.scores import score_predictions

log = logging.getLogger(__name__)

__all__ = [
    "AttackRecord",
    "AttackStatus",
    "RobustMetrics",
    "class_scores",
    "export_adversarial_tsv",
    "prediction_under_attack",
    "read_records_csv",
    "robust_recall_intervals",
    "summarize",
    "wilson_interval",
    "write_records_csv",
]

AttackStatus = Literal["success", "failed", "skipped"]
_STATUSES: tuple[str, ...] = ("success", "failed", "skipped")


def wilson_interval(successes: int, n: int, confidence_level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of the proportion ``successes / n`` (scipy's ``binomtest(...).proportion_ci``).

    ``n == 0`` carries no information and gives ``(0.0, 1.0)`` (scipy refuses ``n = 0``); the bounds are exactly
    0 at 0/n and 1 at n/n.
    """
    if isinstance(successes, bool) or isinstance(n, bool) or n < 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval needs 0 <= successes <= n, got {successes}/{n}")
    if n == 0:
        return 0.0, 1.0
    from scipy.stats import binomtest

    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence_level, method="wilson")
    return float(ci.low), float(ci.high)


# --------------------------------------------------------------------------------------------------
# one attacked example


@dataclass(frozen=True)
class AttackRecord:
    """The outcome of attacking one example of the evaluated subset.

    ``index`` is the example's position in that subset; ``text`` the original perturbable text and
    ``other_text`` the unperturbed side of a pair (``None`` for single-sentence tasks). ``perturbed_text`` and
    ``perturbed_pred`` are ``None`` when there is none (skipped examples; failed attacks may give the last
    text tried). ``words_perturbed`` / ``words_total`` count words of the perturbed / original text.

    Invariants checked on construction: ``skipped`` exactly when ``original_pred != label``; a success has a
    perturbed text and a prediction that differs from the label; a failure, if it has a prediction, keeps the
    label. An empty optional text is stored as ``None`` (so records round-trip through CSV exactly).
    """

    index: int
    text: str
    perturbed_text: str | None
    other_text: str | None
    label: int
    original_pred: int
    perturbed_pred: int | None
    status: AttackStatus
    num_queries: int
    words_perturbed: int
    words_total: int

    def __post_init__(self) -> None:
        for name in ("perturbed_text", "other_text"):
            if getattr(self, name) == "":
                object.__setattr__(self, name, None)
        for name in ("text", "perturbed_text", "other_text"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"AttackRecord {self.index}: {name} must be text, got {type(value).__name__}")
        if self.text is None:
            raise ValueError(f"AttackRecord {self.index}: text is required")
        for name in ("index", "label", "original_pred", "num_queries", "words_perturbed", "words_total"):
            _check_int(self, name, getattr(self, name), minimum=0)
        if self.perturbed_pred is not None:
            _check_int(self, "perturbed_pred", self.perturbed_pred, minimum=0)
        if self.status not in _STATUSES:
            raise ValueError(
                f"AttackRecord {self.index}: status {self.status!r} is not one of {', '.join(_STATUSES)}"
            )
        wrong_on_clean = self.original_pred != self.label
        if wrong_on_clean != (self.status == "skipped"):
            raise ValueError(
                f"AttackRecord {self.index}: status {self.status!r} but the clean prediction "
                f"{self.original_pred} {'differs from' if wrong_on_clean else 'equals'} the label {self.label} "
                "(skipped means exactly: wrong on the clean input)"
            )
        if self.status == "success":
            if self.perturbed_text is None or self.perturbed_pred is None:
                raise ValueError(f"AttackRecord {self.index}: a success needs perturbed_text and perturbed_pred")
            if self.perturbed_pred == self.label:
                raise ValueError(f"AttackRecord {self.index}: a success must change the prediction away "
                                 f"from the label {self.label}")
            if self.words_total < 1:
                raise ValueError(f"AttackRecord {self.index}: a success needs words_total >= 1")
        if self.status == "failed" and self.perturbed_pred is not None and self.perturbed_pred != self.label:
            raise ValueError(f"AttackRecord {self.index}: a failed attack left the prediction at "
                             f"{self.perturbed_pred}, not the label {self.label}; that is a success")

    def to_dict(self) -> dict[str, Any]:
        """The record as a flat dict of plain values (JSON-serialisable)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AttackRecord:
        """A record from :meth:`to_dict`'s output; keys not naming a field are ignored."""
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in data]
        if missing:
            raise ValueError(f"AttackRecord.from_dict: missing key(s) {', '.join(missing)}")
        return cls(**{name: data[name] for name in names})


def _check_int(record: AttackRecord, name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"AttackRecord {record.index}: {name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"AttackRecord {record.index}: {name} must be >= {minimum}, got {value}")


# --------------------------------------------------------------------------------------------------
# aggregate metrics


@dataclass(frozen=True)
class RobustMetrics:
    """Robust metrics of one attack run; field names are distat's stable metric names."""

    n: int
    clean_acc: float
    robust_acc: float
    attack_success_rate: float
    perturbed_word_pct: float
    avg_queries: float
    skipped: int
    failed: int
    succeeded: int
    clean_acc_ci: tuple[float, float]
    robust_acc_ci: tuple[float, float]
    attack_success_rate_ci: tuple[float, float]

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """A flat dict of floats (for MLflow / Tune); an interval ``x_ci`` becomes ``x_lo`` and ``x_hi``."""
        out: dict[str, float] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                base = f.name.removesuffix("_ci")
                out[f"{prefix}{base}_lo"] = float(value[0])
                out[f"{prefix}{base}_hi"] = float(value[1])
            else:
                out[f"{prefix}{f.name}"] = float(value)
        return out


def summarize(records: Sequence[AttackRecord]) -> RobustMetrics:
    """Aggregate per-example records into :class:`RobustMetrics` (an empty list gives zeros, CIs (0, 1))."""
    n = len(records)
    skipped = sum(r.status == "skipped" for r in records)
    failed = sum(r.status == "failed" for r in records)
    succeeded = sum(r.status == "success" for r in records)
    attacked = succeeded + failed
    pcts = [100.0 * r.words_perturbed / r.words_total for r in records if r.status == "success"]
    queries = [r.num_queries for r in records if r.status != "skipped"]
    return RobustMetrics(
        n=n,
        clean_acc=(n - skipped) / n if n else 0.0,
        robust_acc=failed / n if n else 0.0,
        attack_success_rate=succeeded / attacked if attacked else 0.0,
        perturbed_word_pct=sum(pcts) / len(pcts) if pcts else 0.0,
        avg_queries=sum(queries) / len(queries) if queries else 0.0,
        skipped=skipped,
        failed=failed,
        succeeded=succeeded,
        clean_acc_ci=wilson_interval(n - skipped, n),
        robust_acc_ci=wilson_interval(failed, n),
        attack_success_rate_ci=wilson_interval(succeeded, attacked),
    )


# --------------------------------------------------------------------------------------------------
# per-class scores under attack (imbalanced data)


def prediction_under_attack(record: AttackRecord) -> int:
    """The model's answer on ``record`` once attacked: its clean prediction when skipped (already wrong, so
    nothing was attacked), the label when the attack failed, the perturbed prediction when it succeeded."""
    if record.status == "skipped":
        return record.original_pred
    if record.status == "failed":
        return record.label
    assert record.perturbed_pred is not None  # AttackRecord guarantees it for a success
    return record.perturbed_pred


def class_scores(records: Sequence[AttackRecord], num_labels: int, prefix: str = "robust_") -> dict[str, float]:
    """Per-class scores of the predictions under attack (:func:`prediction_under_attack`) against the gold labels,
    as :func:`distat.scores.score_predictions` defines them, flat with keys preceded by ``prefix``:
    ``robust_acc`` (equal to :func:`summarize`'s ``robust_acc``), ``robust_macro_f1``, ``robust_balanced_acc``,
    ``robust_majority_rate`` (of the attacked subset's gold labels) and per label ``c`` ``robust_precision.<c>``,
    ``robust_recall.<c>``, ``robust_f1.<c>`` and ``robust_support.<c>`` (how many attacked examples are ``c``).

    ``robust_recall.<c>`` is the fraction of the class-``c`` examples still classified ``c`` under attack; for a
    spam filter, the share of spam made to pass is ``1 - robust_recall.<spam>``. Raises ``ValueError`` when a
    label or prediction is outside ``0 .. num_labels - 1``.
    """
    scores = score_predictions([r.label for r in records], [prediction_under_attack(r) for r in records],
                               num_labels)
    return scores.as_dict(prefix)


def robust_recall_intervals(records: Sequence[AttackRecord], num_labels: int, prefix: str = "robust_",
                            confidence_level: float = 0.95) -> dict[str, float]:
    """Wilson intervals (:func:`wilson_interval`) of each class's robust recall, as ``robust_recall_lo.<c>`` and
    ``robust_recall_hi.<c>`` (``prefix`` replaces ``robust_``). A class with no attacked example gets ``(0, 1)``:
    its robust recall is unknown, which is why ``attack.stratify`` exists."""
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"robust_recall_intervals: num_labels must be a positive integer, got {num_labels!r}")
    kept = [0] * num_labels
    support = [0] * num_labels
    for r in records:
        if not 0 <= r.label < num_labels:
            raise ValueError(f"robust_recall_intervals: record {r.index} has label {r.label}, "
                             f"outside 0..{num_labels - 1}")
        support[r.label] += 1
        # still classified as its class under attack: exactly the failed attacks (skipped ones were wrong already)
        kept[r.label] += r.status == "failed"
    out: dict[str, float] = {}
    for c in range(num_labels):
        lo, hi = wilson_interval(kept[c], support[c], confidence_level)
        out[f"{prefix}recall_lo.{c}"] = lo
        out[f"{prefix}recall_hi.{c}"] = hi
    return out


# --------------------------------------------------------------------------------------------------
# CSV of every attacked example

_CSV_COLUMNS = (
    "index", "status", "label", "original_pred", "perturbed_pred", "num_queries", "words_perturbed",
    "words_total", "text", "perturbed_text", "other_text",
)
_INT_COLUMNS = frozenset({"index", "label", "original_pred", "num_queries", "words_perturbed", "words_total"})
_OPTIONAL_COLUMNS = frozenset({"perturbed_pred", "perturbed_text", "other_text"})


def write_records_csv(records: Sequence[AttackRecord], path: str | os.PathLike[str]) -> Path:
    """Write every record to a UTF-8 CSV file (one row per example, ``None`` as an empty field)."""
    out = Path(path)
    with atomic_file(out) as part, part.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(_CSV_COLUMNS)
        for record in records:
            row = record.to_dict()
            writer.writerow(["" if row[c] is None else row[c] for c in _CSV_COLUMNS])
    return out


def read_records_csv(path: str | os.PathLike[str]) -> list[AttackRecord]:
    """Read records written by :func:`write_records_csv`; a malformed file raises a one-line DataError."""
    source = Path(path)
    try:
        fh = source.open(encoding="utf-8", newline="")
    except OSError as exc:
        raise DataError(f"cannot read attack records {source}: {exc.strerror or exc}") from None
    records: list[AttackRecord] = []
    with fh:
        reader = csv.DictReader(fh)
        try:
            header = reader.fieldnames or []
            missing = [c for c in _CSV_COLUMNS if c not in header]
            if missing:
                raise DataError(f"{source}: not an attack-records CSV (no column {', '.join(missing)})")
            for row in reader:
                where = f"{source}, line {reader.line_num}"
                records.append(_record_from_row(row, where))
        except csv.Error as exc:
            raise DataError(f"{source}, line {reader.line_num}: not parseable as CSV ({exc})") from None
        except UnicodeDecodeError as exc:
            raise DataError(f"{source} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return records


def _record_from_row(row: Mapping[str, str | None], where: str) -> AttackRecord:
    values: dict[str, Any] = {}
    for column in _CSV_COLUMNS:
        raw = row.get(column)
        if raw is None:
            raise DataError(f"{where}: too few fields (no {column!r})")
        if column in _OPTIONAL_COLUMNS and raw == "":
            values[column] = None
        elif column in _INT_COLUMNS or column == "perturbed_pred":
            try:
                values[column] = int(raw)
            except ValueError:
                raise DataError(f"{where}: {column} {raw!r} is not an integer") from None
        else:
            values[column] = raw
    try:
        return AttackRecord.from_dict(values)
    except ValueError as exc:
        raise DataError(f"{where}: {exc}") from None


# --------------------------------------------------------------------------------------------------
# static adversarial set

# GLUE's column order for the sentence pairs distat.data recognises: (first, second).
_PAIR_ORDER = (("question", "sentence"), ("premise", "hypothesis"), ("sentence1", "sentence2"))


def _clean_field(text: str) -> str:
    return text.replace("\r\n", " ").replace("\t", " ").replace("\n", " ").replace("\r", " ")


def export_adversarial_tsv(
    records: Sequence[AttackRecord],
    path: str | os.PathLike[str],
    text_field: str = "sentence",
    other_field: str | None = None,
) -> int:
    """Write the perturbed texts of the successful attacks as a GLUE-style TSV split; returns its row count.

    The header is ``sentence\\tlabel`` (single sentences) or e.g. ``question\\tsentence\\tlabel`` (pairs,
    ``other_field`` naming the unperturbed side); labels are the gold labels. Tabs and line breaks inside a
    text become spaces and fields holding ``"`` are CSV-quoted, so ``load_dataset(path.parent,
    splits=[path.stem])`` reads back exactly the texts written. With no successful attack only the header is
    written (a warning is logged; such a file has no data rows to load).
    """
    if not text_field or text_field == other_field or "label" in (text_field, other_field):
        raise ValueError(f"export_adversarial_tsv: bad column names {text_field!r}, {other_field!r}")
    chosen = [r for r in records if r.status == "success"]
    pairs = [r.index for r in chosen if r.other_text is not None]
    if other_field is None and pairs:
        raise ValueError(f"record {pairs[0]} is a sentence pair (has other_text): pass other_field, "
                         "e.g. other_field='question'")
    if other_field is not None and len(pairs) != len(chosen):
        lone = next(r.index for r in chosen if r.other_text is None)
        raise ValueError(f"other_field={other_field!r} but record {lone} has no other_text")
    if other_field is None:
        header = [text_field, "label"]
    elif (text_field, other_field) in _PAIR_ORDER:
        header = [text_field, other_field, "label"]
    else:
        header = [other_field, text_field, "label"]
    out = Path(path)
    with atomic_file(out) as part, part.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(header)
        for record in chosen:
            cell = {text_field: record.perturbed_text, other_field: record.other_text, "label": record.label}
            writer.writerow([_clean_field(cell[c]) if isinstance(cell[c], str) else cell[c] for c in header])
    if not chosen:
        log.warning("export_adversarial_tsv: no successful attack among %d records; %s has no rows",
                    len(records), out)
    return len(chosen)
