"""The Pareto front of (clean_acc, robust_acc): non-dominated set and ties on hand-made points, hypervolume,
the trial table and its CSV, the PNG plot, and the self-contained HTML plot rendered in headless Chromium; the
noise-aware front: Wilson intervals from recorded counts, "within noise" marking, method names, the search
summary's precision line and the printed front; the hypervolume history (values, artifacts, the order trials
finished, the printed line, and the MLflow parent run's ``hypervolume`` steps from the callback and the finish)."""

from __future__ import annotations

import dataclasses
import itertools
import json
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
    WITHIN_NOISE_COLOR,
    Interval,
    TrialPoint,
    front_table,
    hypervolume,
    hypervolume_history,
    hypervolume_steps,
    non_dominated,
    pareto_front,
    plot_html,
    plot_png,
    within_noise,
    write_artifacts,
    write_front_csv,
)

XSS = "<script>alert(1)</script>"
CORE = ["trial_id", "method", "clean_acc", "clean_acc_lo", "clean_acc_hi", "clean_acc_n", "robust_acc",
        "robust_acc_lo", "robust_acc_hi", "robust_acc_n", "on_front", "within_noise", "within_noise_of", "diverged",
        "infeasible"]


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
    assert list(table.columns[:len(CORE)]) == CORE
    assert list(table.columns[len(CORE):]) == [
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
    assert list(front_table([]).columns) == CORE
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


# ------------------------------------------------------------------------------------ noise-aware fronts


def ci(lo: float, hi: float, n: int = 100) -> Interval:
    return Interval(lo, hi, n)


def noisy_points() -> list[TrialPoint]:
    """A front member, a trial within noise of it, a clearly dominated one, one overlapping in clean accuracy only,
    one without intervals and an infeasible one with overlapping intervals."""
    def point(tid: str, clean: float, robust: float, method: str, cci=None, rci=None, **kw) -> TrialPoint:
        intervals = {k: v for k, v in (("clean_acc", cci), ("robust_acc", rci)) if v is not None}
        return TrialPoint(tid, clean, robust, {"adv_lr": 0.01}, method=method, intervals=intervals, **kw)

    return [
        point("front", 0.80, 0.50, "adaptive_pgd", ci(0.75, 0.85), ci(0.40, 0.60)),
        point("close", 0.78, 0.45, "pgd", ci(0.73, 0.83), ci(0.35, 0.55)),
        point("far", 0.50, 0.10, "freelb", ci(0.45, 0.55), ci(0.05, 0.15)),
        point("clean_only", 0.79, 0.20, "pgd", ci(0.74, 0.84), ci(0.15, 0.25)),
        point("no_counts", 0.79, 0.49, "pgd"),
        point("below_floor", 0.77, 0.48, "pgd", ci(0.72, 0.82), ci(0.38, 0.58), infeasible=True),
    ]


def test_within_noise_needs_both_intervals_to_overlap_a_front_member():
    points = noisy_points()
    assert non_dominated(points) == [True, False, False, False, False, False]
    assert within_noise(points) == [(), ("front",), (), (), (), ()]
    # touching intervals overlap (closed intervals); separated by a hair they do not
    member = TrialPoint("m", 0.8, 0.5, intervals={"clean_acc": ci(0.7, 0.9), "robust_acc": ci(0.4, 0.6)})
    touch = TrialPoint("t", 0.6, 0.3, intervals={"clean_acc": ci(0.5, 0.7), "robust_acc": ci(0.2, 0.4)})
    apart = TrialPoint("a", 0.6, 0.3, intervals={"clean_acc": ci(0.5, 0.7), "robust_acc": ci(0.2, 0.3999)})
    assert within_noise([member, touch, apart]) == [(), ("m",), ()]
    # a front member without intervals makes nobody within noise of it
    bare = TrialPoint("bare", 0.8, 0.5)
    assert within_noise([bare, touch]) == [(), ()]


def test_within_noise_in_csv_and_table(tmp_path):
    table = front_table(noisy_points()).set_index("trial_id")
    assert table.loc["close", "within_noise"] and table.loc["close", "within_noise_of"] == "front"
    for tid in ("front", "far", "clean_only", "no_counts", "below_floor"):
        assert not table.loc[tid, "within_noise"] and table.loc[tid, "within_noise_of"] == "", tid
    back = pd.read_csv(write_front_csv(noisy_points(), tmp_path / "pareto.csv"), keep_default_na=False)
    rows = back.set_index("trial_id")
    assert rows.loc["close", "within_noise"] and not rows.loc["far", "within_noise"]
    assert rows.loc["close", "within_noise_of"] == "front" and rows.loc["far", "within_noise_of"] == ""


def test_interval_columns_from_recorded_counts(tmp_path):
    from distat.attacks.metrics import wilson_interval
    from distat.search.driver import _intervals

    # 80 of 100 dev examples right; 4 of 16 attacked examples survived, 14 of 16 right before the attack
    metrics = {"clean_acc": 0.8, "robust_acc": 0.25, "n": 16.0, "attack_clean_acc": 0.875}
    intervals = _intervals(metrics, {"dev_n": 100.0})
    assert set(intervals) == {"clean_acc", "robust_acc", "attack_clean_acc"}
    assert (intervals["clean_acc"].lo, intervals["clean_acc"].hi) == wilson_interval(80, 100)
    assert (intervals["robust_acc"].lo, intervals["robust_acc"].hi) == wilson_interval(4, 16)
    assert intervals["robust_acc"].n == 16 and intervals["clean_acc"].n == 100
    assert intervals["robust_acc"].lo == pytest.approx(0.1015, abs=1e-3)
    assert intervals["robust_acc"].hi == pytest.approx(0.4950, abs=1e-3)
    # a count that does not fit the accuracy, or none at all, gives no interval rather than a wrong one
    assert set(_intervals({"clean_acc": 0.8, "robust_acc": 0.3, "n": 16.0}, {"dev_n": 100.0})) == {"clean_acc"}
    assert _intervals({"clean_acc": 0.8, "robust_acc": 0.25}, {}) == {}

    point = TrialPoint("t", 0.8, 0.25, method="pgd", intervals=intervals)
    table = front_table([point])
    row = table.iloc[0]
    assert (row["clean_acc_lo"], row["clean_acc_hi"], row["clean_acc_n"]) == (*wilson_interval(80, 100), 100)
    assert (row["robust_acc_lo"], row["robust_acc_hi"], row["robust_acc_n"]) == (*wilson_interval(4, 16), 16)
    # an extra accuracy with a count gets its interval columns after the extras
    assert list(table.columns[-3:]) == ["attack_clean_acc_lo", "attack_clean_acc_hi", "attack_clean_acc_n"]
    text = write_front_csv([point], tmp_path / "pareto.csv").read_text("utf-8")
    header, line = text.splitlines()
    cells = dict(zip(header.split(","), line.split(","), strict=True))
    assert cells["clean_acc_n"] == "100" and cells["robust_acc_n"] == "16"  # whole numbers, not 16.0
    assert float(cells["robust_acc_lo"]) == pytest.approx(wilson_interval(4, 16)[0])
    with pytest.raises(ValueError, match="lo <= hi"):
        Interval(0.6, 0.4, 10)


def write_trial(search_dir: Path, trial_id: str, params: dict, metrics: dict, train: dict,
                train_wall: tuple[float, float] = (0.0, 1.0), finished_at: float | None = None) -> None:
    from distat.search.state import TrialResult

    folder = search_dir / "trials" / trial_id
    folder.mkdir(parents=True)
    TrialResult(trial_id=trial_id, params=params, metrics=metrics, train=train, train_wall=train_wall,
                placement={}, finished_at=finished_at).save(folder)


def test_old_search_without_counts_renders_without_intervals(tmp_path):
    from distat.search.driver import trial_points

    search_dir = tmp_path / "search"
    # before counts were recorded: no dev_n in the training metrics and no attacked n
    write_trial(search_dir, "old", {"method": "adaptive_pgd"},
                {"clean_acc": 0.8, "robust_acc": 0.25, "robust_acc_lo": 0.1, "robust_acc_hi": 0.49},
                {"clean_acc": 0.8})
    write_trial(search_dir, "new", {"method": "pgd"},
                {"clean_acc": 0.7, "robust_acc": 0.5, "n": 16.0, "robust_acc_lo": 0.28, "robust_acc_hi": 0.72},
                {"clean_acc": 0.7, "dev_n": 10.0})
    points = {p.trial_id: p for p in trial_points(search_dir)}
    assert points["old"].intervals == {} and points["old"].method == "adaptive_pgd"
    assert set(points["new"].intervals) == {"clean_acc", "robust_acc"} and points["new"].method == "pgd"
    assert "robust_acc_lo" not in points["old"].extra  # recorded bounds are not repeated as extras

    paths = write_artifacts([points["old"]], tmp_path / "artifacts")
    back = pd.read_csv(paths["csv"])
    assert back[["clean_acc_lo", "clean_acc_hi", "clean_acc_n", "robust_acc_lo", "robust_acc_n"]].isna().all().all()
    assert back.loc[0, "method"] == "adaptive_pgd"
    text = paths["html"].read_text("utf-8")
    dom = parse(text)
    assert not dom.with_class("errorbar") and "Wilson" not in text
    assert [a["data-clean-ci"] for a in dom.with_class("point")] == [""]


def test_trials_of_different_threat_models_refuse_one_front(tmp_path):
    """Robust accuracies measured under two threat-model specs never share the front's column: one line naming
    both hashes; trials from before specs were recorded do not take part in the check."""
    from distat.errors import DistatError
    from distat.search.driver import trial_points

    search_dir = tmp_path / "search"
    write_trial(search_dir, "a", {"method": "pgd"}, {"clean_acc": 0.8, "robust_acc": 0.25,
                                                     "threat_spec_hash": "aaaaaaaaaa"}, {"clean_acc": 0.8})
    write_trial(search_dir, "old", {"method": "pgd"}, {"clean_acc": 0.7, "robust_acc": 0.5}, {"clean_acc": 0.7})
    assert len(trial_points(search_dir)) == 2
    write_trial(search_dir, "b", {"method": "pgd"}, {"clean_acc": 0.7, "robust_acc": 0.5,
                                                     "threat_spec_hash": "bbbbbbbbbb"}, {"clean_acc": 0.7})
    with pytest.raises(DistatError) as info:
        trial_points(search_dir)
    message = str(info.value)
    assert "aaaaaaaaaa" in message and "bbbbbbbbbb" in message and "\n" not in message


def test_method_label_from_the_search_config(tmp_path):
    from distat.search.driver import trial_points
    from distat.search.space import parse_search_config

    base = {
        "name": "t", "seed": 3,
        "trial": {"data": {"path": "builtin:rotten_tomatoes", "max_length": 32}, "model": {"backbone": "default"},
                  "method": {"name": "adaptive", "base": "freelb"}, "train": {"epochs": 1, "batch_size": 8}},
        "attack": {"recipe": "textfooler", "n": 16},
        "search": {"num_samples": 2, "max_concurrent": 1},
        "resources": {"num_workers": 1, "use_gpu": False, "cpus_per_worker": 1},
        "params": {"adv_lr": {"loguniform": [0.01, 0.1]}},
    }
    scfg = parse_search_config(base)
    search_dir = tmp_path / "search"
    write_trial(search_dir, "t1", {"adv_lr": 0.05}, {"clean_acc": 0.7, "robust_acc": 0.5}, {})
    # the method is not searched: the label comes from the trial config, not from the params
    assert [p.method for p in trial_points(search_dir, None, scfg)] == ["adaptive_freelb"]
    assert [p.method for p in trial_points(search_dir)] == [None]


def test_method_names_in_csv_html_and_png(tmp_path):
    from PIL import Image

    points = noisy_points()
    paths = write_artifacts(points, tmp_path)
    methods = pd.read_csv(paths["csv"]).set_index("trial_id")["method"]
    assert methods["front"] == "adaptive_pgd" and methods["far"] == "freelb"
    text = paths["html"].read_text("utf-8")
    dom = parse(text)
    assert {a["data-trial"]: a["data-method"] for a in dom.with_class("point")}["front"] == "adaptive_pgd"
    assert "<td>adaptive_pgd</td>" in text and "trial front (adaptive_pgd): front" in text
    # the table: the front, then the trial within noise of it; the markers and error bars in the plot
    assert [a["data-trial"] for a in dom.with_class("front-row", "tr")] == ["front"]
    assert [a["data-trial"] for a in dom.with_class("noise-row", "tr")] == ["close"]
    assert "within noise of front" in text
    assert [a["data-trial"] for a in dom.with_class("within-noise", "circle")] == ["close"]
    bars = dom.with_class("errorbar", "line")
    assert {(a["data-trial"], a["data-axis"]) for a in bars} >= {("front", "clean"), ("front", "robust")}
    assert all(a["data-trial"] != "no_counts" for a in bars)
    assert "bars: 95% Wilson intervals" in text
    with Image.open(paths["png"]) as image:
        image.load()
        assert count_near(image, WITHIN_NOISE_COLOR) > 10
        assert count_near(image, FRONT_COLOR) > 30


def test_search_summary_states_the_interval_width():
    from distat.search.space import RESOLVE_HALF_WIDTH, describe, noise_lines, parse_search_config

    small = noise_lines(16)
    assert small[0] == ("precision: an accuracy over n = 16 attacked examples has a 95% interval of about ±0.220 "
                        "(Wilson, at 0.5)")
    assert small[1].startswith("warning: ±0.220 is wider than ±0.05: robust accuracies closer than about 0.44 "
                               "cannot be told apart; attack.n >= ")
    needed = int(small[1].rsplit(">= ", 1)[1].split()[0])
    assert noise_lines(needed)[1:] == [] and noise_lines(needed - 1)[1:] != []  # the smallest n that does
    assert noise_lines(500) == ["precision: an accuracy over n = 500 attacked examples has a 95% interval of "
                                "about ±0.044 (Wilson, at 0.5)"]
    assert RESOLVE_HALF_WIDTH == 0.05
    cfg = {
        "name": "t", "seed": 3,
        "trial": {"data": {"path": "builtin:rotten_tomatoes", "max_length": 32}, "model": {"backbone": "default"},
                  "method": {"name": "pgd"}, "train": {"epochs": 1, "batch_size": 8}},
        "attack": {"recipe": "textfooler", "n": 16},
        "search": {"num_samples": 2, "max_concurrent": 1},
        "resources": {"num_workers": 1, "use_gpu": False, "cpus_per_worker": 1},
        "params": {"adv_lr": {"loguniform": [0.01, 0.1]}},
    }
    lines = describe(parse_search_config(cfg)).splitlines()
    attack = next(i for i, line in enumerate(lines) if line.startswith("attack:"))
    assert lines[attack + 1:attack + 3] == small


def test_printed_front_marks_noise_and_shows_intervals(capsys):
    from distat.app.search import FrontSummary
    from distat.cli import _print_front

    summary = FrontSummary.of(noisy_points(), {}, "sqlite:///tmp/x.db")
    assert summary.within_noise == ["close"]
    assert list(summary.table["trial_id"]) == ["front", "close"]
    _print_front(summary)
    out = capsys.readouterr().out
    lines = out.splitlines()
    front = next(line for line in lines if " front " in f" {line} " and "adaptive_pgd" in line)
    close = next(line for line in lines if "close" in line and "pgd" in line)
    assert "[0.750, 0.850] n=100" in front and "[0.400, 0.600] n=100" in front
    assert close.lstrip().startswith("~") and close.rstrip().endswith("front")
    assert not front.lstrip().startswith("~")
    assert "~ within noise (1)" in out and "Wilson" in out

    bare = FrontSummary.of([TrialPoint("old", 0.8, 0.25, method="pgd")], {}, "sqlite:///tmp/x.db")
    _print_front(bare)
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "old" in line)
    assert row.split()[:6] == ["old", "pgd", "0.8000", "-", "0.2500", "-"] and "within noise" not in out



