"""The paper-style results table of a search (``distat report``): its data model and its four renderings.

A :class:`ReportTable` is what a paper's "Table 2" holds: one :class:`Row` per method (or per front trial),
one :class:`Column` per number (clean accuracy, robust accuracy under each attack and each static set), each
cell a proportion in ``[0, 1]`` with its 95% :class:`~distat.tracking.pareto.Interval` (Wilson, with its ``n``).
Which trials become rows and which numbers fill them is decided by the caller (the report application reads a
search folder); this module only checks the table is well formed and renders it:

* :func:`to_markdown`: a GitHub table with a header block naming the split, every column's threat-model spec
  hash and its ``n``; what ``distat report`` prints on stdout;
* :func:`to_csv`: one line per row, proportions at full precision (it reads back exactly);
* :func:`to_latex`: a booktabs ``tabular`` in a ``table`` float, ready to ``\\input``;
* :func:`to_html`: one self-contained page (no external resource, no script);
* :func:`write_report`: all four into a folder, each file written atomically.

Display conventions (Markdown, LaTeX, HTML): percentages with one decimal, ``89.2 [86.1, 91.7]``. A column's
``n`` is printed once in its header when every interval of that column has the same ``n``, else after each
interval as ``(n=…)``. A missing number (no cell, or a cell whose value is None: that attack was not run for
that row) is "–" (``--`` in LaTeX).

**Best and "not distinguishable from the best"** (every column is maximised: they are all accuracies). In each
column the *best* value is the highest one (raw proportion, not the rounded display; ties are all best), shown
in **bold**. A value that is not best but whose 95% interval overlaps the interval of a best value (closed
intervals: touching counts, as in :meth:`Interval.overlaps`) gets the marker † ("not distinguishable from the
best at this ``n``"), explained in a footnote line under the table. The marker needs both intervals: a cell
without an interval, or a column whose best value has none, gets no marker, since no interval is shown rather
than a guessed one. In the CSV the same verdict is the column ``<key>_mark``: ``best``, ``overlaps_best`` or
empty.
"""

from __future__ import annotations

import csv
import html
import io
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from distat.atomic import write_text
from distat.errors import DistatError
from distat.tracking.pareto import Interval

__all__ = [
    "MARKER",
    "MISSING",
    "Cell",
    "Column",
    "ReportTable",
    "Row",
    "cell_marks",
    "csv_columns",
    "to_csv",
    "to_html",
    "to_latex",
    "to_markdown",
    "write_report",
]

MARKER = "†"
MISSING = "–"
Mark = Literal["best", "overlaps_best", ""]
_FIXED_CSV = ("method", "trial_id", "split")
_PER_KEY_CSV = ("", "_lo", "_hi", "_n", "_spec", "_mark")
BOLD_NOTE = "Bold: the best value of its column."
MARKER_NOTE = (f"{MARKER}: its 95% interval overlaps the best value's interval "
               "(not distinguishable from the best at this n).")
MISSING_NOTE = f"{MISSING}: not measured."
INTERVAL_NOTE = "Numbers: % correct, with the Wilson 95% interval [lo, hi] over n examples."


# ------------------------------------------------------------------------------------------------ data model


@dataclass(frozen=True)
class Cell:
    """One number of the table: a proportion in ``[0, 1]`` (None: not measured for this row) and its 95%
    interval with the number of examples behind it (None: the count is unknown, no interval is shown)."""

    value: float | None
    interval: Interval | None = None

    def __post_init__(self) -> None:
        if self.value is not None:
            # values arrive from metric dicts (numpy scalars); a NaN would sort and print as nonsense
            value = float(self.value)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"Cell: a value is a proportion in [0, 1] or None, got {self.value!r}")
            object.__setattr__(self, "value", value)
        if self.interval is not None and not isinstance(self.interval, Interval):
            raise ValueError(f"Cell: interval must be an Interval or None, got {type(self.interval).__name__}")


@dataclass(frozen=True)
class Column:
    """One column: ``key`` names it in rows' cells and in CSV headers (``clean``, ``textfooler``, ``advglue``),
    ``title`` is its display header (``TextFooler RA %``), ``spec`` the threat-model spec hash shared by every
    number in it (None for clean accuracy, which no attack setting changes)."""

    key: str
    title: str
    spec: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key.strip() or self.key != self.key.strip():
            raise ValueError(f"Column: key must be a non-empty string without surrounding spaces, got {self.key!r}")


