"""The paper-style report table (``distat.tracking.report``): a 3-row, 4-column table with a missing cell rendered
as Markdown, CSV, LaTeX and HTML; every number and interval in every format, the CSV read back exactly, text
escaped (LaTeX underscores, HTML ``<script>``), the bold / † rule (best, and intervals overlapping the best's),
``n`` once per column or per cell, the table's checks and the atomic files of ``write_report``."""

from __future__ import annotations

import csv
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from distat.attacks.metrics import wilson_interval
from distat.errors import DistatError
from distat.tracking.pareto import Interval
from distat.tracking.report import (
    MARKER,
    MISSING,
    Cell,
    Column,
    ReportTable,
    Row,
    cell_marks,
    csv_columns,
    to_csv,
    to_html,
    to_latex,
    to_markdown,
    write_report,
)

XSS = "<script>alert(1)</script>"


def counted(correct: int, n: int) -> Cell:
    """A cell from counts, as the report application builds it: the proportion and its Wilson interval."""
    lo, hi = wilson_interval(correct, n)
    return Cell(correct / n, Interval(lo, hi, n))


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


@pytest.fixture
def table() -> ReportTable:
    """3 rows × 4 columns. ``bae`` has a different n per row (n printed per cell); ``advglue`` is missing for
    two rows (one absent key, one None value). Expected marks, worked out from the Wilson intervals:
    clean: free_lb best [89.7, 93.4], adaptive_pgd [87.2, 91.3] overlaps it, the XSS row [77.5, 82.8] does not;
    textfooler: XSS best [47.6, 56.3], the others (≤ 44.4) do not overlap; bae: free_lb best [37.2, 54.7],
    both others overlap; advglue: adaptive_pgd the only value, best."""
    columns = (
        Column("clean", "Clean %"),
        Column("textfooler", "TextFooler RA %", "a1b2c3d4e5f6"),
        Column("bae", "BAE RA %", "0f9e8d7c6b5a"),
        Column("advglue", "AdvGLUE RA %", "77aa88bb99cc"),
    )
    rows = (
        Row("adaptive_pgd", "3f2a9c1e",
            {"clean": counted(780, 872), "textfooler": counted(200, 500), "bae": counted(40, 100),
             "advglue": counted(60, 148)}, notes=("on the front",)),
        Row("free_lb", "aa11bb22", {"clean": counted(800, 872), "textfooler": counted(150, 500),
                                    "bae": counted(55, 120)}),
        Row(XSS, "cc33dd44", {"clean": counted(700, 872), "textfooler": counted(260, 500), "bae": counted(30, 100),
                              "advglue": Cell(None)}),
    )
    return ReportTable("search demo — test split", "test", "each method's best feasible trial by dev robust accuracy.",
                       columns, rows, notes=("3 seeds per trial.",))


EXPECTED_MARKS = {
    "clean": ["overlaps_best", "best", ""],
    "textfooler": ["", "", "best"],
    "bae": ["overlaps_best", "best", "overlaps_best"],
    "advglue": ["best", "", ""],
}


def expected_text(cell: Cell | None, per_cell_n: bool) -> str:
    """The display text of one cell (without bold or marker)."""
    if cell is None or cell.value is None:
        return MISSING
    text = f"{pct(cell.value)} [{pct(cell.interval.lo)}, {pct(cell.interval.hi)}]"
    return f"{text} (n={cell.interval.n})" if per_cell_n else text


# ------------------------------------------------------------------------------------------------ marks


def test_marks_of_the_fixture(table):
    assert cell_marks(table) == EXPECTED_MARKS


def marks_of(*cells: Cell | None) -> list[str]:
    rows = tuple(Row(f"m{i}", f"t{i}", {} if c is None else {"x": c}) for i, c in enumerate(cells))
    return cell_marks(ReportTable("t", "test", "", (Column("x", "X %", "abc"),), rows))["x"]


def test_overlap_rule_is_against_the_best_interval_only():
    """B's *value* lies outside the best's interval but its interval touches it (closed: marked); C overlaps B
    but not the best (not marked: the rule is not transitive, nor "overlaps some marked value")."""
    best = Cell(0.55, Interval(0.50, 0.60, 100))
    touching = Cell(0.45, Interval(0.40, 0.50, 100))
    chained = Cell(0.35, Interval(0.30, 0.45, 100))
    apart = Cell(0.20, Interval(0.10, 0.4999, 100))
    assert marks_of(touching, best, chained, apart) == ["overlaps_best", "best", "", ""]


