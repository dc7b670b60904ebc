"""The Pareto front of (clean_acc, robust_acc): non-dominated set and ties on hand-made points, hypervolume,
the trial table and its CSV, the PNG plot, and the self-contained HTML plot rendered in headless Chromium."""

from __future__ import annotations

import itertools
import math
import random
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from distat.tracking.pareto import (
    DOMINATED_COLOR,
    FRONT_COLOR,
    TrialPoint,
    front_table,
    hypervolume,
    non_dominated,
    pareto_front,
    plot_html,
    plot_png,
    write_artifacts,
    write_front_csv,
)

XSS = "<script>alert(1)</script>"


def pts(*coords: tuple[float, float], **kwargs) -> list[TrialPoint]:
    return [TrialPoint(f"t{i}", c, r, **kwargs) for i, (c, r) in enumerate(coords)]


def brute_force(points: list[TrialPoint]) -> list[bool]:
    """The definition, O(n^2): on the front iff valid and no valid point dominates it."""

    def valid(p: TrialPoint) -> bool:
        return not p.diverged and math.isfinite(p.clean_acc) and math.isfinite(p.robust_acc)

    def dominates(p: TrialPoint, q: TrialPoint) -> bool:
        ge = p.clean_acc >= q.clean_acc and p.robust_acc >= q.robust_acc
        return ge and (p.clean_acc > q.clean_acc or p.robust_acc > q.robust_acc)

    return [valid(q) and not any(valid(p) and dominates(p, q) for p in points) for q in points]


# ------------------------------------------------------------------------------------------ non_dominated


def test_simple_five_points():
    points = pts((0.9, 0.1), (0.8, 0.3), (0.7, 0.2), (0.6, 0.5), (0.5, 0.4))
    # (0.7, 0.2) is dominated by (0.8, 0.3); (0.5, 0.4) by (0.6, 0.5)
    assert non_dominated(points) == [True, True, False, True, False]
    assert [p.trial_id for p in pareto_front(points)] == ["t0", "t1", "t3"]


def test_identical_points_are_both_on_the_front():
    points = pts((0.8, 0.4), (0.8, 0.4), (0.7, 0.3))
    assert non_dominated(points) == [True, True, False]


def test_duplicates_that_are_dominated_stay_off():
    points = pts((0.7, 0.3), (0.7, 0.3), (0.8, 0.4))
    assert non_dominated(points) == [False, False, True]


def test_same_clean_only_the_more_robust():
    points = pts((0.8, 0.2), (0.8, 0.5), (0.8, 0.3))
    assert non_dominated(points) == [False, True, False]


def test_same_robust_only_the_more_accurate():
    points = pts((0.6, 0.4), (0.9, 0.4), (0.7, 0.4))
    assert non_dominated(points) == [False, True, False]


def test_tie_in_one_objective_across_groups():
    # (0.9, 0.5) dominates (0.8, 0.5) through clean accuracy alone
    points = pts((0.8, 0.5), (0.9, 0.5), (0.95, 0.1))
    assert non_dominated(points) == [False, True, True]


def test_single_point_and_empty():
    assert non_dominated(pts((0.5, 0.5))) == [True]
    assert non_dominated([]) == []
    assert pareto_front([]) == []


def test_points_on_a_decreasing_line_are_all_on_the_front():
    points = pts(*[(0.5 + 0.05 * i, 0.5 - 0.05 * i) for i in range(8)])
    assert non_dominated(points) == [True] * 8


def test_points_on_an_increasing_line_leave_only_the_top():
    points = pts(*[(0.5 + 0.05 * i, 0.1 + 0.05 * i) for i in range(8)])
    assert non_dominated(points) == [False] * 7 + [True]


def test_diverged_and_nan_are_excluded_and_dominate_nothing():
    points = [
        TrialPoint("good_a", 0.8, 0.3, {}),
        TrialPoint("good_b", 0.6, 0.5, {}),
        TrialPoint("diverged_top", 0.99, 0.99, {}, diverged=True),
        TrialPoint("nan_clean", math.nan, 0.9, {}),
        TrialPoint("nan_robust", 0.95, math.nan, {}),
        TrialPoint("none_robust", 0.97, None, {}),  # a trial that never reported robust metrics
        TrialPoint("inf", math.inf, 0.95, {}),
    ]
    assert non_dominated(points) == [True, True, False, False, False, False, False]
    assert hypervolume(points) == pytest.approx(0.8 * 0.3 + 0.6 * 0.2)


