"""Tests of the JSON/HTML reports: fields, images, chart, self-containment, Chromium rendering."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from browser import chromium, console_messages, run_chromium
from neuralcleanse.core.config import ScanConfig
from neuralcleanse.core.results import LabelResult, ScanResult
from neuralcleanse.io.charts import nice_ticks, norm_chart
from neuralcleanse.io.report import render_directory, render_html, write_report
from neuralcleanse.io.report_images import trigger_arrays
from verdict_results import graded_result

if TYPE_CHECKING:
    from neuralcleanse.mitigation.result import MitigationResult

H = W = 8
BACKDOOR = 3


def _label(label: int, mask: np.ndarray, rng: np.random.Generator,
           channels_first: bool = True) -> LabelResult:
    shape = (3, H, W) if channels_first else (H, W, 3)
    return LabelResult(label=label, mask=mask.astype(np.float32),
                       pattern=rng.random(shape).astype(np.float32),
                       norm=float(mask.sum()), attack_success_rate=0.995, converged=True,
                       steps=40, seconds=0.5, final_cost=1e-3)


def make_result(flag_backdoor: bool = True, partial: bool = False,
                source: str = "digits.npz") -> ScanResult:
    """Ten labels with evenly spread mask norms 19-25; label 3 gets a 2x2 mask if backdoored."""
    rng = np.random.default_rng(0)
    labels = []
    for t in range(10):
        mask = np.full((H, W), 0.3 + 0.01 * t)
        if t == BACKDOOR and flag_backdoor:
            mask = np.zeros((H, W))
            mask[-2:, -2:] = 1.0
        labels.append(_label(t, mask, rng))
    return ScanResult.from_labels(
        labels, nb_classes=10, anomaly_threshold=2.0, config=ScanConfig().to_dict(),
        model_info={"framework": "pytorch", "path": "model.pt", "input_shape": [3, H, W],
                    "channels_first": True, "clip_values": [0.0, 1.0], "output": "logits",
                    "preprocessing": None},
        data_info={"n_images": 500, "class_counts": [50] * 10, "source": source},
        versions={"neuralcleanse": "0.1.0", "python": "3"}, wall_seconds=12.5,
        partial=partial)


def test_report_json_has_the_documented_fields(tmp_path: Path) -> None:
    result = make_result()
    paths = write_report(result, tmp_path)
    data = json.loads(paths.json.read_text())
    assert data["schema_version"] == 1
    assert data["flagged_labels"] == [BACKDOOR]
    assert data["partial"] is False
    assert len(data["labels"]) == 10
    for entry, r in zip(data["labels"], result.labels):
        for key in ("label", "norm", "anomaly_index", "attack_success_rate", "converged"):
            assert key in entry
        assert entry["label"] == r.label
        assert entry["norm"] == pytest.approx(r.norm)
        assert np.asarray(entry["mask"]).reshape(entry["mask_shape"]).shape == (H, W)
    assert data["labels"][BACKDOOR]["anomaly_index"] > 2
    # the trigger images are written next to the report
    for t in range(10):
        for kind in ("mask", "pattern", "trigger"):
            assert (paths.images / f"label_{t}_{kind}.png").is_file()


def test_trigger_images_show_mask_pattern_and_their_product() -> None:
    rng = np.random.default_rng(1)
    mask = np.zeros((H, W))
    mask[1, 2] = 1.0
    mask[4, 4] = 0.5
    r = _label(0, mask, rng)
    r.pattern[:] = 0.0
    r.pattern[0, 1, 2] = 1.0  # red channel of the masked pixel at full range
    r.pattern[:, 4, 4] = 1.0
    result = make_result()
    images = trigger_arrays(result, r)
    assert images["mask"].shape == (H, W) and images["mask"].dtype == np.uint8
    assert images["pattern"].shape == (H, W, 3)
    assert images["mask"][1, 2] == 255 and images["mask"][0, 0] == 0
    assert images["mask"][4, 4] in (127, 128)
    trigger = images["trigger"]
    assert tuple(trigger[1, 2]) == (255, 0, 0)
    assert tuple(trigger[4, 4]) in ((127, 127, 127), (128, 128, 128))
    # everything the mask hides is black
    hidden = np.ones((H, W), bool)
    hidden[1, 2] = hidden[4, 4] = False
    assert not trigger[hidden].any()


def test_trigger_images_of_channels_last_grey_models_in_0_255() -> None:
    r = LabelResult(label=0, mask=np.full((H, W), 0.5, np.float32),
                    pattern=np.full((H, W, 1), 255.0, np.float32), norm=32.0,
                    attack_success_rate=1.0, converged=True, steps=1, seconds=0.0,
                    final_cost=0.0)
    result = make_result()
    result.model_info.update(channels_first=False, clip_values=[0.0, 255.0])
    images = trigger_arrays(result, r)
    assert images["pattern"].shape == (H, W)
    assert np.all(images["pattern"] == 255)
    assert np.all(np.isin(images["trigger"], (127, 128)))


def test_chart_marks_the_flagged_label_below_the_threshold_line() -> None:
    result = make_result()
    chart = norm_chart(result)
    assert [b["label"] for b in chart["bars"]] == list(range(10))
    assert [b["flagged"] for b in chart["bars"]] == [t == BACKDOOR for t in range(10)]
    lines = {line["kind"]: line["y"] for line in chart["lines"]}
    assert set(lines) == {"median", "threshold"}
    assert lines["threshold"] > lines["median"]  # a smaller norm is drawn lower
    cutoff = result.median_norm - 2.0 * result.mad
    assert chart["cutoff"] == pytest.approx(cutoff)
    for bar, r in zip(chart["bars"], result.labels):
        top_is_below_line = bar["y"] > lines["threshold"]
        assert top_is_below_line == (r.norm < cutoff)
    # heights are proportional to the norms
    heights = np.array([b["h"] for b in chart["bars"]])
    norms = np.array([r.norm for r in result.labels])
    assert np.allclose(heights / heights.max(), norms / norms.max(), atol=0.01)


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=1e-6, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_ticks_are_round_steps_covering_the_range(high: float) -> None:
    ticks = nice_ticks(high)
    assert 4 <= len(ticks) <= 8
    assert ticks[0] == 0.0 and ticks[-1] >= high
    step = ticks[1] - ticks[0]
    exponent = math.floor(math.log10(step))
    mantissa = step / 10.0 ** exponent
    assert min(abs(mantissa - m) for m in (1.0, 2.0, 5.0, 10.0)) < 1e-6
    for i, tick in enumerate(ticks):
        assert tick == pytest.approx(i * step, rel=1e-9, abs=1e-12 * step)
    assert ticks[-2] < high  # the last tick is the first at or above the data, not beyond


def test_ticks_of_typical_norms() -> None:
    assert nice_ticks(68.5) == [0, 20, 40, 60, 80]
    assert nice_ticks(0.3) == [0, 0.1, 0.2, 0.3]
    assert nice_ticks(19.4) == [0, 5, 10, 15, 20]
    assert nice_ticks(1234) == [0, 500, 1000, 1500]
    assert nice_ticks(0.0) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]


def _boxes_overlap(a: dict, b: dict) -> bool:
    return a["x0"] < b["x1"] and b["x0"] < a["x1"] and a["y0"] < b["y1"] and b["y0"] < a["y1"]


@pytest.mark.parametrize("spread", [0.01, 0.0005, 0.2])
def test_chart_line_labels_sit_outside_the_bars_and_apart(spread: float) -> None:
    """Median and threshold labels lie right of every bar and never overlap, even when the
    two lines are a pixel apart (tiny spread)."""
    rng = np.random.default_rng(2)
    labels = [_label(t, np.full((H, W), 0.3 + spread * t), rng) for t in range(10)]
    result = ScanResult.from_labels(labels, nb_classes=10, anomaly_threshold=0.01,
                                    config=ScanConfig().to_dict())
    chart = norm_chart(result)
    assert [line["kind"] for line in chart["lines"]] == ["median", "threshold"]
    bars_right = max(b["x"] + b["w"] for b in chart["bars"])
    assert bars_right <= chart["right"]
    boxes = [line["box"] for line in chart["lines"]]
    for box in boxes:
        assert box["x0"] > chart["right"] and box["x1"] <= chart["width"]
        assert 0 <= box["y0"] and box["y1"] <= chart["height"]
        assert all(not _boxes_overlap(box, {"x0": b["x"], "x1": b["x"] + b["w"],
                                            "y0": b["y"], "y1": b["y"] + b["h"]})
                   for b in chart["bars"])
    assert not _boxes_overlap(*boxes)
    # the grid values are the round ticks, and the highest bar stays inside the plot
    assert [g["value"] for g in chart["grid"]] == [f"{v:.10g}" for v in chart["ticks"]]
    assert min(b["y"] for b in chart["bars"]) >= chart["top"]


def test_html_is_self_contained_verdict_first_and_escaped() -> None:
    result = make_result(source="<script>alert('x')</script>")
    html = render_html(result)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "@import" not in html and "url(http" not in html
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    verdict = html.index('id="verdict"')
    assert verdict < html.index('id="norm-chart"') < html.index("Every label")
    assert "Backdoor: label 3" in html and '<span class="word">BACKDOOR</span>' in html
    # mask, pattern and mask*pattern of every label, plus the large copies of the flagged one
    assert html.count("<img ") == 3 * 10 + 3
    assert html.count('src="data:image/png;base64,') == 3 * 10 + 3
    assert html.count('id="flagged-3"') == 1
    # settings, model facts, data summary, versions and timings are all shown
    for field in ("early_stop_patience", "anomaly_threshold", "clip values", "channels first",
                  "images per class", "python", "scan wall time"):
        assert field in html


def test_model_file_hash_and_size_are_streamed_and_shown(tmp_path: Path) -> None:
    from neuralcleanse.frontends.cli.inputs import file_facts

    content = np.random.default_rng(3).bytes(3 * (1 << 20) + 17)  # several read chunks
    model = tmp_path / "model.pt"
    model.write_bytes(content)
    facts = file_facts(model)
    assert facts == {"file_sha256": hashlib.sha256(content).hexdigest(),
                     "file_bytes": len(content)}
    assert file_facts(tmp_path) == {}  # a folder (SavedModel) has no single file to hash
    result = make_result()
    result.model_info.update(facts)
    html = render_html(result)
    provenance = re.search(r'id="provenance">(.*?)</p>', html, re.S)
    assert provenance and facts["file_sha256"] in provenance.group(1)
    assert "3 MiB" in provenance.group(1) and "model.pt" in provenance.group(1)
    assert 'id="provenance"' not in render_html(make_result())  # no hash, no claim


def test_report_links_to_its_json_and_every_trigger_image(tmp_path: Path) -> None:
    paths = write_report(make_result(), tmp_path)
    html = paths.html.read_text()
    links = re.findall(r'href="([^"]+)"', html)
    assert "report.json" in links and "triggers/" in links
    pngs = [link for link in links if link.endswith(".png")]
    # every label's mask, pattern and trigger, from the small and the large (flagged) cards
    assert len(set(pngs)) == 30 and len(pngs) == 33
    for link in links:
        assert not link.startswith(("/", "file:", "http")), link  # relative: the folder moves
        assert (tmp_path / link).exists(), link


def _unlearning() -> MitigationResult:
    from neuralcleanse.mitigation.metrics import DataSplit, Measurements
    from neuralcleanse.mitigation.result import MitigationResult
    from neuralcleanse.mitigation.unlearning import UnlearningReport

    measurements = Measurements(clean_acc_before=0.9, clean_acc_after=0.875,
                                reversed_asr_before={BACKDOOR: 0.97},
                                reversed_asr_after={BACKDOOR: 0.04}, n_test=48)
    report = UnlearningReport(epochs=2, learning_rate=1e-3, stamped_fraction=0.2, n_train=150,
                              n_stamped=30, measurements=measurements,
                              split=DataSplit(source="split", n_fit=150, n_test=48,
                                              test_fraction=0.25, seed=7))
    return MitigationResult(method="unlearning", labels=[BACKDOOR], report=report)


def test_mitigation_shows_one_held_out_clean_accuracy_with_its_count() -> None:
    page = render_html(make_result(), mitigation=_unlearning().to_dict())
    section = page[page.index('id="mitigation"'):page.index("Every label")]
    rows = re.findall(r"<tr><td>(.*?)</td><td[^>]*>([^<]*)</td><td[^>]*><b>([^<]*)</b>", section)
    accuracy = [r for r in rows if "accuracy" in r[0] and "own" not in r[0]]
    assert len(accuracy) == 1
    assert "held out" in accuracy[0][0] and "n = 48 images" in accuracy[0][0]
    assert accuracy[0][1:] == ("90.0 %", "87.5 %")
    measured = re.search(r'id="measured-on">(.*?)</p>', section)
    assert measured and "48 images held out" in measured.group(1) and "seed 7" in measured.group(1)


def _mitigation_details(page: str) -> dict[str, str]:
    section = page[page.index('id="mitigation"'):page.index("Every label")]
    return dict(re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td></tr>", section))


def test_mitigation_shows_where_the_filter_or_the_model_was_saved() -> None:
    from dataclasses import replace

    from neuralcleanse.mitigation.filtering import FilteringReport

    unlearning = _unlearning()
    filtering = replace(unlearning, method="filtering", report=FilteringReport(
        layer="final_layer_input", n_neurons=32, neurons={BACKDOOR: [4, 9]}, threshold=1.5,
        target_fpr=0.05, false_positive_rate=0.0625, detection_rate=0.9,
        detection_rate_by_label={BACKDOOR: 0.9}, measurements=unlearning.report.measurements,
        split=unlearning.report.split))
    saved = {**filtering.to_dict(), "saved_filter": "deploy/<filter>.json"}
    details = _mitigation_details(render_html(make_result(), mitigation=saved))
    assert details["input filter saved to"] == "deploy/&lt;filter&gt;.json"  # escaped
    assert "repaired model saved to" not in details
    assert details["layer"] == "final_layer_input"  # the filtering section itself
    repaired = {**unlearning.to_dict(), "saved_model": "out/repaired_unlearning.pt"}
    details = _mitigation_details(render_html(make_result(), mitigation=repaired))
    assert details["repaired model saved to"] == "out/repaired_unlearning.pt"
    assert "input filter saved to" not in details
    # a mitigation.json that saved nothing (or an older one) shows neither
    details = _mitigation_details(render_html(make_result(), mitigation=filtering.to_dict()))
    assert not {"input filter saved to", "repaired model saved to"} & set(details)
    # an older report (no score option) averaged its trigger neurons
    assert details["score"] == "mean of the trigger neurons"
    assert details["target false-positive rate"] == "5.0 %"
    assert details["held with confidence"] == "–"  # nor did it record a confidence
    confident = replace(filtering, report=replace(filtering.report, options={
        "score": "fisher", "fpr_confidence": 0.8}))
    details = _mitigation_details(render_html(make_result(), mitigation=confident.to_dict()))
    assert details["held with confidence"] == "80.0 %"


def test_filtering_details_name_the_score_and_count_each_neuron_once() -> None:
    from dataclasses import replace

    from neuralcleanse.mitigation.filtering import FilteringReport

    unlearning = _unlearning()
    shared = list(range(32))  # the Fisher score watches the whole layer for every label
    filtering = replace(unlearning, method="filtering", report=FilteringReport(
        layer="final_layer_input", n_neurons=32, neurons={BACKDOOR: shared, 0: shared},
        threshold=1.5, target_fpr=0.05, false_positive_rate=0.05, detection_rate=1.0,
        detection_rate_by_label={BACKDOOR: 1.0, 0: 1.0},
        measurements=unlearning.report.measurements, split=unlearning.report.split,
        options={"score": "fisher"}))
    details = _mitigation_details(render_html(make_result(), mitigation=filtering.to_dict()))
    assert details["score"] == "Fisher&#39;s discriminant of the layer&#39;s neurons"
    assert details["neurons scoring an input"] == "32"


def test_pruning_curve_never_mixes_the_fitting_and_held_out_splits() -> None:
    from neuralcleanse.io.charts import pruning_chart

    def heights(points: str) -> list[float]:
        return [float(p.split(",")[1]) for p in points.split()]

    both = [{"fraction": f, "fit_clean_acc": 0.5, "fit_asr": 0.5, "test_clean_acc": 1.0,
             "test_asr": 0.0} for f in (0.0, 0.1, 0.2)]
    chart = pruning_chart(both)
    assert chart["split"] == "held-out"
    assert set(heights(chart["acc"])) == {chart["top"]}  # accuracy 1.0 at the top
    assert set(heights(chart["asr"])) == {chart["bottom"]}
    gap = [dict(p) for p in both]
    gap[1]["test_clean_acc"] = None
    chart = pruning_chart(gap)
    assert chart["split"] == "fitting"
    middle = (chart["top"] + chart["bottom"]) / 2
    assert heights(chart["acc"]) == pytest.approx([middle] * 3, abs=0.1)


def test_clean_and_partial_verdicts() -> None:
    clean = render_html(make_result(flag_backdoor=False))
    assert "Clean: no backdoor found" in clean and "Backdoor:" not in clean
    assert 'class="verdict clean"' in clean and '<span class="word">CLEAN</span>' in clean
    partial = render_html(make_result(partial=True))
    assert 'class="verdict partial"' in partial
    # library text names no command-line flag: the report is also rendered from Python
    assert "Partial scan" in partial and "resume the scan" in partial
    assert "--resume" not in partial
    assert "Backdoor:" not in partial


def test_report_dir_is_rerendered_from_its_json(tmp_path: Path) -> None:
    paths = write_report(make_result(), tmp_path)
    first = paths.html.read_text()
    paths.html.unlink()
    shutil.rmtree(paths.images)
    again = render_directory(tmp_path)
    second = again.html.read_text()

    def strip_time(text: str) -> str:
        return re.sub(r"generated \d{4}-\d\d-\d\d \d\d:\d\d", "", text)

    assert strip_time(first) == strip_time(second)
    assert len(list(again.images.glob("*.png"))) == 30


def test_render_directory_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="report.json"):
        render_directory(tmp_path)
    (tmp_path / "report.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(ValueError, match="schema_version"):
        render_directory(tmp_path)


# -- headless Chromium -----------------------------------------------------------------------

CHECK_SCRIPT = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images];
  const decoded = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  const bars = [...document.querySelectorAll("#norm-chart rect")]
    .filter(r => r.getBoundingClientRect().height > 0).length;
  document.body.setAttribute("data-check", decoded + "/" + imgs.length + "/" + bars);
});
</script>
</body>"""