@dataclass(frozen=True)
class Row:
    """One row: the method's label, the trial the numbers come from, its cells by :attr:`Column.key` (a
    missing key is a missing number) and short notes (``on the front``)."""

    label: str
    trial_id: str
    cells: Mapping[str, Cell] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "label", str(self.label))
        object.__setattr__(self, "trial_id", str(self.trial_id))
        # a read-only copy: the table is frozen, and its marks are computed from the cells once rendered
        object.__setattr__(self, "cells", MappingProxyType(dict(self.cells)))
        object.__setattr__(self, "notes", tuple(str(n) for n in self.notes))
        for key, cell in self.cells.items():
            if not isinstance(cell, Cell):
                raise ValueError(f"Row {self.label!r}: cell {key!r} must be a Cell, got {type(cell).__name__}")


@dataclass(frozen=True)
class ReportTable:
    """The whole table: a title, the split its numbers are on, the rule that chose its rows (one sentence,
    printed under the table), its columns and rows in display order, and more note lines.

    Column keys must be unique and their CSV columns (:func:`csv_columns`) must not collide (two attacks named
    ``x`` and ``x_lo``, or one named ``method``), else :class:`DistatError` naming the key: the keys come from
    the names of the user's attacks and static sets. A row's cell under a key no column has would be silently
    dropped from every rendering, so it is a :class:`ValueError`.
    """

    title: str
    split: str
    rule: str
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", tuple(self.columns))
        object.__setattr__(self, "rows", tuple(self.rows))
        object.__setattr__(self, "notes", tuple(str(n) for n in self.notes))
        seen: set[str] = set()
        for column in self.columns:
            if column.key in seen:
                raise DistatError(f"report: two columns share the key {column.key!r}")
            seen.add(column.key)
        names = csv_columns(self)
        if len(set(names)) != len(names):
            clash = next(n for n in names if names.count(n) > 1)
            raise DistatError(f"report: the CSV column {clash!r} would be written twice; rename the attack or set "
                              "whose name makes it")
        for row in self.rows:
            unknown = sorted(set(row.cells) - seen)
            if unknown:
                raise ValueError(f"report: row {row.label!r} ({row.trial_id}) has cells for no column: {unknown}")


# ------------------------------------------------------------------------------------------------ shared logic


def cell_marks(table: ReportTable) -> dict[str, list[Mark]]:
    """By column key, each row's mark in row order: ``best`` (the column's highest value; ties all best),
    ``overlaps_best`` (not best, and its interval overlaps a best value's interval) or ``""``."""
    marks: dict[str, list[Mark]] = {}
    for column in table.columns:
        cells = [row.cells.get(column.key) for row in table.rows]
        values = [c.value for c in cells if c is not None and c.value is not None]
        out: list[Mark] = [""] * len(cells)
        if values:
            top = max(values)
            best = [c.interval for c in cells if c is not None and c.value == top and c.interval is not None]
            for i, c in enumerate(cells):
                if c is None or c.value is None:
                    continue
                if c.value == top:
                    out[i] = "best"
                elif c.interval is not None and any(c.interval.overlaps(b) for b in best):
                    out[i] = "overlaps_best"
        marks[column.key] = out
    return marks


def _shared_n(table: ReportTable, column: Column) -> int | None:
    """The ``n`` every interval of the column has, or None (no interval, or several ``n``)."""
    ns = {c.interval.n for row in table.rows if (c := row.cells.get(column.key)) is not None
          and c.value is not None and c.interval is not None}
    return ns.pop() if len(ns) == 1 else None


def _n_fact(table: ReportTable, column: Column, shared: int | None) -> str:
    """What the header block says of a column's ``n``: shared, per cell, or absent (no interval at all)."""
    if shared is not None:
        return f"n = {shared}"
    if any((c := row.cells.get(column.key)) is not None and c.value is not None and c.interval is not None
           for row in table.rows):
        return "n per cell"
    return "no interval"


def _pct(value: float) -> str:
    return f"{100.0 * value:.1f}"


def _interval_text(ci: Interval, show_n: bool) -> str:
    text = f"[{_pct(ci.lo)}, {_pct(ci.hi)}]"
    return f"{text} (n={ci.n})" if show_n else text