# ------------------------------------------------------------------- a clean objective other than accuracy


def with_accuracy(points: list[TrialPoint]) -> list[TrialPoint]:
    """The points with clean accuracy as an extra (what the floor reads when the objective is another metric)."""
    return [TrialPoint(p.trial_id, p.clean_acc, p.robust_acc, p.params, p.diverged, {"clean_acc": 0.9},
                       p.infeasible, p.method, p.intervals) for p in points]


def test_front_table_names_the_clean_objective_after_its_metric():
    renamed = [c.replace("clean_acc", "macro_f1") for c in CORE]
    default = front_table(noisy_points())
    table = front_table(noisy_points(), clean_metric="macro_f1")
    assert list(table.columns[:len(CORE)]) == renamed and not any(c.startswith("clean_acc") for c in table.columns)
    # nothing but the names changes: same rows, same order, same values
    pd.testing.assert_frame_equal(table, default.rename(columns=dict(zip(CORE, renamed, strict=True))))
    # clean accuracy may ride along as an extra; the objective's own name may not
    extra = front_table(with_accuracy(noisy_points()), clean_metric="balanced_acc")
    assert list(extra.columns[len(CORE):]) == ["param.adv_lr", "clean_acc"] and "balanced_acc_n" in extra.columns
    with pytest.raises(ValueError, match="macro_f1"):
        front_table([TrialPoint("x", 0.5, 0.5, extra={"macro_f1": 0.5})], clean_metric="macro_f1")
    with pytest.raises(ValueError, match="unknown clean objective 'f1'"):
        front_table(noisy_points(), clean_metric="f1")