def test_html_renders_in_headless_chromium(tmp_path: Path) -> None:
    browser = chromium()
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install chromium, or set "
                    "NEURALCLEANSE_CHROMIUM): the HTML rendering check is skipped")
    from PIL import Image

    paths = write_report(make_result(), tmp_path / "report")
    shot = tmp_path / "shot.png"
    run = run_chromium(browser, tmp_path / "profile", f"--screenshot={shot}",
                        "--window-size=1100,1600", paths.html.as_uri())
    assert shot.is_file(), run.stderr[-2000:]
    assert console_messages(run.stderr) == []
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(np.int32)
    assert pixels.shape[:2] == (1600, 1100)
    assert pixels.std() > 20  # not blank
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    red = (pixels[..., 0] > 170) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    assert red.sum() > 500  # the verdict bar and the flagged label's bar are red

    # every image decodes and every bar of the chart has a height, with no console message
    probe = tmp_path / "report" / "probe.html"
    probe.write_text(paths.html.read_text().replace("</body>", CHECK_SCRIPT))
    run = run_chromium(browser, tmp_path / "profile2", "--virtual-time-budget=5000",
                        "--dump-dom", probe.as_uri())
    found = re.search(r'data-check="(\d+)/(\d+)/(\d+)"', run.stdout)
    assert found, run.stderr[-2000:]
    decoded, total, bars = map(int, found.groups())
    assert total == 33 and decoded == total
    assert bars == 10
    assert console_messages(run.stderr) == []