def test_ties_and_missing_intervals():
    # two best values are both bold, and a value overlapping either tie's interval is marked
    tie_a, tie_b = Cell(0.6, Interval(0.55, 0.65, 50)), Cell(0.6, Interval(0.45, 0.75, 20))
    near_b_only = Cell(0.5, Interval(0.40, 0.50, 50))
    assert marks_of(tie_a, near_b_only, tie_b) == ["best", "overlaps_best", "best"]
    # no interval: no marker, whichever side lacks it; best stays bold; missing cells have no mark
    assert marks_of(Cell(0.9), Cell(0.85, Interval(0.8, 0.9, 10)), None, Cell(None)) == ["best", "", "", ""]
    assert marks_of(Cell(0.9, Interval(0.8, 0.95, 10)), Cell(0.85)) == ["best", ""]
    assert marks_of(None, Cell(None)) == ["", ""]


# ------------------------------------------------------------------------------------------------ Markdown


def md_rows(text: str) -> dict[str, list[str]]:
    """The table's body rows by trial id, split into cells."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| Method"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            rows[cells[1]] = cells
    return rows


def test_markdown_holds_every_number_with_its_marks(table):
    text = to_markdown(table)
    rows = md_rows(text)
    assert list(rows) == ["3f2a9c1e", "aa11bb22", "cc33dd44"]
    for i, row in enumerate(table.rows):
        cells = rows[row.trial_id]
        for j, column in enumerate(table.columns):
            cell = row.cells.get(column.key)
            shown = expected_text(cell, per_cell_n=column.key == "bae")
            mark = EXPECTED_MARKS[column.key][i]
            if mark == "best":
                value, _, rest = shown.partition(" ")
                shown = f"**{value}** {rest}".rstrip()
            elif mark == "overlaps_best":
                shown += MARKER
            assert cells[2 + j] == shown, (row.trial_id, column.key)
    # the header block: split, every spec hash, n once per column where shared (not for bae)
    head = text.split("| Method")[0]
    assert "- split: `test`" in head and "- BAE RA %: spec `0f9e8d7c6b5a`, n per cell" in head
    for column in table.columns[1:]:
        assert f"spec `{column.spec}`" in head
    header_row = next(line for line in text.splitlines() if line.startswith("| Method"))
    assert "Clean % (n=872)" in header_row and "TextFooler RA % (n=500)" in header_row
    assert "AdvGLUE RA % (n=148)" in header_row and "BAE RA % |" in header_row
    assert "Rows: each method's best feasible trial" in text
    assert f"{MARKER}: its 95% interval overlaps the best value's interval" in text
    assert "3 seeds per trial." in text and "on the front" in rows["3f2a9c1e"][-1]
    # the label with markup is escaped: no raw tag reaches a renderer, and the row keeps its 7 cells
    assert XSS not in text and r"\<script\>" in text
    assert all(len(cells) == 7 for cells in rows.values())


def test_markdown_escapes_pipes_and_edge_underscores():
    row = Row("a|b _x_ adaptive_pgd", "t1", {"c": Cell(0.5)})
    text = to_markdown(ReportTable("t", "test", "", (Column("c", "C %"),), (row,)))
    line = next(line for line in text.splitlines() if "t1" in line)
    assert r"a\|b \_x\_ adaptive_pgd" in line  # intraword underscores are left alone (GFM keeps them literal)
    assert len(re.split(r"(?<!\\)\|", line)) == 5  # | label | trial | value |


# ------------------------------------------------------------------------------------------------ CSV


def test_csv_round_trips_every_number(table):
    text = to_csv(table)
    assert not text.startswith("#")
    records = list(csv.DictReader(io.StringIO(text)))
    assert list(records[0]) == csv_columns(table)
    assert [r["trial_id"] for r in records] == [row.trial_id for row in table.rows]
    assert records[2]["method"] == XSS and all(r["split"] == "test" for r in records)
    for record, row, i in zip(records, table.rows, range(3), strict=True):
        for column in table.columns:
            cell, key = row.cells.get(column.key), column.key
            assert record[f"{key}_spec"] == (column.spec or "")
            assert record[f"{key}_mark"] == EXPECTED_MARKS[key][i]
            if cell is None or cell.value is None:
                assert [record[f"{key}{s}"] for s in ("", "_lo", "_hi", "_n")] == ["", "", "", ""]
                continue
            assert float(record[key]) == cell.value  # exactly: full precision
            assert float(record[f"{key}_lo"]) == cell.interval.lo
            assert float(record[f"{key}_hi"]) == cell.interval.hi
            assert int(record[f"{key}_n"]) == cell.interval.n
    assert records[0]["notes"] == "on the front" and records[1]["notes"] == ""


# ------------------------------------------------------------------------------------------------ LaTeX


def tex_rows(text: str) -> dict[str, list[str]]:
    body = text.split(r"\midrule")[1].split(r"\bottomrule")[0]
    rows = {}
    for line in body.strip().splitlines():
        assert line.endswith(r" \\")
        cells = re.split(r"(?<!\\)&", line[: -len(r" \\")])
        rows[cells[1].strip()] = [c.strip() for c in cells]
    return rows


def test_latex_holds_every_number_and_escapes_text(table):
    text = to_latex(table)
    assert text.startswith(r"\begin{table}") and text.rstrip().endswith(r"\end{table}")
    assert r"\begin{tabular}{llrrrrl}" in text and r"\toprule" in text and r"\bottomrule" in text
    assert r"\caption{search demo — test split. each method's best feasible trial by dev robust accuracy.}" in text
    rows = tex_rows(text)
    assert rows[r"\texttt{3f2a9c1e}"][0] == r"adaptive\_pgd"
    assert rows[r"\texttt{aa11bb22}"][0] == r"free\_lb"
    assert rows[r"\texttt{cc33dd44}"][0] == r"\textless{}script\textgreater{}alert(1)\textless{}/script\textgreater{}"
    for i, row in enumerate(table.rows):
        cells = rows[rf"\texttt{{{row.trial_id}}}"]
        assert len(cells) == 7  # no unescaped & split a cell
        for j, column in enumerate(table.columns):
            cell = row.cells.get(column.key)
            if cell is None or cell.value is None:
                assert cells[2 + j] == "--"
                continue
            value = pct(cell.value)
            interval = f"[{pct(cell.interval.lo)}, {pct(cell.interval.hi)}]"
            if column.key == "bae":
                interval += f" (n={cell.interval.n})"
            mark = EXPECTED_MARKS[column.key][i]
            shown = rf"\textbf{{{value}}}" if mark == "best" else value
            shown += rf"\,{{\scriptsize{interval}}}" + (r"$^\dagger$" if mark == "overlaps_best" else "")
            assert cells[2 + j] == shown
    # spec hashes and shared n in the second header line; every brace balanced; % escaped everywhere
    assert r"{\scriptsize spec \texttt{a1b2c3d4e5f6}, n=500}" in text and r"{\scriptsize n=872}" in text
    assert r"{\scriptsize spec \texttt{0f9e8d7c6b5a}}" in text
    unescaped = re.sub(r"\\[{}]", "", text)
    assert unescaped.count("{") == unescaped.count("}")
    assert not re.search(r"(?<!\\)%", text)
    assert r"$^\dagger$: its 95\% interval overlaps" in text and "Split: test." in text


def test_latex_escapes_every_special_character():
    label = r"a_b & c% $d #e {f} ~g ^h \i [j]"
    text = to_latex(ReportTable("t", "test", "", (Column("c", "C %"),), (Row(label, "t1", {"c": Cell(0.5)}),)))
    cells = tex_rows(text)[r"\texttt{t1}"]
    assert cells[0] == (r"a\_b \& c\% \$d \#e \{f\} \textasciitilde{}g \textasciicircum{}h \textbackslash{}i "
                        r"{[}j{]}")


# ------------------------------------------------------------------------------------------------ HTML


class TableParser(HTMLParser):
    """Body rows of the report table as [(text, classes, bold, marker)] per cell, and every tag seen."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.rows: list[list[dict]] = []
        self.cell: dict | None = None
        self.in_body = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "tbody":
            self.in_body = True
        elif tag == "tr" and self.in_body:
            self.rows.append([])
        elif tag == "td" and self.in_body:
            self.cell = {"text": "", "classes": (attrs.get("class") or "").split(), "bold": False, "marker": False}
        elif tag == "strong" and self.cell is not None:
            self.cell["bold"] = True
        elif tag == "sup" and self.cell is not None:
            self.cell["marker"] = True

    def handle_endtag(self, tag):
        if tag == "td" and self.cell is not None:
            self.cell["text"] = " ".join(self.cell["text"].split())
            self.rows[-1].append(self.cell)
            self.cell = None
        elif tag == "tbody":
            self.in_body = False

    def handle_data(self, data):
        if self.cell is not None:
            self.cell["text"] += data


