"""Tests of the files a scan over many models writes: summary.json, summary.csv, index.html."""

from __future__ import annotations

import csv
import html
import io
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

from browser import chromium, console_messages, run_chromium
from neuralcleanse.core.errors import InputError
from neuralcleanse.core.summary import ModelOutcome, ScanManySummary
from neuralcleanse.io.summary_files import (
    CSV_COLUMNS,
    neutralise,
    render_index,
    report_path,
    write_summary,
)

HOSTILE = '<script>alert("x")</script>'


def outcome(name: str, *, verdict: str | None = "clean", norm: float | None = 20.0,
            index: float | None = 1.0, flagged: list[int] | None = None, seconds: float = 1.0,
            steps: int = 100, attempts: int = 1, error: str | None = None,
            model: str | None = None, warnings: list[str] | None = None,
            suspicious: list[int] | None = None) -> ModelOutcome:
    failed = verdict is None
    return ModelOutcome(
        name=name, model=model or f"zoo/{name}.pt", status="failed" if failed else "done",
        verdict=verdict, flagged_labels=flagged or [], suspicious_labels=suspicious or [],
        max_anomaly_index=index,
        min_norm=norm, label_steps=0 if failed else steps, wall_seconds=seconds,
        report=None if failed else f"models/{name}", error=error, attempts=attempts,
        warnings=warnings or [])


def make_summary(interrupted: bool = False) -> ScanManySummary:
    """Five models: two flagged, two clean, one failed; norms whose text order is not numeric."""
    return ScanManySummary(
        models=[outcome("alpha", norm=100.0, index=0.5, seconds=12.0),
                outcome("bravo", verdict="backdoor", norm=9.5, index=4.25, flagged=[3, 7],
                        seconds=2.5, steps=40),
                outcome("charlie", norm=10.25, index=-1.5, seconds=100.0,
                        warnings=["outputs look like probabilities", "=2 labels had no data"]),
                outcome("delta", verdict=None, norm=None, index=None, seconds=0.25,
                        attempts=4, error="model file 'zoo/delta.pt' is not a model"),
                outcome("echo", verdict="backdoor", norm=2.0, index=10.5, flagged=[1],
                        seconds=9.0)],
        settings={"config": {"steps": 100, "norm": 1}, "labels_per_task": None,
                  "engine": "sequential"},
        wall_seconds=42.5, interrupted=interrupted)


def write_reports(folder: Path, summary: ScanManySummary) -> None:
    """The models' own report.html files, as the engine leaves them."""
    for m in summary.models:
        if m.report:
            (folder / m.report).mkdir(parents=True, exist_ok=True)
            (folder / m.report / "report.html").write_text(f"<p>{html.escape(m.name)}</p>")


# -- summary.json ---------------------------------------------------------------------------
def test_summary_json_round_trips(tmp_path: Path) -> None:
    summary = make_summary(interrupted=True)
    paths = write_summary(summary, tmp_path / "run")
    assert paths.json == tmp_path / "run" / "summary.json"

    def refuse(name: str) -> None:
        raise AssertionError(f"summary.json holds {name}")

    data = json.loads(paths.json.read_text(), parse_constant=refuse)
    assert data["schema_version"] == 1 and data["interrupted"] is True
    assert data["totals"] == {"models": 5, "flagged": 2, "suspicious": 0, "clean": 2, "failed": 1,
                              "label_steps": 340, "model_seconds": 123.75,
                              "wall_seconds": 42.5}
    back = ScanManySummary.from_dict(data)
    assert back == summary
    # no temporary file is left behind by the atomic writes
    assert sorted(p.name for p in paths.json.parent.iterdir()) == [
        "index.html", "summary.csv", "summary.json"]