def test_artifacts_with_macro_f1_show_its_label_and_nothing_else_changes(tmp_path):
    from PIL import Image

    points = noisy_points()
    default = write_artifacts(points, tmp_path / "default")
    macro = write_artifacts(points, tmp_path / "macro", clean_metric="macro_f1")
    # pareto.csv: the renamed header, the same rows
    header, *rows = macro["csv"].read_text("utf-8").splitlines()
    assert header.split(",")[:len(CORE)] == [c.replace("clean_acc", "macro_f1") for c in CORE]
    assert rows == default["csv"].read_text("utf-8").splitlines()[1:]
    with Image.open(macro["png"]) as image:
        assert image.format == "PNG"
        image.load()
        assert count_near(image, FRONT_COLOR) > 30
    text = macro["html"].read_text("utf-8")
    assert "clean accuracy" not in text and "<th>macro-F1</th>" in text
    dom = parse(text)
    svg = next(a for t, a in dom.tags if t == "svg")
    assert svg["aria-label"] == "macro-F1 vs robust accuracy of every trial"
    assert "<title>Pareto front: macro-F1 vs robust accuracy</title>" in text
    assert "macro-F1 0.8000 [0.7500, 0.8500] (n = 100)" in text  # the point's native tooltip
    assert '"macro-F1: " + el.getAttribute("data-clean")' in text  # the script's tooltip
    assert "below the clean-accuracy floor" in text  # the floor is on accuracy whatever the objective
    # only the label differs from the default page (which stays today's: "clean accuracy", its title)
    back = text.replace("Pareto front: macro-F1 vs", "Pareto front: clean vs").replace("macro-F1", "clean accuracy")
    assert back == default["html"].read_text("utf-8")
    assert "balanced accuracy" in plot_html(points, tmp_path / "b.html", clean_metric="balanced_acc").read_text("utf-8")
    with pytest.raises(ValueError, match="unknown clean objective"):
        write_artifacts(points, tmp_path / "bad", clean_metric="accuracy")
    assert not (tmp_path / "bad").exists()