def test_chromium_check_detects_broken_pages(tmp_path: Path) -> None:
    """The checks above would fail on a page with a broken image or a script error."""
    browser = chromium()
    if browser is None:
        pytest.skip("Chromium is not installed: the HTML rendering check is skipped")
    page = tmp_path / "broken.html"
    page.write_text('<html><body><img src="data:image/png;base64,AAAA">'
                    "<script>undefinedFunction();</script>" + CHECK_SCRIPT + "</html>")
    run = run_chromium(browser, tmp_path / "profile", "--virtual-time-budget=5000",
                        "--dump-dom", page.as_uri())
    found = re.search(r'data-check="(\d+)/(\d+)/(\d+)"', run.stdout)
    assert found and found.group(1) == "0" and found.group(2) == "1"
    assert any("undefinedFunction" in m for m in console_messages(run.stderr))


WIDTH_PROBE = """<script>
document.getElementById("page").addEventListener("load", () => {
  const inner = document.getElementById("page").contentDocument;
  const doc = inner.documentElement;
  const labels = [...inner.querySelectorAll("#norm-chart text.line-label")]
    .map(t => t.getBoundingClientRect());
  const bars = [...inner.querySelectorAll("#norm-chart rect")]
    .map(r => r.getBoundingClientRect());
  const hit = labels.some(a => bars.some(b => a.left < b.right && b.left < a.right &&
                                              a.top < b.bottom && b.top < a.bottom));
  const apart = labels.length < 2 || !(labels[0].top < labels[1].bottom &&
                                       labels[1].top < labels[0].bottom);
  document.body.setAttribute("data-width", doc.scrollWidth + "/" + doc.clientWidth + "/" +
                             labels.length + "/" + (hit ? 1 : 0) + "/" + (apart ? 1 : 0));
});
</script>"""


