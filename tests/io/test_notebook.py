"""Tests of the notebook views of results: short reprs, ``_repr_html_`` and ``ScanResult.plot``."""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import re
import sys

import numpy as np
import pytest
from PIL import Image

from neuralcleanse.core.errors import InputError
from neuralcleanse.core.results import LabelResult, ScanResult
from neuralcleanse.mitigation.metrics import DataSplit, Measurements
from neuralcleanse.mitigation.result import MitigationResult
from neuralcleanse.mitigation.unlearning import UnlearningReport
from verdict_results import OUTLIER, graded_result

N_LABELS, SIDE = 43, 32
BACKDOOR = 1
HOSTILE = "<iframe onload=\"alert(1)\">"  # no slash: it stays in the file name


def make_result(backdoor: bool = True) -> ScanResult:
    """43 labels of 32x32x3 with norms near 90; label 1 gets a 3x3 mask when ``backdoor``."""
    rng = np.random.default_rng(7)
    labels = []
    for t in range(N_LABELS):
        mask = np.full((SIDE, SIDE), 0.085 + 0.006 * rng.random())
        if t == BACKDOOR and backdoor:
            mask = np.zeros((SIDE, SIDE))
            mask[-3:, -3:] = 1.0
        labels.append(LabelResult(label=t, mask=mask.astype(np.float32),
                                  pattern=rng.random((SIDE, SIDE, 3)).astype(np.float32),
                                  norm=float(mask.sum()), attack_success_rate=0.996,
                                  converged=True, steps=30, seconds=0.2, final_cost=1e-3))
    names = [f"class {t}" for t in range(N_LABELS)]
    names[BACKDOOR] = '<img src=x onerror="alert(2)">'
    return ScanResult.from_labels(
        labels, nb_classes=N_LABELS, anomaly_threshold=2.0, config={"steps": 30},
        model_info={"framework": "keras", "path": f"/models/{HOSTILE}.keras",
                    "input_shape": [SIDE, SIDE, 3], "channels_first": False,
                    "clip_values": [0.0, 1.0]},
        data_info={"n_images": 200, "class_names": names})


def independent_cutoff(result: ScanResult) -> tuple[float, float]:
    """Median norm and the norm at anomaly index 2, computed here from the norms."""
    norms = np.array([r.norm for r in result.labels])
    median = float(np.median(norms))
    mad = 1.4826 * float(np.median(np.abs(norms - median)))
    return median, median - 2.0 * mad


def test_reprs_are_one_short_line_without_the_arrays() -> None:
    result = make_result()
    median, _ = independent_cutoff(result)
    text = repr(result)
    assert len(text) < 200 and "\n" not in text
    assert "array" not in text and "[[" not in text and "mask" not in text
    assert text.startswith(f"ScanResult({N_LABELS} labels, verdict='backdoor', "
                           f"flagged=[{BACKDOOR}], ")
    assert f"median_norm={median:.4g}" in text and "partial=False" in text
    label = result.label(BACKDOOR)
    text = repr(label)
    assert len(text) < 200 and "\n" not in text and "array" not in text
    assert text == (f"LabelResult(label={BACKDOOR}, norm=9, "
                    f"anomaly_index={label.anomaly_index:.3g}, asr=1.00, converged=True)")
    assert "array" not in repr(result.labels)  # a list of labels stays readable too


def test_scan_repr_counts_partial_scans_and_long_flag_lists() -> None:
    result = dataclasses.replace(make_result(), labels=make_result().labels[:20],
                                 flagged_labels=list(range(20)), partial=True)
    text = repr(result)
    assert len(text) < 200
    assert f"20 of {N_LABELS} labels" in text and "partial=True" in text
    assert "flagged=[0, 1, 2, 3, 4, 5, 6, 7, ... +12 more]" in text


def _png_sizes(page: str) -> list[tuple[int, int]]:
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return [Image.open(io.BytesIO(base64.b64decode(u))).size for u in uris]


def test_repr_html_shows_verdict_chart_and_flagged_triggers() -> None:
    result = make_result()
    page = result._repr_html_()
    for line in result.summary().splitlines():
        assert html.escape(line, quote=False) in page
    assert page.count("<svg") == 1
    assert page.count("<rect") == N_LABELS
    assert page.count('fill="#c62828"><title>') == 1  # the one flagged bar
    # mask, pattern and mask·pattern of the flagged label only, as real 32x32 PNGs
    assert _png_sizes(page) == [(SIDE, SIDE)] * 3
    assert f'alt="mask of label {BACKDOOR}"' in page
    assert "<html" not in page and "http" not in page.replace("http://www.w3", "")