def test_default_clean_objective_keeps_todays_artifacts(tmp_path):
    points = noisy_points()
    today = write_artifacts(points, tmp_path / "today")
    explicit = write_artifacts(points, tmp_path / "explicit", clean_metric="clean_acc", title=None)
    for kind in ("csv", "png", "html"):
        assert today[kind].read_bytes() == explicit[kind].read_bytes(), kind
    text = today["html"].read_text("utf-8")
    assert text.count("clean accuracy") >= 8 and "macro-F1" not in text
    assert "<title>Pareto front: clean vs robust accuracy</title>" in text
    assert today["csv"].read_text("utf-8").split("\n", 1)[0].split(",")[:len(CORE)] == CORE


def test_printed_front_names_the_clean_objective(capsys):
    from distat.app.search import FrontSummary
    from distat.cli import _print_front

    summary = FrontSummary.of(with_accuracy(noisy_points()), {}, "sqlite:///tmp/x.db", clean_metric="macro_f1")
    assert summary.clean_metric == "macro_f1"
    assert list(summary.table.columns) == [
        "trial_id", "method", "macro_f1", "macro_f1_lo", "macro_f1_hi", "macro_f1_n", "robust_acc", "robust_acc_lo",
        "robust_acc_hi", "robust_acc_n", "within_noise_of", "param.adv_lr", "clean_acc"]
    _print_front(summary)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Pareto front of macro-F1 vs robust accuracy (1 of 6 trials, hypervolume 0.4000):"
    assert lines[1] == "  left out, below the clean-accuracy floor: below_floor"
    header = lines[2].split()
    assert header[:4] == ["trial_id", "method", "macro_f1", "macro_f1"] and "clean_acc" in header
    assert "95% CI" in lines[2] and "clean 95% CI" not in lines[2]
    front = next(line for line in lines if "adaptive_pgd" in line)
    assert front.split()[:6] == ["front", "adaptive_pgd", "0.8000", "[0.750,", "0.850]", "n=100"]

    balanced = FrontSummary.of(noisy_points(), {}, "sqlite:///tmp/x.db", clean_metric="balanced_acc")
    _print_front(balanced)
    out = capsys.readouterr().out
    assert "balanced_acc 95% CI" in out and "Pareto front of balanced accuracy vs robust accuracy" in out

    # accuracy, the default: today's header and CI column
    _print_front(FrontSummary.of(noisy_points(), {}, "sqlite:///tmp/x.db"))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Pareto front (1 of 6 trials, hypervolume 0.4000):"
    assert lines[2].split()[:5] == ["trial_id", "method", "clean_acc", "clean", "95%"]

    empty = FrontSummary.of([], {}, "sqlite:///tmp/x.db", clean_metric="macro_f1")
    assert empty.total == 0 and empty.clean_metric == "macro_f1"
    with pytest.raises(ValueError, match="unknown clean objective"):
        FrontSummary.of([], {}, "sqlite:///tmp/x.db", clean_metric="f1")