def _framed(page: str, width: int, height: int, probe: bool) -> str:
    """``page`` in an iframe ``width`` pixels wide (headless Chromium's windows are at least
    500 wide; the frame is the phone's viewport: media queries and layout follow it)."""
    import html as html_module

    return (f'<html><body style="margin:0"><iframe id="page" style="width:{width}px;'
            f'height:{height}px;border:0;display:block" srcdoc="{html_module.escape(page)}">'
            f"</iframe>{WIDTH_PROBE if probe else ''}</body></html>")


@pytest.mark.parametrize("width, kind", [(1280, "plain"), (390, "plain"), (390, "graded")])
def test_report_screenshots_and_no_sideways_scroll(tmp_path: Path, width: int,
                                                   kind: str) -> None:
    """A real report at desktop and phone widths: no horizontal scrolling, the drawn chart
    labels clear of the bars and of each other; the screenshots are kept for a person to see
    (copies in /tmp/nc-screens/). ``graded``: a confirmed backdoor with a suspicious label and
    the Confirmation table."""
    browser = chromium()
    if browser is None:
        pytest.skip("Chromium is not installed: the screenshot check is skipped")
    from PIL import Image

    result = make_result() if kind == "plain" else graded_result("backdoor")
    result.model_info.update(file_sha256="ab" * 32, file_bytes=1_234_567)
    paths = write_report(result, tmp_path / "report", mitigation=_unlearning().to_dict())
    page = paths.html.read_text()
    height = 3000
    size = f"--window-size={max(width, 500)},{height}"
    probe = tmp_path / "report" / "probe.html"
    probe.write_text(_framed(page, width, height, probe=True))
    run = run_chromium(browser, tmp_path / "profile", "--virtual-time-budget=5000", size,
                        "--dump-dom", probe.as_uri())
    found = re.search(r'data-width="(\d+)/(\d+)/(\d+)/(\d)/(\d)"', run.stdout)
    assert found, run.stderr[-2000:]
    scroll_width, client_width, n_labels, hit, apart = map(int, found.groups())
    assert client_width == width
    assert scroll_width <= client_width  # nothing sticks out: no sideways scrolling
    assert n_labels == 2 and hit == 0 and apart == 1
    assert console_messages(run.stderr) == []
    framed = tmp_path / "report" / "framed.html"
    framed.write_text(_framed(page, width, height, probe=False))
    full = tmp_path / "full.png"
    run = run_chromium(browser, tmp_path / "profile2", f"--screenshot={full}", size,
                        "--virtual-time-budget=5000", framed.as_uri())
    assert full.is_file(), run.stderr[-2000:]
    shot = tmp_path / (f"report-{width}.png" if kind == "plain" else f"report-{kind}-{width}.png")
    Image.open(full).crop((0, 0, width, height)).save(shot)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(np.int32)
    assert pixels.shape[:2] == (height, width) and pixels.std() > 20
    screens = Path("/tmp/nc-screens")
    screens.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, screens / shot.name)