def test_repr_html_escapes_strings_from_the_result() -> None:
    page = make_result()._repr_html_()
    assert HOSTILE not in page and "<img src=x" not in page
    assert "&lt;iframe onload=" in page  # the model file's name, escaped
    assert "&lt;img src=x onerror=" in page  # the flagged label's class name, escaped


def test_repr_and_repr_html_show_the_verdict_word_and_suspicious_labels() -> None:
    result = graded_result("suspicious")
    assert f"verdict='suspicious', flagged=[], suspicious=[{OUTLIER}]" in repr(result)
    page = result._repr_html_()
    assert re.search(r'class="verdict-word"[^>]*>SUSPICIOUS</b>', page)
    assert page.count('stroke="#a15c00" stroke-width="2" stroke-dasharray="4 2"><title>'
                      f"label {OUTLIER}:") == 1  # the one suspicious bar, marked apart
    assert 'fill="#c62828"><title>' not in page  # and no flagged bar
    backdoor = graded_result("backdoor")._repr_html_()
    assert re.search(r'class="verdict-word"[^>]*>BACKDOOR</b>', backdoor)


def test_repr_html_of_a_clean_scan_has_no_trigger_images() -> None:
    result = make_result(backdoor=False)
    page = result._repr_html_()
    assert result.flagged_labels == []
    assert "no backdoor found" in page and "data:image/png" not in page
    assert page.count("<svg") == 1


def _mitigation() -> MitigationResult:
    measurements = Measurements(clean_acc_before=0.9, clean_acc_after=0.88,
                                reversed_asr_before={BACKDOOR: 0.97},
                                reversed_asr_after={BACKDOOR: 0.04}, n_test=50)
    report = UnlearningReport(epochs=2, learning_rate=1e-3, stamped_fraction=0.2, n_train=150,
                              n_stamped=30, measurements=measurements,
                              split=DataSplit(source="split", n_fit=150, n_test=50,
                                              test_fraction=0.25, seed=0))
    return MitigationResult(method="unlearning", labels=[BACKDOOR], report=report,
                            model_info={"path": HOSTILE})


def test_mitigation_repr_and_html() -> None:
    result = _mitigation()
    text = repr(result)
    assert len(text) < 200 and "\n" not in text
    assert text == (f"MitigationResult(method='unlearning', labels=[{BACKDOOR}], "
                    "clean_acc=0.900->0.880, max_reversed_asr=0.970->0.040, has_model=False)")
    page = result._repr_html_()
    assert html.escape(result.summary(), quote=False) in page
    rows = re.findall(r"<tr><td[^>]*>([^<]*)</td><td[^>]*>([^<]*)</td><td[^>]*><b>([^<]*)</b>",
                      page)
    assert ("clean accuracy (held out)", "90.0 %", "88.0 %") in rows
    assert (f"attack success of label {BACKDOOR}&#39;s reversed trigger", "97.0 %",
            "4.0 %") in rows
    assert HOSTILE not in page


def test_plot_draws_one_bar_per_label_flagged_in_another_colour_and_the_threshold() -> None:
    pytest.importorskip("matplotlib", reason="ScanResult.plot needs matplotlib (optional)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = make_result()
    fig, given = plt.subplots()
    try:
        ax = result.plot(ax=given)
        assert ax is given
        bars = ax.patches
        assert len(bars) == N_LABELS
        for r, bar in zip(result.labels, bars):
            assert bar.get_x() + bar.get_width() / 2 == pytest.approx(r.label)
            assert bar.get_height() == pytest.approx(r.norm)
        colours = {r.label: bar.get_facecolor() for r, bar in zip(result.labels, bars)}
        others = {c for t, c in colours.items() if t != BACKDOOR}
        assert len(others) == 1 and colours[BACKDOOR] not in others
        median, cutoff = independent_cutoff(result)
        assert 0 < cutoff < median
        lines = {line.get_label().split()[0]: line.get_ydata()[0] for line in ax.get_lines()}
        assert lines["median"] == pytest.approx(median)
        assert lines["anomaly"] == pytest.approx(cutoff)
    finally:
        plt.close(fig)
    ax = result.plot()  # a new figure of its own
    try:
        assert len(ax.patches) == N_LABELS
    finally:
        plt.close(ax.figure)


def test_plot_without_matplotlib_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(InputError, match="pip install matplotlib"):
        make_result().plot()