def test_best_per_method_chooses_on_the_searchs_numbers_among_feasible_trials() -> None:
    from distat.tracking.pareto import best_per_method

    points = [
        TrialPoint("a", 0.90, 0.20, method="pgd"),
        TrialPoint("b", 0.85, 0.30, method="pgd"),
        TrialPoint("c", 0.60, 0.50, method="pgd", infeasible=True),  # below the floor: never a row
        TrialPoint("d", 0.88, 0.30, method="freelb"),
        TrialPoint("e", 0.80, 0.30, method="freelb"),  # tie on robust: the higher clean wins
        TrialPoint("f", 0.95, 0.90, method="fgm", diverged=True),
        TrialPoint("g", 0.70, 0.10, method=None),
    ]
    best = best_per_method(points)
    assert {m: p.trial_id for m, p in best.items()} == {"freelb": "d", "pgd": "b"}
    assert list(best) == ["freelb", "pgd"]  # highest robust first, then clean


# ------------------------------------------------------------------------------------------ hypervolume history


def test_hypervolume_history_is_monotone_and_matches_the_front():
    rng = random.Random(11)
    for _ in range(20):
        points = []
        for i in range(rng.randint(1, 30)):
            kind = rng.random()
            clean, robust = rng.randint(0, 20) / 20, rng.randint(0, 20) / 20  # ties and duplicates on a grid
            points.append(TrialPoint(f"t{i}", math.nan if kind < 0.05 else clean, robust, diverged=kind < 0.1,
                                     infeasible=0.1 <= kind < 0.2))
        history = hypervolume_history(points)
        assert len(history) == len(points)
        assert all(a <= b for a, b in zip(history, history[1:], strict=False)), history
        # each value is the hypervolume of the front of the trials finished so far, exactly
        assert history == [hypervolume(points[:i]) for i in range(1, len(points) + 1)]
        assert history[-1] == hypervolume(points)