# -- known trigger and stamped examples ------------------------------------------------------
def _card(html: str, label: int) -> str:
    start = html.index(f'id="flagged-{label}"')
    end = html.find('<div class="card', start)
    return html[start:end if end > 0 else len(html)]


def test_known_trigger_is_shown_beside_its_label_or_every_flagged_one(tmp_path: Path) -> None:
    import jsonschema

    from neuralcleanse.io.json_schemas import load_schema
    from neuralcleanse.io.known_trigger import known_trigger_entry

    mask = np.zeros((H, W))
    mask[:2, :2] = 1.0  # unlike any reversed mask of make_result
    result = make_result()
    result.model_info["known_trigger"] = known_trigger_entry(
        mask, np.ones((3, H, W)), label=5, files=["m.png"])
    result.versions["numpy"] = "2"  # the schema asks for it
    paths = write_report(result, tmp_path)
    html = paths.html.read_text()
    known_png = (tmp_path / "triggers" / "known_mask.png").read_bytes()
    from PIL import Image
    with Image.open(tmp_path / "triggers" / "known_mask.png") as image:
        shown = np.asarray(image.convert("L"))
    assert shown[0, 0] == 255 and shown[-1, -1] == 0 and known_png
    card5 = _card(html, 5)  # label 5 is not flagged but is the known target
    assert 'id="known-5"' in card5 and "known target, not flagged" in card5
    assert 'id="known-3"' not in html
    known_div = card5[card5.index('id="known-5"'):]
    assert known_div[:known_div.index("</div>")].count("data:image/png;base64,") == 3
    model_table = html.split('id="model-info"')[1].split("</table>")[0]
    assert "<td>known trigger</td><td>(m.png) (target 5)</td>" in model_table
    assert model_table.count("known") == 1 and "64 values" not in model_table  # no arrays
    jsonschema.validate(json.loads(paths.json.read_text()), load_schema("report"))
    # with no known target it sits beside every flagged label
    result.model_info["known_trigger"]["label"] = None
    html = render_html(result)
    assert 'id="known-3"' in _card(html, BACKDOOR) and 'id="known-5"' not in html