def _footnotes(table: ReportTable, marks: Mapping[str, list[Mark]]) -> list[str]:
    """The plain-text lines under the table: the row rule, what bold / † / – mean (only those that occur),
    then the table's own notes."""
    lines = [f"Rows: {table.rule}"] if table.rule else []
    flat = [m for column in marks.values() for m in column]
    if any(row.cells.get(c.key) is not None and row.cells[c.key].interval is not None
           for row in table.rows for c in table.columns):
        lines.append(INTERVAL_NOTE)
    if "best" in flat:
        lines.append(BOLD_NOTE)
    if "overlaps_best" in flat:
        lines.append(MARKER_NOTE)
    if any(row.cells.get(c.key) is None or row.cells[c.key].value is None for row in table.rows for c in table.columns):
        lines.append(MISSING_NOTE)
    return lines + list(table.notes)


def _has_notes(table: ReportTable) -> bool:
    return any(row.notes for row in table.rows)


# ------------------------------------------------------------------------------------------------ Markdown

# GitHub Markdown: a pipe ends a cell; backslash, backtick, *, [ ] and < > start markup (inline HTML too)
_MD_SPECIAL = re.compile(r"([\\`*\[\]<>|])")
# an underscore emphasises only at a word's edge (GFM leaves intraword ones alone: adaptive_pgd stays as is)
_MD_EDGE_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def _md(text: str) -> str:
    text = " ".join(str(text).split())  # a newline would end the table row
    return _MD_EDGE_UNDERSCORE.sub(r"\\_", _MD_SPECIAL.sub(r"\\\1", text))


def _md_code(text: str) -> str:
    """``text`` as a code span, unless it holds a backtick (a code span takes no escapes): then escaped text."""
    text = " ".join(str(text).split())
    return _md(text) if "`" in text or not text else f"`{text}`"


def _md_cell(cell: Cell | None, mark: Mark, show_n: bool) -> str:
    if cell is None or cell.value is None:
        return MISSING
    value = _pct(cell.value)
    text = f"**{value}**" if mark == "best" else value
    if cell.interval is not None:
        text += f" {_interval_text(cell.interval, show_n)}"
    return text + MARKER if mark == "overlaps_best" else text


def to_markdown(table: ReportTable) -> str:
    """The table as GitHub Markdown: a heading, a header block (split; each column's spec hash and its shared
    ``n``), the table, then the footnote lines (module docstring for the conventions)."""
    marks = cell_marks(table)
    shared = {c.key: _shared_n(table, c) for c in table.columns}
    lines = [f"### {_md(table.title)}", "", f"- split: {_md_code(table.split)}"]
    for column in table.columns:
        facts = [f"spec {_md_code(column.spec)}" if column.spec else "no attack spec"]
        facts.append(_n_fact(table, column, shared[column.key]))
        lines.append(f"- {_md(column.title)}: {', '.join(facts)}")
    lines.append("")
    head = ["Method", "Trial"]
    head += [_md(c.title) + (f" (n={shared[c.key]})" if shared[c.key] is not None else "") for c in table.columns]
    align = [":--", ":--"] + ["--:"] * len(table.columns)
    if _has_notes(table):
        head.append("Notes")
        align.append(":--")
    lines += [f"| {' | '.join(head)} |", f"|{'|'.join(align)}|"]
    for i, row in enumerate(table.rows):
        cells = [_md(row.label), _md(row.trial_id)]
        cells += [_md_cell(row.cells.get(c.key), marks[c.key][i], shared[c.key] is None) for c in table.columns]
        if _has_notes(table):
            cells.append(_md("; ".join(row.notes)))
        lines.append(f"| {' | '.join(cells)} |")
    lines.append("")
    lines += [_md(line) + "  " for line in _footnotes(table, marks)]  # two spaces: a line break, not a paragraph
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------------------------------------ CSV


def csv_columns(table: ReportTable) -> list[str]:
    """The CSV header: ``method, trial_id, split``, then for each column key ``<key>, <key>_lo, <key>_hi,
    <key>_n, <key>_spec, <key>_mark``, then ``notes``."""
    names = list(_FIXED_CSV)
    for column in table.columns:
        names += [f"{column.key}{suffix}" for suffix in _PER_KEY_CSV]
    return [*names, "notes"]