def test_hypervolume_history_by_hand_infeasible_and_diverged_never_raise_it():
    points = [
        TrialPoint("a", 0.5, 0.4),                       # 0.2
        TrialPoint("floor", 0.95, 0.95, infeasible=True),  # would dominate everything: not on the front
        TrialPoint("div", 0.9, 0.9, diverged=True),
        TrialPoint("nan", math.nan, 0.9),
        TrialPoint("dominated", 0.4, 0.3),
        TrialPoint("on_reference", 0.9, 0.0),            # on the front, but adds no area over (0, 0)
        TrialPoint("b", 0.8, 0.2),                       # 0.2 + (0.8 - 0.5) * 0.2
        TrialPoint("same_as_a", 0.5, 0.4),               # a duplicate joins the front, the area stays
        TrialPoint("c", 0.6, 0.5),                       # dominates a: 0.8 * 0.2 + 0.6 * 0.3
    ]
    expected = [0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.26, 0.26, 0.34]
    assert hypervolume_history(points) == pytest.approx(expected)
    steps = hypervolume_steps(points)
    assert [s.step for s in steps] == list(range(1, 10))
    assert [s.trial_id for s in steps] == [p.trial_id for p in points]
    assert [s.improved for s in steps] == [True, False, False, False, False, False, True, False, True]
    assert hypervolume_history([]) == [] and hypervolume_steps([]) == []
    # nothing valid: flat at 0, and no step counts as an improvement
    assert [s.improved for s in hypervolume_steps(points[1:4])] == [False] * 3
    assert hypervolume_history(points[1:4]) == [0.0] * 3
    with pytest.raises(ValueError, match="finite"):
        hypervolume_history(points, reference=(math.inf, 0.0))


def test_hypervolume_history_artifacts(tmp_path):
    from PIL import Image

    from distat.tracking.pareto import in_finish_order

    points = [dataclasses.replace(p, method=p.params["method"]) for p in table_points()]  # e: diverged, NaN
    order = ["d", "a", "e", "c", "b", "f"]
    ordered = in_finish_order(points, order)
    expected = hypervolume_history(ordered)
    assert expected == pytest.approx([0.15, 0.19, 0.19, 0.26, 0.28, 0.2875])
    paths = write_artifacts(points, tmp_path / "art", finish_order=order)
    assert set(paths) == {"csv", "png", "html", "hypervolume_csv", "hypervolume_png", "hypervolume_html"}
    assert [paths[k].name for k in ("hypervolume_csv", "hypervolume_png", "hypervolume_html")] == [
        "hypervolume_history.csv", "hypervolume_history.png", "hypervolume_history.html"]

    back = pd.read_csv(paths["hypervolume_csv"])
    assert list(back.columns) == ["step", "trial_id", "hypervolume"]
    assert list(back["step"]) == [1, 2, 3, 4, 5, 6] and list(back["trial_id"]) == order
    assert list(back["hypervolume"]) == expected  # written at full precision
    assert back["hypervolume"].iloc[-1] == hypervolume(points)

    text = paths["hypervolume_html"].read_text("utf-8")
    assert "<script" not in text and "src=" not in text and "href" not in text  # self-contained
    assert "<title>Hypervolume after each finished trial (reference point (0, 0))</title>" in text
    assert "6 finished trials; hypervolume 0.2875 after the last; last improved at trial 6 of 6 (f)" in text
    dom = parse(text)
    assert [a["data-trial"] for a in dom.with_class("improved", "circle")] == ["d", "a", "c", "b", "f"]
    assert [a["data-trial"] for a in dom.with_class("flat", "circle")] == ["e"]
    rows = [a["data-trial"] for t, a in dom.tags if t == "tr" and "data-step" in a]
    assert rows == order
    assert "<td>3</td><td>e (pgd)</td><td>0.1900</td><td>no</td>" in text
    assert "<td>4</td><td>c (pgd)</td><td>0.2600</td><td>yes</td>" in text
    assert "&lt;script&gt;" in text and XSS not in text  # f's method, escaped
    with Image.open(paths["hypervolume_png"]) as image:
        assert image.format == "PNG" and image.size[0] > 300
        image.load()
        assert count_near(image, FRONT_COLOR) > 50

    # without the order: the front's three files, as before; a wrong order: refused before any file is written
    assert set(write_artifacts(points, tmp_path / "plain")) == {"csv", "png", "html"}
    for bad in (order[:-1], [*order, "zz"], [*order[:-1], "a"]):
        with pytest.raises(ValueError, match="finish order"):
            write_artifacts(points, tmp_path / "bad", finish_order=bad)
    assert not (tmp_path / "bad").exists()
    # no trial at all still renders
    empty = write_artifacts([], tmp_path / "empty", finish_order=[])
    assert empty["hypervolume_csv"].read_text("utf-8") == "step,trial_id,hypervolume\n"
    assert "no finished trial" in empty["hypervolume_html"].read_text("utf-8")


def test_trial_points_come_in_the_order_the_trials_finished(tmp_path):
    from distat.search.driver import trial_points
    from distat.search.state import TrialResult, finish_order, finished_trials

    search_dir = tmp_path / "search"
    metrics = {"clean_acc": 0.7, "robust_acc": 0.3}
    write_trial(search_dir, "a_late", {}, metrics, {}, train_wall=(10.0, 20.0), finished_at=50.0)
    write_trial(search_dir, "b_first", {}, metrics, {}, train_wall=(1.0, 5.0), finished_at=8.0)
    write_trial(search_dir, "c_old", {}, metrics, {}, train_wall=(9.0, 30.0))  # an older file: the fit's end
    write_trial(search_dir, "d_tie", {}, metrics, {}, train_wall=(9.0, 30.0))  # a tie: the folders' order
    assert [p.trial_id for p in trial_points(search_dir)] == ["b_first", "c_old", "d_tie", "a_late"]
    results = finished_trials(search_dir)
    assert results["c_old"].finished_at is None and results["c_old"].finish_time == 30.0
    assert results["a_late"].finish_time == 50.0
    # a finish time that is no time sorts last, in the mapping's order
    odd = {"x": results["a_late"].model_copy(update={"finished_at": math.nan, "train_wall": (0.0, math.inf)}),
           **results}
    assert finish_order(odd) == ["b_first", "c_old", "d_tie", "a_late", "x"]
    # a file written before finished_at existed still reads
    legacy = json.loads((search_dir / "trials" / "c_old" / "final.json").read_text())
    legacy.pop("finished_at", None)
    assert TrialResult.model_validate(legacy).finish_time == 30.0