def test_stamped_example_shows_clean_then_stamped_with_predictions(tmp_path: Path) -> None:
    import jsonschema

    from neuralcleanse.io.json_schemas import load_schema

    result = make_result()
    clean = np.zeros((3, H, W))
    stamped = clean.copy()
    stamped[:, -2:, -2:] = 1.0
    result.data_info["stamped_examples"] = [
        {"label": BACKDOOR, "source_label": 1, "clean_image": clean.tolist(),
         "image": stamped.tolist(), "clean_prediction": 1, "prediction": BACKDOOR},
        {"label": 99, "image": "broken"},  # malformed entries are skipped, not fatal
    ]
    result.versions["numpy"] = "2"  # the schema asks for it
    paths = write_report(result, tmp_path)
    html = paths.html.read_text()
    card = _card(html, BACKDOOR)
    assert 'id="example-3"' in card and "clean (label 1)" in card
    assert f"scanned model: predicted <b>1</b> → <b>{BACKDOOR}</b>" in card
    assert 'id="example-after-' not in html  # no mitigation, nothing after it
    assert "stamped_examples" not in html.split('id="data-info"')[1].split("</table>")[0]
    # the schema types the entries: the well-formed one passes, the malformed one does not
    document = json.loads(paths.json.read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, load_schema("report"))
    document["data_info"]["stamped_examples"].pop()
    jsonschema.validate(document, load_schema("report"))