@pytest.mark.parametrize("seed", range(5))
def test_sweep_matches_the_definition_with_many_ties(seed):
    rng = random.Random(seed)
    # a coarse grid forces ties in each objective and exact duplicates
    points = [
        TrialPoint(f"t{i}", rng.randint(0, 6) / 6, rng.randint(0, 6) / 6, {}, diverged=rng.random() < 0.1)
        for i in range(200)
    ]
    points.append(TrialPoint("nan", math.nan, 0.5, {}))
    assert non_dominated(points) == brute_force(points)


# -------------------------------------------------------------------------------------------- hypervolume


def test_hypervolume_hand_computed():
    assert hypervolume(pts((0.8, 0.2), (0.5, 0.6))) == pytest.approx(0.8 * 0.2 + 0.5 * (0.6 - 0.2))
    assert hypervolume(pts((0.8, 0.2), (0.5, 0.6))) == pytest.approx(0.36)
    assert hypervolume(pts((0.5, 0.4))) == pytest.approx(0.2)
    assert hypervolume([]) == 0.0


def test_hypervolume_ignores_dominated_and_duplicate_points():
    base = pts((0.9, 0.1), (0.6, 0.5))
    noisy = [*base, *pts((0.5, 0.05), (0.6, 0.5), (0.9, 0.1), (0.3, 0.3))]
    assert hypervolume(noisy) == pytest.approx(hypervolume(base)) == pytest.approx(0.09 + 0.6 * 0.4)


def test_hypervolume_with_a_reference_point():
    points = pts((0.8, 0.2), (0.5, 0.6), (0.3, 0.9))
    # (0.3, 0.9) is not strictly better than the reference in clean accuracy: no contribution
    ref = (0.4, 0.1)
    expected = (0.8 - 0.4) * (0.2 - 0.1) + (0.5 - 0.4) * (0.6 - 0.2)
    assert hypervolume(points, reference=ref) == pytest.approx(expected)
    with pytest.raises(ValueError, match="finite"):
        hypervolume(points, reference=(math.nan, 0.0))


def test_hypervolume_matches_cell_counting():
    rng = random.Random(7)
    n = 20  # coordinates on a 1/20 grid: the union of boxes is a whole number of cells
    for _ in range(10):
        cells = [(rng.randint(0, n), rng.randint(0, n)) for _ in range(15)]
        points = pts(*[(c / n, r / n) for c, r in cells])
        covered = sum(
            any(i < c and j < r for c, r in cells) for i, j in itertools.product(range(n), range(n))
        )
        assert hypervolume(points) == pytest.approx(covered / n**2)


# ------------------------------------------------------------------------------------------- table and CSV


def table_points() -> list[TrialPoint]:
    return [
        TrialPoint("a", 0.70, 0.20, {"method": "pgd", "alpha": 0.01}, extra={"attack_success_rate": 0.7}),
        TrialPoint("b", 0.90, 0.10, {"method": "freelb", "k": 3}, extra={"attack_success_rate": 0.9}),
        TrialPoint("c", 0.60, 0.40, {"method": "pgd", "alpha": 0.1, "opt": {"lr": 2e-5}}),
        TrialPoint("d", 0.50, 0.30, {"method": "tavat", "alpha": 0.05}),
        TrialPoint("e", math.nan, math.nan, {"method": "pgd"}, diverged=True),
        TrialPoint("f", 0.65, 0.35, {"method": XSS}),
    ]


def test_front_table_ordering_and_columns():
    table = front_table(table_points())
    assert list(table.columns[:6]) == ["trial_id", "clean_acc", "robust_acc", "on_front", "diverged", "infeasible"]
    assert list(table.columns[6:]) == [
        "param.alpha", "param.k", "param.method", "param.opt.lr", "attack_success_rate"
    ]
    # front (c, f, a, b) by robust accuracy descending, then the rest (d, then the NaN diverged trial last)
    assert list(table["trial_id"]) == ["c", "f", "a", "b", "d", "e"]
    assert list(table["on_front"]) == [True, True, True, True, False, False]
    assert list(table["diverged"]) == [False] * 5 + [True]
    row_b = table.set_index("trial_id").loc["b"]
    assert row_b["param.k"] == 3 and row_b["param.method"] == "freelb" and pd.isna(row_b["param.alpha"])
    assert table.set_index("trial_id").loc["c", "param.opt.lr"] == pytest.approx(2e-5)
    assert table.set_index("trial_id").loc["a", "attack_success_rate"] == pytest.approx(0.7)