def test_printed_hypervolume_history(capsys):
    from distat.app.search import FrontSummary
    from distat.cli import _print_front

    points = table_points()
    order = ["d", "a", "e", "c", "b", "f"]
    summary = FrontSummary.of(points, {}, "sqlite:///tmp/x.db", finish_order=order)
    assert [s.trial_id for s in summary.history] == order and summary.reference == (0.0, 0.0)
    _print_front(summary)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Pareto front (4 of 6 trials, hypervolume 0.2875):"
    assert ("  hypervolume (reference 0, 0) after each trial: 0.1500 0.1900 0.1900 0.2600 0.2800 0.2875; "
            "last improved at trial 6 of 6 (f)") in lines

    # a long search: the last 12 values only; the last improvement named even when it is not shown
    many = [TrialPoint("best", 0.8, 0.5)] + [TrialPoint(f"t{i:02d}", 0.1, 0.1) for i in range(19)]
    _print_front(FrontSummary.of(many, {}, "sqlite:///tmp/x.db", finish_order=[p.trial_id for p in many]))
    line = next(x for x in capsys.readouterr().out.splitlines() if "after each trial" in x)
    assert line == ("  hypervolume (reference 0, 0) after each trial (the last 12 of 20): ... "
                    + " ".join(["0.4000"] * 12) + "; last improved at trial 1 of 20 (best)")
    # nothing feasible: said so; without the order (a summary of loose points): no line
    _print_front(FrontSummary.of([TrialPoint("x", 0.9, 0.9, infeasible=True)], {}, "sqlite:///tmp/x.db",
                                 finish_order=["x"]))
    assert "after each trial: 0.0000; no trial raised it above 0" in capsys.readouterr().out
    _print_front(FrontSummary.of(points, {}, "sqlite:///tmp/x.db"))
    assert "after each trial" not in capsys.readouterr().out


def small_search_config(name: str = "hv"):
    from distat.search.space import parse_search_config

    return parse_search_config({
        "name": name, "seed": 3,
        "trial": {"data": {"path": "builtin:rotten_tomatoes", "max_length": 32}, "model": {"backbone": "default"},
                  "method": {"name": "pgd"}, "train": {"epochs": 1, "batch_size": 8}},
        "attack": {"recipe": "textfooler", "n": 16},
        "search": {"num_samples": 4, "max_concurrent": 1, "clean_acc_floor": 0.6},
        "resources": {"num_workers": 1, "use_gpu": False, "cpus_per_worker": 1},
        "params": {"adv_lr": {"loguniform": [0.01, 0.1]}},
    })