def to_csv(table: ReportTable) -> str:
    """One line per row. Proportions (not percentages) at full precision (``repr`` of the float: reading them
    back gives the same float); a missing value or interval is empty. ``<key>_spec`` repeats the column's spec
    hash on every line (empty for clean accuracy) because a CSV has no header block, ``<key>_mark`` is the
    bold / † verdict (``best``, ``overlaps_best`` or empty), ``notes`` the row's notes joined by ``"; "``."""
    marks = cell_marks(table)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(csv_columns(table))
    for i, row in enumerate(table.rows):
        line: list[str] = [row.label, row.trial_id, table.split]
        for column in table.columns:
            cell = row.cells.get(column.key)
            value = None if cell is None else cell.value
            ci = None if cell is None or value is None else cell.interval
            line += [
                "" if value is None else repr(value),
                "" if ci is None else repr(ci.lo),
                "" if ci is None else repr(ci.hi),
                "" if ci is None else str(ci.n),
                column.spec or "",
                marks[column.key][i],
            ]
        line.append("; ".join(row.notes))
        writer.writerow(line)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ LaTeX

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
    "|": r"\textbar{}",
    # a row or line starting with "[" would be read as the optional argument of the "\\" before it
    "[": "{[}", "]": "{]}",
}
_LATEX_RE = re.compile("|".join(re.escape(k) for k in _LATEX_SPECIAL))


def _tex(text: str) -> str:
    """Text set verbatim in LaTeX: every character with a meaning to TeX escaped, in one pass (escaping ``\\``
    first and then ``{`` would escape the braces of ``\\textbackslash{}``); "†" and "–" become TeX's own."""
    text = _LATEX_RE.sub(lambda m: _LATEX_SPECIAL[m.group(0)], " ".join(str(text).split()))
    return text.replace(MARKER, r"$^\dagger$").replace(MISSING, "--")


def _tex_cell(cell: Cell | None, mark: Mark, show_n: bool) -> str:
    if cell is None or cell.value is None:
        return "--"
    value = _pct(cell.value)
    text = rf"\textbf{{{value}}}" if mark == "best" else value
    if cell.interval is not None:
        text += rf"\,{{\scriptsize{_interval_text(cell.interval, show_n)}}}"
    return text + r"$^\dagger$" if mark == "overlaps_best" else text