def test_infeasible_points_leave_the_front_and_do_not_dominate():
    # the collapsed trial (majority class, "robust" because its few correct answers are hard to flip)
    # dominates nothing once it is below the clean-accuracy floor
    collapsed = TrialPoint("collapsed", 0.60, 0.69, infeasible=True)
    good = TrialPoint("good", 0.80, 0.12)
    weaker = TrialPoint("weaker", 0.78, 0.40)
    assert non_dominated([collapsed, good, weaker]) == [False, True, True]
    assert non_dominated([TrialPoint("collapsed", 0.60, 0.69), good, weaker]) == [True, True, True]
    table = front_table([collapsed, good, weaker]).set_index("trial_id")
    assert table.loc["collapsed", "infeasible"] and not table.loc["collapsed", "on_front"]


def test_front_table_empty_and_clashing_extra():
    assert list(front_table([]).columns) == ["trial_id", "clean_acc", "robust_acc", "on_front", "diverged",
                                            "infeasible"]
    with pytest.raises(ValueError, match="clean_acc"):
        front_table([TrialPoint("x", 0.5, 0.5, {}, extra={"clean_acc": 1.0})])


def test_csv_round_trip(tmp_path):
    points = table_points()
    path = write_front_csv(points, tmp_path / "sub" / "pareto.csv")
    back = pd.read_csv(path)
    expected = front_table(points)
    assert list(back.columns) == list(expected.columns)
    assert list(back["trial_id"]) == list(expected["trial_id"])
    assert back["on_front"].tolist() == expected["on_front"].tolist()
    assert back["diverged"].tolist() == expected["diverged"].tolist()
    pd.testing.assert_series_equal(back["clean_acc"], expected["clean_acc"])
    pd.testing.assert_series_equal(back["robust_acc"], expected["robust_acc"])
    assert back.set_index("trial_id").loc["f", "param.method"] == XSS


# ---------------------------------------------------------------------------------------------------- PNG


def hex_rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def count_near(image, color: str, tol: int = 12) -> int:
    target = hex_rgb(color)
    return sum(
        n for n, px in image.convert("RGB").getcolors(maxcolors=1 << 24)
        if all(abs(a - b) <= tol for a, b in zip(px, target, strict=True))
    )


def test_png_is_a_valid_image_with_front_and_dominated_colours(tmp_path):
    from PIL import Image

    path = plot_png(table_points(), tmp_path / "pareto.png", title="test front")
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] > 300 and image.size[1] > 200
        image.load()
        assert count_near(image, FRONT_COLOR) > 50
        assert count_near(image, DOMINATED_COLOR) > 10


def test_png_of_no_points_still_renders(tmp_path):
    from PIL import Image

    with Image.open(plot_png([], tmp_path / "empty.png")) as image:
        assert image.format == "PNG"


def test_write_artifacts(tmp_path):
    paths = write_artifacts(table_points(), tmp_path / "artifacts")
    assert set(paths) == {"csv", "png", "html"}
    assert [p.name for p in paths.values()] == ["pareto.csv", "pareto.png", "pareto.html"]
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())


# --------------------------------------------------------------------------------------------------- HTML


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text of each table row."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def with_class(self, cls: str, tag: str | None = None) -> list[dict[str, str]]:
        return [a for t, a in self.tags if cls in a.get("class", "").split() and (tag is None or t == tag)]


def parse(text: str) -> Elements:
    parser = Elements()
    parser.feed(text)
    return parser


def html_points() -> list[TrialPoint]:
    points = table_points()
    points.append(TrialPoint('q"uote&<b>', 0.55, 0.25, {"note": "a & b < c"}))  # dominated by c
    points.append(TrialPoint("div_finite", 0.85, 0.05, {"method": "pgd"}, diverged=True))
    return points


# expected shapes for html_points(): front c, f, a, b; dominated d and q"uote; diverged e (NaN, not drawn) and
# div_finite (drawn as a cross)
N_FRONT, N_DOMINATED, N_DIVERGED_DRAWN = 4, 2, 1


def test_html_is_self_contained_and_escaped(tmp_path):
    text = plot_html(html_points(), tmp_path / "pareto.html", title="A <b>title</b>").read_text("utf-8")
    assert XSS not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert 'q"uote&<b>' not in text and "<b>title</b>" not in text
    assert text.count("<script") == 1
    lowered = text.lower()
    for needle in ("src=", "href=", "<link", "@import", "url(", "http://", "https://", "<iframe"):
        assert needle not in lowered, needle
    dom = parse(text)
    assert len(dom.with_class("front", "circle")) == N_FRONT
    assert len(dom.with_class("dominated", "circle")) == N_DOMINATED
    assert len(dom.with_class("diverged", "path")) == N_DIVERGED_DRAWN
    assert {a["data-trial"] for a in dom.with_class("point")} == {
        "a", "b", "c", "d", "f", 'q"uote&<b>', "div_finite"
    }
    assert [a["data-trial"] for a in dom.with_class("front-row", "tr")] == ["c", "f", "a", "b"]
    assert len(dom.with_class("front-line", "polyline")) == 1