def _filtering() -> MitigationResult:
    from dataclasses import replace

    from neuralcleanse.mitigation.filtering import FilteringReport

    unlearning = _unlearning()
    return replace(unlearning, method="filtering", report=FilteringReport(
        layer="final_layer_input", n_neurons=32, neurons={BACKDOOR: [4, 9]}, threshold=1.5,
        target_fpr=0.05, false_positive_rate=0.0625, detection_rate=0.9,
        detection_rate_by_label={BACKDOOR: 0.9}, measurements=unlearning.report.measurements,
        split=unlearning.report.split))


def _after_line(html: str, label: int) -> str:
    """The text of a card's line about its stamped example after the mitigation."""
    found = re.findall(rf'<p class="stats example-after" id="example-after-{label}">(.*?)</p>',
                       _card(html, label))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("method", ["unlearning", "filtering"])
def test_stamped_examples_show_the_answers_after_the_mitigation(tmp_path: Path,
                                                                method: str) -> None:
    result = make_result()
    result.suspicious_labels = [5]  # a suspicious label's example is shown on its card too
    clean = np.zeros((3, H, W))
    stamped = clean.copy()
    stamped[:, -2:, -2:] = 1.0
    result.data_info["stamped_examples"] = [
        {"label": label, "kind": kind, "source_label": 1, "clean_image": clean.tolist(),
         "image": stamped.tolist(), "clean_prediction": 1, "prediction": label}
        for label, kind in ((BACKDOOR, "flagged"), (5, "suspicious"))]
    mitigation = (_unlearning() if method == "unlearning" else _filtering()).to_dict()
    filtering = method == "filtering"
    mitigation["stamped_examples"] = [
        {"label": BACKDOOR, "method": method, "mitigated": True, "refused": filtering,
         "prediction": None if filtering else 1, "clean_refused": False,
         "clean_prediction": 1},
        {"label": 5, "method": method, "mitigated": False, "refused": False,
         "prediction": 5, "clean_refused": False, "clean_prediction": 1},
        {"label": 7, "prediction": "seven"}, "not an entry"]  # skipped, not fatal
    write_report(result, tmp_path, mitigation=mitigation)
    (tmp_path / "report.html").unlink()
    html = render_directory(tmp_path).html.read_text()  # re-rendered from the JSON files
    for label in (BACKDOOR, 5):
        assert f"scanned model: predicted <b>1</b> → <b>{label}</b>" in _card(html, label)
    if filtering:
        assert _after_line(html, BACKDOOR) == (
            f"after filtering of label {BACKDOOR}: clean <b>accepted (predicted 1)</b> · "
            "stamped <b>refused</b>")
        assert _after_line(html, 5) == (
            f"after filtering of label {BACKDOOR}: clean <b>accepted (predicted 1)</b> · "
            "stamped <b>accepted (predicted 5)</b>")
    else:
        assert _after_line(html, BACKDOOR) == (
            f"after unlearning of label {BACKDOOR}: predicted <b>1</b> → <b>1</b>")
        assert _after_line(html, 5) == (
            f"after unlearning of label {BACKDOOR}: predicted <b>1</b> → <b>5</b>")
    # the mitigation.json that holds them is still read as a mitigation result
    from neuralcleanse.mitigation.result import MitigationResult

    assert MitigationResult.from_json(tmp_path / "mitigation.json").method == method