def test_non_finite_numbers_are_written_as_null(tmp_path: Path) -> None:
    summary = ScanManySummary(models=[outcome("a", index=math.inf, norm=math.nan)])
    paths = write_summary(summary, tmp_path)
    text = paths.json.read_text()
    assert "Infinity" not in text and "NaN" not in text
    model = json.loads(text)["models"][0]
    assert model["max_anomaly_index"] is None and model["min_norm"] is None
    row = list(csv.DictReader(io.StringIO(paths.csv.read_text())))[0]
    assert row["max_anomaly_index"] == "" and row["min_norm"] == ""


# -- summary.csv ----------------------------------------------------------------------------
def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    return [dict(zip(rows[0], r)) for r in rows[1:]]


def test_csv_has_one_row_per_model_in_manifest_order(tmp_path: Path) -> None:
    summary = make_summary()
    rows = read_csv(write_summary(summary, tmp_path).csv)
    assert [r["name"] for r in rows] == ["alpha", "bravo", "charlie", "delta", "echo"]
    bravo = rows[1]
    assert bravo == {"name": "bravo", "model": "zoo/bravo.pt", "status": "done",
                     "verdict": "backdoor", "flagged_labels": "3 7", "suspicious_labels": "",
                     "max_anomaly_index": "4.25",
                     "min_norm": "9.5", "label_steps": "40", "wall_seconds": "2.5",
                     "attempts": "1", "error": "", "report": "models/bravo/report.html",
                     "warnings": ""}
    delta = rows[3]
    assert delta["status"] == "failed" and delta["verdict"] == "" and delta["report"] == ""
    assert delta["max_anomaly_index"] == "" and delta["attempts"] == "4"
    assert delta["error"] == "model file 'zoo/delta.pt' is not a model"
    # a negative number stays a number (it is ours, not the manifest's text)
    assert float(rows[2]["max_anomaly_index"]) == -1.5
    assert rows[2]["warnings"] == "outputs look like probabilities | =2 labels had no data"


@pytest.mark.parametrize("name", ["=1+1", "+1", "-2+3", "@SUM(A1:A2)", "\t=1", "\r=1",
                                  " =HYPERLINK(\"http://x\")", "=cmd|' /C calc'!A0"])
def test_csv_neutralises_formulas_in_text_cells(tmp_path: Path, name: str) -> None:
    m = outcome("m1", model=name, error=name, warnings=[name])
    m.name = name
    rows = read_csv(write_summary(ScanManySummary(models=[m]), tmp_path).csv)
    for column in ("name", "model", "error", "warnings"):
        cell = rows[0][column]
        assert cell.startswith("'"), (column, cell)
        assert cell[1:] == name  # the text itself is kept whole after the quote


def test_csv_keeps_awkward_text_intact(tmp_path: Path) -> None:
    name = 'a, "quoted"\nname; ok'
    m = outcome("x")
    m.name, m.model = name, "plain.pt"
    rows = read_csv(write_summary(ScanManySummary(models=[m]), tmp_path).csv)
    assert rows[0]["name"] == name and rows[0]["model"] == "plain.pt"
    assert neutralise("models/=x") == "models/=x"  # only a leading formula character counts