def test_html_holds_every_number_escaped_and_marked(table):
    page = to_html(table)
    assert XSS not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    parser = TableParser()
    parser.feed(page)
    assert "script" not in parser.tags and "link" not in parser.tags  # self-contained, no script at all
    assert len(parser.rows) == 3
    assert parser.rows[2][0]["text"] == XSS  # the label reads as text
    for i, (row, cells) in enumerate(zip(table.rows, parser.rows, strict=True)):
        assert cells[1]["text"] == row.trial_id
        for j, column in enumerate(table.columns):
            cell, shown = row.cells.get(column.key), cells[2 + j]
            mark = EXPECTED_MARKS[column.key][i]
            text = expected_text(cell, per_cell_n=column.key == "bae")
            assert shown["text"] == text + (MARKER if mark == "overlaps_best" else "")
            assert shown["bold"] == (mark == "best")
            assert shown["marker"] == (mark == "overlaps_best")
            assert ("overlaps-best" in shown["classes"]) == (mark == "overlaps_best")
    assert cells[-1]["text"] == ""  # the notes column of the last row
    assert parser.rows[0][-1]["text"] == "on the front"
    for column in table.columns[1:]:
        assert f"spec <code>{column.spec}</code>" in page
    assert "split: <code>test</code>" in page and "n=872" in page
    assert "Rows: each method&#x27;s best feasible trial" in page