def test_known_trigger_files_are_read_scaled_and_checked(tmp_path: Path) -> None:
    from PIL import Image

    from neuralcleanse.core.errors import LoadError
    from neuralcleanse.io.known_trigger import read_known_trigger

    mask = np.zeros((H, W), np.uint8)
    mask[1, 2] = 255
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    Image.fromarray(rgb).save(tmp_path / "p.png")
    entry = read_known_trigger(tmp_path / "m.png", tmp_path / "p.png", input_shape=(H, W, 3),
                               channels_first=False, clip_values=(-1.0, 1.0), label=2)
    got = np.reshape(entry["pattern"], entry["pattern_shape"])
    assert entry["pattern_shape"] == [H, W, 3] and entry["label"] == 2
    np.testing.assert_allclose(got[..., 0], 1.0)
    np.testing.assert_allclose(got[..., 1:], -1.0)
    assert np.reshape(entry["mask"], entry["mask_shape"])[1, 2] == 1.0
    assert sum(entry["mask"]) == 1.0
    with pytest.raises(LoadError, match="m.png.*is 8x8 pixels but the model's images are 4x8"):
        read_known_trigger(tmp_path / "m.png", None, input_shape=(3, 8, 4),
                           channels_first=True, clip_values=(0.0, 1.0))
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 10  # the file has 64 pixels: a "bomb" under this limit
    try:
        with pytest.raises(LoadError, match="MAX_IMAGE_PIXELS"):
            read_known_trigger(tmp_path / "m.png", None, input_shape=(3, H, W),
                               channels_first=True, clip_values=(0.0, 1.0))
    finally:
        Image.MAX_IMAGE_PIXELS = old
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(LoadError, match="bad.png") as info:
        read_known_trigger(tmp_path / "bad.png", None, input_shape=(3, H, W),
                           channels_first=True, clip_values=(0.0, 1.0))
    assert "\n" not in str(info.value)