# -- index.html -----------------------------------------------------------------------------
class _Page(HTMLParser):
    """The elements, attributes and text of a page, as a browser's parser sees them."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attributes: list[str] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += [name for name, _ in attrs]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_index_escapes_hostile_text(tmp_path: Path) -> None:
    name = f'{HOSTILE}" onmouseover="alert(1)'
    m = outcome("x", error=HOSTILE, model=f"{HOSTILE}.pt", warnings=[HOSTILE])
    m.name = name
    summary = ScanManySummary(models=[m], settings={"note": HOSTILE, HOSTILE: 1})
    page = _Page(write_summary(summary, tmp_path).html.read_text())
    assert page.tags.count("script") == 1  # the page's own sorting script, and nothing else
    assert "onmouseover" not in page.attributes
    # every hostile text is shown as text: name, model file, error, warning, settings key
    # and value
    assert page.text.count(name) == 1
    assert page.text.count(f"{HOSTILE}.pt") == 1
    assert page.text.count(f"warning: {HOSTILE}") == 1
    assert page.text.count(HOSTILE) == 3  # the error, the settings key and value


def test_index_links_each_report_relatively(tmp_path: Path) -> None:
    summary = make_summary()
    odd = outcome("odd")
    odd.name, odd.report = "a #1?x%", "models/a #1?x%"
    summary.models.append(odd)
    write_reports(tmp_path, summary)
    page = write_summary(summary, tmp_path).html.read_text()
    hrefs = re.findall(r'<a href="([^"]*)"', page)
    table_links = [h for h in hrefs if h.endswith("report.html")]
    assert table_links == ["models/alpha/report.html", "models/bravo/report.html",
                           "models/charlie/report.html", "models/echo/report.html",
                           "models/a%20%231%3Fx%25/report.html"]
    for link in table_links:  # each one resolves, relative to the page, to the model's report
        assert (tmp_path / unquote(link)).is_file()
    assert set(hrefs) - set(table_links) == {"summary.json", "summary.csv"}
    # self-contained: nothing is fetched from anywhere
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<link" not in page and "@import" not in page


def test_unsafe_or_missing_reports_are_not_linked(tmp_path: Path) -> None:
    models = []
    for i, report in enumerate(["../outside", "/etc", "javascript:alert(1)", "models/gone",
                                "models\\x", "models//y", "C:/x"]):
        m = outcome(f"m{i}")
        m.report = report
        models.append(m)
    summary = ScanManySummary(models=models)
    assert [report_path(m) for m in models[:3]] == [None, None, None]
    assert report_path(models[3]) == "models/gone/report.html"  # safe, but no file there
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "report.html").write_text("x")
    page = render_index(summary, out_dir=tmp_path / "run")
    assert "report.html" not in re.sub(r"<footer.*</footer>", "", page, flags=re.S)


def test_index_shows_totals_verdict_and_interruption(tmp_path: Path) -> None:
    page = render_index(make_summary(interrupted=True))
    assert 'class="verdict flagged"' in page and "Backdoor suspected in 2 of 5" in page
    assert 'id="interrupted"' in page
    totals = re.search(r'id="totals">(.*?)</div>\s*<h2', page, re.S).group(1)
    assert re.findall(r"<b>([^<]*)</b>", totals) == ["5", "2", "0", "2", "1", "340",
                                                      "42.5 s", "123.8 s"]
    clean = ScanManySummary(models=[outcome("a"), outcome("b", verdict=None)])
    page = render_index(clean)
    assert 'class="verdict clean"' in page and 'id="interrupted"' not in page
    failed = ScanManySummary(models=[outcome("b", verdict=None)])
    assert 'class="verdict failed"' in render_index(failed)
    for kind in ("backdoor", "clean", "failed"):
        assert f'class="badge {kind}"' in render_index(make_summary())


# -- the graded verdict: suspicious models ---------------------------------------------------
def graded_summary() -> ScanManySummary:
    """A backdoor with a suspicious label beside it, a suspicious model, a clean one."""
    return ScanManySummary(models=[
        outcome("evil", verdict="backdoor", flagged=[3], suspicious=[5], index=4.0),
        outcome("odd", verdict="suspicious", suspicious=[2, 7], index=1.5),
        outcome("fine")])


def test_suspicious_models_are_counted_listed_and_read_back(tmp_path: Path) -> None:
    summary = graded_summary()
    assert [m.name for m in summary.suspicious] == ["odd"]
    assert [m.name for m in summary.flagged] == ["evil"]
    t = summary.totals()
    assert (t["flagged"], t["suspicious"], t["clean"]) == (1, 1, 1)
    assert summary.summary() == ("3 model(s): 1 flagged, 1 suspicious, 1 clean, 0 failed"
                                 " — flagged: evil — suspicious: odd")
    paths = write_summary(summary, tmp_path)
    data = json.loads(paths.json.read_text())
    assert data["totals"]["suspicious"] == 1
    assert [m["suspicious_labels"] for m in data["models"]] == [[5], [2, 7], []]
    assert ScanManySummary.from_dict(data) == summary
    rows = read_csv(paths.csv)
    assert [(r["verdict"], r["flagged_labels"], r["suspicious_labels"]) for r in rows] == [
        ("backdoor", "3", "5"), ("suspicious", "", "2 7"), ("clean", "", "")]


def test_a_summary_written_before_the_graded_verdict_is_read(tmp_path: Path) -> None:
    data = json.loads(write_summary(make_summary(), tmp_path).json.read_text())
    del data["totals"]["suspicious"]
    for m in data["models"]:
        del m["suspicious_labels"]
    back = ScanManySummary.from_dict(data)
    assert [m.suspicious_labels for m in back.models] == [[]] * 5
    assert [m.verdict for m in back.models] == [m.verdict for m in make_summary().models]


@pytest.mark.parametrize(("verdict", "flagged", "suspicious"), [
    ("suspicious", [], []), ("clean", [], [4]), ("suspicious", [1], [4]), ("backdoor", [], [4]),
    ("maybe", [], [])])
def test_an_entry_whose_verdict_does_not_fit_its_labels_is_refused(
        verdict: str, flagged: list[int], suspicious: list[int]) -> None:
    entry = outcome("x").to_dict() | {"verdict": verdict, "flagged_labels": flagged,
                                      "suspicious_labels": suspicious}
    with pytest.raises(InputError, match="verdict"):
        ModelOutcome.from_dict(entry)


def test_index_shows_suspicious_models(tmp_path: Path) -> None:
    page = render_index(graded_summary())
    assert 'class="verdict flagged"' in page  # a backdoor outranks a suspicious model
    assert "Suspicious: odd" in page
    assert 'class="badge suspicious"' in page and '<tr class="suspicious" data-name="odd">' in page
    totals = re.search(r'id="totals">(.*?)</div>\s*<h2', page, re.S).group(1)
    assert re.findall(r"<b>([^<]*)</b>", totals)[:5] == ["3", "1", "1", "1", "0"]
    assert re.search(r'data-sort="2">2, 7</td>', page)  # sorted by how many labels it lists
    only = render_index(ScanManySummary(models=graded_summary().models[1:]))
    assert 'class="verdict suspicious"' in only
    assert "No backdoor confirmed; 1 of 2 model(s) suspicious" in only


def test_graded_summaries_validate_against_the_schema(tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from neuralcleanse.io.json_schemas import load_schema

    validator = jsonschema.Draft202012Validator(load_schema("summary"))
    data = json.loads(write_summary(graded_summary(), tmp_path).json.read_text())
    assert list(validator.iter_errors(data)) == []
    old = json.loads(json.dumps(data))  # written before the graded verdict: still valid
    del old["totals"]["suspicious"]
    for m in old["models"]:
        if m["verdict"] != "suspicious":
            del m["suspicious_labels"]
    assert list(validator.iter_errors(old)) == []

    def broken(model: int, **change: object) -> dict:
        doc = json.loads(json.dumps(data))
        doc["models"][model].update(change)
        return doc

    for doc in (broken(1, suspicious_labels=[]), broken(1, flagged_labels=[1]),
                broken(2, suspicious_labels=[3]), broken(1, suspicious_labels=[2, 2]),
                broken(1, verdict="unsure"), broken(0, suspicious_labels=[-1])):
        assert list(validator.iter_errors(doc)), doc["models"]
    missing = json.loads(json.dumps(data))
    del missing["models"][1]["suspicious_labels"]
    assert list(validator.iter_errors(missing))  # a suspicious model names its labels


# -- headless Chromium: sorting and layout --------------------------------------------------


#: Clicks column headers as a user would and records the row order after each click.
SORT_PROBE = """<script>
window.addEventListener("load", () => {
  const order = () => [...document.querySelectorAll("#models tbody tr")]
    .map(r => r.getAttribute("data-name"));
  const click = key => document.querySelector(`#models th[data-key="${key}"] button`).click();
  const out = {initial: order()};
  click("norm"); out.norm_up = order();
  click("norm"); out.norm_down = order();
  click("seconds"); out.seconds_up = order();
  click("name"); out.name_up = order();
  click("index"); out.index_up = order();
  out.sorted_header = document.querySelector('#models th[aria-sort]').getAttribute("data-key");
  out.links = [...document.querySelectorAll("#models a")].map(a => a.href);
  out.page = location.href;
  out.overflow = document.documentElement.scrollWidth - window.innerWidth;
  document.body.setAttribute("data-check", JSON.stringify(out));
});
</script>
</body>"""


def _probe(browser: str, folder: Path, profile: Path, width: int) -> dict:
    page = folder / "index.html"
    probe = folder / "probe.html"
    probe.write_text(page.read_text().replace("</body>", SORT_PROBE))
    run = run_chromium(browser, profile, "--virtual-time-budget=5000",
                        f"--window-size={width},900", "--dump-dom", probe.as_uri())
    found = re.search(r'data-check="([^"]*)"', run.stdout)
    assert found, run.stderr[-2000:]
    assert console_messages(run.stderr) == []
    return json.loads(html.unescape(found.group(1)))


def test_index_sorts_in_headless_chromium(tmp_path: Path) -> None:
    browser = chromium()
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install chromium, or set "
                    "NEURALCLEANSE_CHROMIUM): the sorting check in a browser is skipped")
    summary = make_summary()
    write_reports(tmp_path / "run", summary)
    write_summary(summary, tmp_path / "run")
    seen = _probe(browser, tmp_path / "run", tmp_path / "profile", 1280)

    names = [m.name for m in summary.models]
    scanned = [m for m in summary.models if m.min_norm is not None]
    by_norm = [m.name for m in sorted(scanned, key=lambda m: m.min_norm)]
    assert seen["initial"] == names
    # numeric order (9.5 < 10.25 < 100), not text order; the failed model (no norm) stays last
    assert seen["norm_up"] == by_norm + ["delta"] == ["echo", "bravo", "charlie", "alpha",
                                                      "delta"]
    assert seen["norm_down"] == by_norm[::-1] + ["delta"]
    assert seen["seconds_up"] == [m.name for m in sorted(summary.models,
                                                         key=lambda m: m.wall_seconds)]
    assert seen["name_up"] == sorted(names)
    assert seen["index_up"] == names
    assert seen["sorted_header"] == "index"
    # the links resolve to the models' reports beside the page
    base = seen["page"].rsplit("/", 1)[0]
    assert seen["links"] == [f"{base}/models/{m.name}/report.html" for m in scanned]


def test_index_screenshots_at_desktop_and_narrow_widths(tmp_path: Path) -> None:
    browser = chromium()
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install chromium, or set "
                    "NEURALCLEANSE_CHROMIUM): the rendering check is skipped")
    from PIL import Image

    summary = make_summary()
    folder = tmp_path / "run"
    write_reports(folder, summary)
    paths = write_summary(summary, folder)
    for width, height in ((1280, 1000), (390, 1000)):
        shot = tmp_path / f"index_{width}.png"
        run = run_chromium(browser, tmp_path / f"profile{width}", f"--screenshot={shot}",
                            f"--window-size={width},{height}", paths.html.as_uri())
        assert shot.is_file(), run.stderr[-2000:]
        assert console_messages(run.stderr) == []
        pixels = np.asarray(Image.open(shot).convert("RGB")).astype(np.int32)
        assert pixels.shape[:2] == (height, width)
        assert pixels.std() > 20  # not blank
        red = (pixels[..., 0] > 170) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
        assert red.sum() > 200  # the flagged verdict bar and the backdoor badges
        # at a phone's width the page itself does not scroll sideways (the table does)
        seen = _probe(browser, folder, tmp_path / f"probe{width}", width)
        assert seen["overflow"] <= 0, seen["overflow"]