def chromium_or_skip() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("chromium is not installed (scripts/ensure_chromium.sh installs it)")
    return exe


def run_chromium(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--hide-scrollbars", f"--user-data-dir={profile}", *args,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[str, Path]:
    exe = chromium_or_skip()
    folder = tmp_path_factory.mktemp("pareto_html")
    page = plot_html(html_points(), folder / "pareto.html")
    return exe, page


@pytest.mark.slow
def test_chromium_dom_after_script(rendered, tmp_path):
    exe, page = rendered
    dom_text = run_chromium(exe, tmp_path / "profile", "--dump-dom", page.as_uri()).stdout
    dom = parse(dom_text)
    # the script ran to its end without throwing
    assert [a.get("data-pareto-ready") for t, a in dom.tags if t == "html"] == ["1"]
    assert len(dom.with_class("point")) == N_FRONT + N_DOMINATED + N_DIVERGED_DRAWN
    assert len(dom.with_class("front", "circle")) == N_FRONT
    dominated = dom.with_class("dominated", "circle")
    assert len(dominated) == N_DOMINATED
    assert all(a["data-status"] == "dominated" for a in dominated)
    assert [a["data-trial"] for a in dom.with_class("front-row", "tr")] == ["c", "f", "a", "b"]
    # the hostile parameter value stayed text: the page's own script is the only one
    assert sum(t == "script" for t, _ in dom.tags) == 1
    assert XSS not in dom_text


@pytest.mark.slow
def test_chromium_screenshot_is_not_blank(rendered, tmp_path):
    from PIL import Image

    exe, page = rendered
    shot = tmp_path / "shot.png"
    run_chromium(exe, tmp_path / "profile", f"--screenshot={shot}", "--window-size=900,700", page.as_uri())
    with Image.open(shot) as image:
        image.load()
        assert image.size == (900, 700)
        colors = image.convert("RGB").getcolors(maxcolors=1 << 24)
        assert len(colors) > 1
        assert count_near(image, FRONT_COLOR, tol=8) > 100  # the front's dots and staircase
        assert count_near(image, DOMINATED_COLOR, tol=8) > 20  # the grey dominated dots


HARNESS = """<script>
(function () {
  var point = document.querySelector('circle.point[data-trial="c"]');
  point.dispatchEvent(new MouseEvent("mouseenter"));
  var tip = document.getElementById("pareto-tooltip");
  var row = document.querySelector('tr.front-row[data-trial="c"]');
  document.body.setAttribute("data-tip", tip.textContent);
  document.body.setAttribute("data-tip-shown", tip.style.display);
  document.body.setAttribute("data-row-highlight", String(row.classList.contains("highlight")));
  document.body.setAttribute("data-front-fill", getComputedStyle(point).fill);
  var grey = document.querySelector("circle.dominated");
  document.body.setAttribute("data-dominated-fill", getComputedStyle(grey).fill);
  document.getElementById("show-dominated").click();
  document.body.setAttribute("data-dominated-display", getComputedStyle(grey).display);
  document.body.setAttribute("data-svg-class", document.getElementById("pareto-plot").getAttribute("class"));
})();
</script>
</body>"""


@pytest.mark.slow
def test_chromium_hover_and_toggle(rendered, tmp_path):
    exe, page = rendered
    # the page plus a script that hovers a front point and unticks "show dominated", recording the effects
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text("utf-8").replace("</body>", HARNESS), encoding="utf-8")
    dom = parse(run_chromium(exe, tmp_path / "profile", "--dump-dom", probe.as_uri()).stdout)
    body = next(a for t, a in dom.tags if t == "body")
    assert body["data-tip-shown"] == "block"
    lines = body["data-tip"].splitlines()
    assert lines[:3] == ["trial c", "clean accuracy: 0.6000", "robust accuracy: 0.4000"]
    assert "alpha = 0.1" in body["data-tip"] and "opt = {\"lr\": 2e-05}" in body["data-tip"]
    assert body["data-row-highlight"] == "true"
    assert "hide-dominated" in body["data-svg-class"].split()
    assert body["data-dominated-display"] == "none"
    assert body["data-front-fill"] == "rgb({}, {}, {})".format(*hex_rgb(FRONT_COLOR))
    assert body["data-dominated-fill"] == "rgb({}, {}, {})".format(*hex_rgb(DOMINATED_COLOR))
