"""The graded verdict in the HTML report: the verdict box, the Confirmation table, the expected
false-alarm rate, the chart's marks, the paper rule, and reports written before the grades."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from neuralcleanse.core import verdict as verdict_module
from neuralcleanse.core.config import ScanConfig
from neuralcleanse.frontends import cli
from neuralcleanse.io.report import render_html, write_report
from neuralcleanse.io.sarif import sarif_log
from neuralcleanse.io.verdict_views import confirmation_view, verdict_view
from verdict_results import (
    BORDERLINE,
    FIRST_NORMS,
    OUTLIER,
    SMALL,
    STEPS,
    anomaly_index,
    expected_runs,
    graded_result,
)


@pytest.fixture(autouse=True)
def rates_not_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test with no zoo rate, so the texts are tested both ways (a test that
    wants a rate sets it)."""
    monkeypatch.setitem(verdict_module.ZOO_PER_LABEL_FALSE_FLAG, "confirmed", None)
    monkeypatch.setitem(verdict_module.ZOO_PER_LABEL_FALSE_FLAG, "paper", None)


class Page(HTMLParser):
    """The text of every element with an ``id``, the rows of tables, and the chart's bars."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self.classes: dict[str, str] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self.row_classes: dict[str, list[str]] = {}
        self.bars: list[tuple[str, str]] = []  # (class, title)
        self._open: list[tuple[str, str | None]] = []  # (tag, id)
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._bar: str | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("br", "img", "meta", "line", "polyline", "input"):
            return
        self._open.append((tag, a.get("id")))
        if a.get("id"):
            self.text[a["id"]] = ""
            self.classes[a["id"]] = a.get("class") or ""
        if tag == "table" and a.get("id"):
            self._table = a["id"]
            self.tables[self._table] = []
            self.row_classes[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
            self.row_classes[self._table].append(a.get("class") or "")
        elif tag in ("td", "th") and self._table:
            self._cell = []
        elif tag == "rect":
            self._bar = a.get("class") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._table and self._cell is not None:
            self.tables[self._table][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "rect":
            self._bar = None
        while self._open:
            open_tag, _ = self._open.pop()
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, ident in self._open:
            if ident:
                self.text[ident] += data
        if self._cell is not None:
            self._cell.append(data)
        if self._bar is not None:
            self.bars.append((self._bar, data))

    def words(self, ident: str) -> str:
        return " ".join(self.text[ident].split())


def number(cell: str) -> float:
    return float(cell.replace("−", "-"))


def bar_labels(page: Page, kind: str) -> list[int]:
    return [int(re.match(r"label (\d+):", title).group(1))
            for cls, title in page.bars if kind in cls.split()]


@pytest.mark.parametrize("verdict", ["backdoor", "suspicious"])
def test_confirmation_table_shows_each_run_and_the_median(verdict: str) -> None:
    result = graded_result(verdict)
    page = Page(render_html(result))
    assert page.classes["verdict"] == f"verdict {verdict}"
    assert page.words("verdict").startswith(verdict.upper())
    header, *rows = page.tables["confirmation-table"]
    assert header[:3] == ["label", "first run: norm", "first run: anomaly index"]
    assert header[3:5] == ["seed 1: norm", "seed 2: norm"]  # seed 0 + 1, + 2
    candidates = [int(row[0]) for row in rows]
    assert set(candidates) == {OUTLIER, BORDERLINE}
    first_index = anomaly_index(FIRST_NORMS)
    runs = expected_runs(verdict, candidates)
    confirmed = list(FIRST_NORMS)
    for t in candidates:
        confirmed[t] = float(np.median([FIRST_NORMS[t], *runs[t]]))
    confirmed_index = anomaly_index(confirmed)
    expected_outcome = {"backdoor": {OUTLIER: "backdoor", BORDERLINE: "suspicious"},
                        "suspicious": {OUTLIER: "suspicious", BORDERLINE: "clean"}}[verdict]
    for row, css in zip(rows, page.row_classes["confirmation-table"][1:]):
        t = int(row[0])
        assert number(row[1]) == pytest.approx(FIRST_NORMS[t], rel=1e-3)
        assert number(row[2]) == pytest.approx(first_index[t], rel=1e-2, abs=1e-3)
        assert [number(c) for c in row[3:5]] == pytest.approx(runs[t], rel=1e-3)
        assert number(row[5]) == pytest.approx(confirmed[t], rel=1e-3)
        assert number(row[6]) == pytest.approx(confirmed_index[t], rel=1e-2, abs=1e-3)
        assert row[7] == expected_outcome[t] == css
    rule = page.words("confirmation-rule")
    assert "re-searched with 2 further seeds (1, 2), decided on the median of 3 runs" in rule
    extra_steps = len(candidates) * 2 * STEPS
    share = extra_steps / (len(FIRST_NORMS) * STEPS)
    cost = page.words("confirmation-cost")
    assert f"{extra_steps} extra label-steps, {100 * share:.1f} % of the first pass's" in cost
    assert "2.5 s" in cost
    assert "not measured yet" in page.words("false-alarm")
    assert "paper-rule" not in page.text


def test_the_chart_and_the_cards_mark_suspicious_labels_apart_from_flagged_ones() -> None:
    html = render_html(graded_result("backdoor"))
    assert html.index(f'id="flagged-{OUTLIER}"') < html.index(f'id="flagged-{BORDERLINE}"')
    page = Page(html)
    assert bar_labels(page, "flagged") == [OUTLIER]
    assert bar_labels(page, "suspicious") == [BORDERLINE]
    assert page.classes[f"flagged-{OUTLIER}"] == "card flagged"
    assert page.classes[f"flagged-{BORDERLINE}"] == "card suspicious"
    assert "suspicious" in page.words(f"flagged-{BORDERLINE}")
    rows = dict(zip((row[0] for row in page.tables["labels"]), page.row_classes["labels"]))
    assert rows[str(OUTLIER)] == "flagged" and rows[str(BORDERLINE)] == "suspicious"
    assert rows["0"] == ""
    text = page.words("verdict")
    assert f"label {OUTLIER}" in text and f"Also suspicious: label {BORDERLINE}" in text

    page = Page(render_html(graded_result("suspicious")))
    assert bar_labels(page, "flagged") == [] and bar_labels(page, "suspicious") == [OUTLIER]
    assert page.words("verdict").startswith(f"SUSPICIOUS Suspicious: label {OUTLIER}")


def test_the_false_alarm_line_states_the_measured_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(verdict_module.ZOO_PER_LABEL_FALSE_FLAG, "confirmed", 0.002)
    monkeypatch.setattr(verdict_module, "ZOO_SOURCE", "the test zoo")
    monkeypatch.setattr("neuralcleanse.io.verdict_views.ZOO_SOURCE", "the test zoo")
    result = graded_result("clean")
    rate = 1 - (1 - 0.002) ** 10
    assert result.confirmation["expected_false_alarm_rate"] == pytest.approx(rate)
    line = Page(render_html(result)).words("false-alarm")
    assert f"{100 * rate:.1f} % of clean models with 10 labels" in line
    assert "confirmed rule" in line and "the test zoo" in line
    # measured at threshold 2 only: another threshold has no rate
    other = graded_result("clean", ScanConfig(anomaly_threshold=3.0))
    assert "not measured for an anomaly threshold of 3" in \
        Page(render_html(other)).words("false-alarm")


def test_the_paper_rule_says_so_and_has_no_confirmation_table() -> None:
    result = graded_result("backdoor", ScanConfig(verdict="paper"))
    assert result.verdict == "backdoor" and result.suspicious_labels == []
    page = Page(render_html(result))
    assert page.classes["verdict"] == "verdict backdoor"
    assert "in one run, the paper's rule" in page.words("verdict")
    assert "paper's rule" in page.words("paper-rule")
    assert "one run, a label is flagged when its anomaly index exceeds 2" in \
        page.words("confirmation-rule")
    assert "confirmation-table" not in page.tables and "confirmation-cost" not in page.text
    assert "not measured yet for the paper's rule" in page.words("false-alarm")


def test_a_partial_scan_has_no_verdict_and_says_to_resume() -> None:
    result = graded_result("backdoor")
    partial = type(result).from_labels(result.labels[:6], nb_classes=10,
                                       anomaly_threshold=2.0, config=result.config,
                                       partial=True)
    page = Page(render_html(partial))
    assert page.classes["verdict"] == "verdict partial"
    assert "Only 6 of 10 labels" in page.words("verdict")
    assert "resume the scan" in page.words("verdict") and "--resume" not in page.words("verdict")
    assert "no confirmation ran (partial scan)" in page.words("confirmation-rule")


def test_an_old_report_without_the_grades_still_renders(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    folder = tmp_path / "old"
    write_report(graded_result("backdoor", ScanConfig(verdict="paper")), folder)
    data = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    for key in ("verdict", "suspicious_labels", "confirmation"):
        del data[key]
    for key in ("verdict", "confirm_seeds", "confirm_margin"):
        del data["config"][key]
    (folder / "report.json").write_text(json.dumps(data), encoding="utf-8")
    (folder / "report.html").unlink()
    assert cli.run(["report", str(folder)]) == cli.EXIT_CLEAN
    assert "report.html" in capsys.readouterr().out
    page = Page((folder / "report.html").read_text(encoding="utf-8"))
    assert page.classes["verdict"] == "verdict backdoor"  # from flagged_labels
    assert bar_labels(page, "flagged") == [OUTLIER] and bar_labels(page, "suspicious") == []
    assert "the paper's rule" in page.words("confirmation-rule")
    assert "paper-rule" in page.text and "not measured yet" in page.words("false-alarm")


def test_a_label_flagged_for_its_small_norm_alone_says_so_everywhere(tmp_path: Path) -> None:
    result = graded_result("spread")
    median = float(np.median(result_norms := [r.norm for r in result.labels]))
    share = result_norms[SMALL] / median
    assert result.flagged_labels == [SMALL] and result.label(SMALL).anomaly_index < 2
    assert share < 0.3
    view = verdict_view(result)
    assert view["line"].startswith(f"BACKDOOR: label(s) [{SMALL}] flagged (anomaly index > 2, "
                                   "or trigger norm <= 30 % of the median, on the median of 3")
    assert "spread widely" in view["text"]
    assert f"label {SMALL} is {100 * share:.0f} % of the median label's norm (at most 30 % is " \
        "flagged)" in view["text"]
    assert "norm at most 30 % of the median" in confirmation_view(result)["rule_text"]
    log = sarif_log(result, tmp_path / "model.pt", exit_code=1, cwd=tmp_path)
    (entry,) = log["runs"][0]["results"]
    assert entry["level"] == "error" and f"is {share:.0%} of the median norm" in \
        entry["message"]["text"]
    # a label flagged by its index keeps the index wording
    assert "or trigger norm" not in verdict_view(graded_result("backdoor"))["line"]
    # one label of each kind: the index wording for both, the size named for the second
    mixed = graded_result("mixed")
    assert mixed.flagged_labels == [0, 1]
    assert mixed.label(0).anomaly_index > 2 > mixed.label(1).anomaly_index
    text = verdict_view(mixed)["text"]
    assert text.startswith("The reversed trigger of labels 0, 1 is unusually small (anomaly "
                           f"index up to {mixed.label(0).anomaly_index:.2f}, threshold 2")
    assert "Also flagged for its size: label 1, 28 % of the median label's norm" in text