# ------------------------------------------------------------------------------------------------ checks, files


def test_cells_and_tables_refuse_what_would_render_wrong():
    with pytest.raises(ValueError, match="proportion"):
        Cell(89.2)  # a percentage where a proportion belongs
    with pytest.raises(ValueError, match="proportion"):
        Cell(float("nan"))
    with pytest.raises(DistatError, match="'x'"):
        ReportTable("t", "test", "", (Column("x", "X"), Column("x", "X again")), ())
    with pytest.raises(DistatError, match="x_lo"):
        ReportTable("t", "test", "", (Column("x", "X"), Column("x_lo", "X low")), ())
    with pytest.raises(DistatError, match="method"):
        ReportTable("t", "test", "", (Column("method", "M"),), ())
    with pytest.raises(ValueError, match="typo"):
        ReportTable("t", "test", "", (Column("x", "X"),), (Row("m", "t", {"typo": Cell(0.5)}),))


def test_write_report_writes_four_files_atomically(table, tmp_path):
    folder = tmp_path / "out" / "report"
    paths = write_report(table, folder)
    assert paths == {"markdown": folder / "report.md", "csv": folder / "report.csv",
                     "latex": folder / "report.tex", "html": folder / "report.html"}
    assert paths["markdown"].read_text(encoding="utf-8") == to_markdown(table)
    assert paths["csv"].read_text(encoding="utf-8") == to_csv(table)
    assert paths["latex"].read_text(encoding="utf-8") == to_latex(table)
    assert paths["html"].read_text(encoding="utf-8") == to_html(table)
    assert sorted(p.name for p in folder.iterdir()) == ["report.csv", "report.html", "report.md", "report.tex"]


def test_a_table_without_intervals_or_rows_still_renders(tmp_path):
    bare = ReportTable("bare", "dev", "", (Column("clean", "Clean %"),), (Row("m", "t", {"clean": Cell(0.5)}),))
    assert "| m | t | **50.0** |" in to_markdown(bare)
    assert "- Clean %: no attack spec, no interval" in to_markdown(bare) and "Numbers:" not in to_markdown(bare)
    empty = ReportTable("empty", "test", "no feasible trial.", (Column("clean", "Clean %"),), ())
    paths = write_report(empty, tmp_path)
    assert list(csv.reader(io.StringIO(Path(paths["csv"]).read_text()))) == [csv_columns(empty)]
    assert "no feasible trial." in to_markdown(empty)