def test_a_callback_back_from_the_snapshot_still_records_the_search_and_each_trials_whole_config(tmp_path):
    """Tune's experiment snapshot pickles the MLflow callback; `distat resume` / `extend` run on with the pickled
    one. Trials started after that still get their whole config (``trial.*`` params, a ``<method> <id>`` name) on
    their child run, and a parent run opened by it gets the search's config."""
    import pickle
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from distat.search.driver import TrialConfigOf
    from distat.search.state import SearchState
    from distat.tracking.mlflow import MLflowTrialCallback

    scfg = small_search_config("snap")
    search_dir = tmp_path / "searches" / "snap"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    state = SearchState(search=scfg, search_dir=str(search_dir), cache_dir=str(tmp_path / "cache"), tracking_uri=uri)
    callback = MLflowTrialCallback(uri, scfg.name, search_dir, search_config=scfg.model_dump(mode="json"),
                                   trial_config=TrialConfigOf(state))
    restored = pickle.loads(pickle.dumps(callback))
    trial = SimpleNamespace(trial_id="t9", config={"adv_lr": 0.05})
    write_trial(search_dir, "t9", {"adv_lr": 0.05}, {"clean_acc": 0.7, "robust_acc": 0.3}, {})
    restored.on_trial_start(0, [], trial)
    restored.on_trial_complete(0, [], trial)
    assert restored.pending == 0
    client = MlflowClient(tracking_uri=uri)
    child = client.get_run(restored._runs["t9"])
    assert child.data.params["trial.method.adv_lr"] == "0.05" and child.data.params["adv_lr"] == "0.05"
    assert child.data.tags["mlflow.runName"] == "pgd t9"
    parent = client.get_run(restored.tracker.parent_id)
    assert parent.data.params["search.search.num_samples"] == "4"
    assert "search_config.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_parent_run_gets_each_hypervolume_step_once(tmp_path, caplog):
    """The MLflow callback, driven by hand on a real local store, logs the parent run's ``hypervolume`` after
    each trial completion from the trials on disk; a callback back from a pickled snapshot (a resumed search)
    and the search's finish add only the steps still missing, so each step is there once and the metric
    matches the history of the front; a snapshot pickled before the metric existed still works, and a
    history that cannot be read costs a warning, not the search."""
    import logging
    import pickle
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from distat.search.driver import HypervolumeHistoryOf, finish_search, trial_points
    from distat.search.space import clean_floor
    from distat.search.state import SearchState
    from distat.tracking.mlflow import HYPERVOLUME_METRIC, MLflowTrialCallback

    scfg = small_search_config()
    assert clean_floor(scfg) == 0.6
    search_dir = tmp_path / "searches" / "hv"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    state = SearchState(search=scfg, search_dir=str(search_dir), cache_dir=str(tmp_path / "cache"), tracking_uri=uri)
    callback = MLflowTrialCallback(uri, scfg.name, search_dir, hypervolume_history=HypervolumeHistoryOf(state))
    trials = [("t1", 0.70, 0.20), ("t2", 0.50, 0.90), ("t3", 0.80, 0.10), ("t4", 0.65, 0.40)]  # t2: below the floor

    def finish(cb, n: int) -> None:
        trial_id, clean, robust = trials[n]
        write_trial(search_dir, trial_id, {"adv_lr": 0.05}, {"clean_acc": clean, "robust_acc": robust}, {},
                    finished_at=100.0 + n)
        trial = SimpleNamespace(trial_id=trial_id, config={"adv_lr": 0.05})
        cb.on_trial_start(0, [], trial)
        cb.on_trial_complete(0, [], trial)

    def steps() -> list[tuple[int, float]]:
        client = MlflowClient(tracking_uri=uri)
        parent = callback.tracker.parent_id
        return sorted((m.step, m.value) for m in client.get_metric_history(parent, HYPERVOLUME_METRIC))

    finish(callback, 0)
    finish(callback, 1)
    assert steps() == [(1, pytest.approx(0.14)), (2, pytest.approx(0.14))]  # t2 is infeasible: no gain
    assert callback.pending == 0

    # the driver dies; Tune's snapshot brings the callback back empty (no runs, no tracker, no points read)
    restored = pickle.loads(pickle.dumps(callback))
    assert restored._hypervolume is not None and restored._hypervolume._seen == {}
    finish(restored, 2)
    write_trial(search_dir, "t4", {"adv_lr": 0.05}, {"clean_acc": 0.65, "robust_acc": 0.4}, {},
                finished_at=103.0)  # finished, but its completion never reached a callback
    with caplog.at_level(logging.WARNING):
        points, files = finish_search(scfg, search_dir, uri)
    assert "not logged" not in caplog.text
    history = hypervolume_history(points)
    assert [p.trial_id for p in points] == ["t1", "t2", "t3", "t4"]
    assert steps() == [(i, pytest.approx(v)) for i, v in enumerate(history, start=1)]
    assert history == pytest.approx([0.14, 0.14, 0.15, 0.15 + 0.65 * 0.2])
    assert history[-1] == hypervolume(trial_points(search_dir, 0.6, scfg))
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(callback.tracker.parent_id)
    assert parent.info.status == "FINISHED"
    assert {"hypervolume_history.csv", "hypervolume_history.png", "hypervolume_history.html",
            "pareto.csv"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert files["hypervolume_csv"].read_text("utf-8").splitlines()[1:] == [
        f"{i},{p.trial_id},{v!r}" for i, (p, v) in enumerate(zip(points, history, strict=True), start=1)]
    finish_search(scfg, search_dir, uri)  # finishing again (distat resume of a finished search) adds nothing
    assert len(client.get_metric_history(parent.info.run_id, HYPERVOLUME_METRIC)) == 4

    # a callback from a snapshot pickled before the metric existed: no hypervolume, everything else as before
    # (unpickling calls __setstate__ with the state that distat's __getstate__ returned then)
    old = MLflowTrialCallback.__new__(MLflowTrialCallback)
    old.__setstate__({"_args": (uri, scfg.name, search_dir), "_uri_source": None, "_tracker": None, "_runs": {}})
    trials.append(("t5", 0.99, 0.99))
    finish(old, 4)
    assert old.pending == 0 and len(client.get_metric_history(parent.info.run_id, HYPERVOLUME_METRIC)) == 4
    assert pickle.loads(pickle.dumps(old))._hypervolume is None

    # a history that cannot be read (here: two threat models) is one warning; the trial's run still finishes
    def unreadable() -> list[tuple[str, float]]:
        raise ValueError("robust accuracies of two threat models")

    broken = MLflowTrialCallback(uri, scfg.name, search_dir, hypervolume_history=unreadable)
    trials.append(("t6", 0.5, 0.5))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="distat.tracking.mlflow"):
        finish(broken, 5)
    assert "two threat models" in caplog.text and broken.pending == 0
    t6 = client.search_runs([parent.info.experiment_id], filter_string="tags.`distat.trial_id` = 't6'")[0]
    assert t6.info.status == "FINISHED"