def to_latex(table: ReportTable) -> str:
    """A booktabs ``tabular`` inside a ``table`` float (needs ``\\usepackage{booktabs}``): caption = title and
    row rule; a second header line gives each column's spec hash and shared ``n``; the footnote lines follow
    the tabular in ``\\footnotesize``. Every piece of text is escaped (``adaptive\\_pgd``)."""
    marks = cell_marks(table)
    shared = {c.key: _shared_n(table, c) for c in table.columns}
    notes = _has_notes(table)
    spec = "ll" + "r" * len(table.columns) + ("l" if notes else "")
    caption = table.title.rstrip().rstrip(".")
    if table.rule:
        caption += f". {table.rule}"
    head = ["Method", "Trial", *(_tex(c.title) for c in table.columns)] + (["Notes"] if notes else [])
    sub = ["", ""]
    for column in table.columns:
        facts = [rf"spec \texttt{{{_tex(column.spec)}}}"] if column.spec else []
        if shared[column.key] is not None:
            facts.append(f"n={shared[column.key]}")
        sub.append(rf"{{\scriptsize {', '.join(facts)}}}" if facts else "")
    sub += [""] if notes else []
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{_tex(caption)}}}",
        r"\label{tab:distat-report}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(head) + r" \\",
    ]
    if any(sub):
        lines.append(" & ".join(sub) + r" \\")
    lines.append(r"\midrule")
    for i, row in enumerate(table.rows):
        cells = [_tex(row.label), rf"\texttt{{{_tex(row.trial_id)}}}"]
        cells += [_tex_cell(row.cells.get(c.key), marks[c.key][i], shared[c.key] is None) for c in table.columns]
        if notes:
            cells.append(_tex("; ".join(row.notes)))
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    foot = [f"Split: {table.split}.", *_footnotes(table, marks)[1 if table.rule else 0:]]  # the rule is in the caption
    lines.append(r"\par\smallskip{\footnotesize " + r" \\ ".join(_tex(line) for line in foot) + r"\par}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ HTML

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 16px; color: #222; }
h1 { font-size: 18px; margin: 0 0 6px 0; }
ul.header { margin: 0 0 10px 0; padding-left: 18px; font-size: 13px; color: #444; }
table.report { border-collapse: collapse; font-size: 13px; }
table.report th, table.report td { border: 1px solid #ddd; padding: 4px 8px; }
table.report th { background: #f4f4f4; text-align: left; vertical-align: bottom; }
table.report td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
table.report th small, table.report td small { color: #666; }
td.best strong { color: #000; }
td.overlaps-best { background: #fff6e5; }
p.foot { font-size: 12px; color: #555; margin: 2px 0; }
code { font-size: 12px; }
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _html_cell(cell: Cell | None, mark: Mark, show_n: bool, key: str) -> str:
    classes = ["num", mark.replace("_", "-")] if mark else ["num"]
    attrs = f'class="{" ".join(classes)}" data-key="{_esc(key)}"'
    if cell is None or cell.value is None:
        return f"<td {attrs}>{MISSING}</td>"
    value = _pct(cell.value)
    text = f"<strong>{value}</strong>" if mark == "best" else value
    if cell.interval is not None:
        text += f" <small>{_esc(_interval_text(cell.interval, show_n))}</small>"
    if mark == "overlaps_best":
        text += f'<sup class="marker">{MARKER}</sup>'
    return f'<td {attrs} data-value="{cell.value!r}">{text}</td>'


def to_html(table: ReportTable) -> str:
    """One self-contained HTML page (inline CSS, no script, no external resource): title, header list (split;
    each column's spec hash and shared ``n``), the table (best cells ``<strong>``, others within noise of the
    best with a † and class ``overlaps-best``), then the footnote lines. All text is escaped."""
    marks = cell_marks(table)
    shared = {c.key: _shared_n(table, c) for c in table.columns}
    notes = _has_notes(table)
    header = [f"<li>split: <code>{_esc(table.split)}</code></li>"]
    for column in table.columns:
        facts = [f"spec <code>{_esc(column.spec)}</code>" if column.spec else "no attack spec"]
        facts.append(_n_fact(table, column, shared[column.key]))
        header.append(f"<li>{_esc(column.title)}: {', '.join(facts)}</li>")
    head = ["<th>Method</th>", "<th>Trial</th>"]
    for column in table.columns:
        n = shared[column.key]
        small = f"<br><small>n={n}</small>" if n is not None else ""
        head.append(f'<th data-key="{_esc(column.key)}">{_esc(column.title)}{small}</th>')
    if notes:
        head.append("<th>Notes</th>")
    body = []
    for i, row in enumerate(table.rows):
        cells = [f"<td>{_esc(row.label)}</td>", f"<td><code>{_esc(row.trial_id)}</code></td>"]
        cells += [_html_cell(row.cells.get(c.key), marks[c.key][i], shared[c.key] is None, c.key)
                  for c in table.columns]
        if notes:
            cells.append(f"<td>{_esc('; '.join(row.notes))}</td>")
        body.append(f'<tr data-trial="{_esc(row.trial_id)}">{"".join(cells)}</tr>')
    page = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(table.title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{_esc(table.title)}</h1>",
        f'<ul class="header">{"".join(header)}</ul>',
        '<table class="report" id="report-table">',
        f"<thead><tr>{''.join(head)}</tr></thead>",
        "<tbody>",
        *body,
        "</tbody>",
        "</table>",
        *(f'<p class="foot">{_esc(line)}</p>' for line in _footnotes(table, marks)),
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(page)


# ------------------------------------------------------------------------------------------------ files


def write_report(table: ReportTable, folder: str | Path) -> dict[str, Path]:
    """Write ``report.md``, ``report.csv``, ``report.tex`` and ``report.html`` into ``folder`` (created), each
    atomically, and return their paths by format: ``markdown``, ``csv``, ``latex``, ``html``. Everything is
    rendered before the first file is written, so a table that fails to render leaves the folder as it was."""
    folder = Path(folder)
    texts = {
        "markdown": ("report.md", to_markdown(table)),
        "csv": ("report.csv", to_csv(table)),
        "latex": ("report.tex", to_latex(table)),
        "html": ("report.html", to_html(table)),
    }
    return {fmt: write_text(folder / name, text) for fmt, (name, text) in texts.items()}
