"""What a notebook shows of a result: one-line reprs, HTML fragments and a matplotlib chart.

The result classes call into this module lazily (``core`` and ``mitigation`` do not import
``io`` at module level). The HTML reuses the report's pieces: the verdict of
:meth:`ScanResult.summary`, the chart geometry of :func:`~neuralcleanse.io.charts.norm_chart`,
the trigger images of :mod:`~neuralcleanse.io.report_images`, the mitigation rows of
:func:`~neuralcleanse.io.report_views.mitigation_view`, and the report's Jinja2 environment
(autoescaped), so every string from the result is escaped.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any

from neuralcleanse.core.errors import InputError
from neuralcleanse.core.results import LabelResult, ScanResult
from neuralcleanse.io.charts import norm_chart
from neuralcleanse.io.report import template_environment
from neuralcleanse.io.report_images import data_uri, png_bytes, trigger_arrays
from neuralcleanse.io.report_views import mitigation_view
from neuralcleanse.io.verdict_views import verdict_view

#: Labels a repr lists before it only counts the rest.
_REPR_LABELS = 8
#: Colours of the matplotlib chart (the HTML report's bar and flagged colours).
BAR_COLOUR = "#7c8db5"
FLAGGED_COLOUR = "#c62828"
SUSPICIOUS_COLOUR = "#e0a030"


def _num(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}g}" if isinstance(value, (int, float)) else repr(value)


def _short_list(values: list[int]) -> str:
    shown = ", ".join(str(int(v)) for v in values[:_REPR_LABELS])
    more = len(values) - _REPR_LABELS
    return f"[{shown}, ... +{more} more]" if more > 0 else f"[{shown}]"


def label_repr(r: LabelResult) -> str:
    """One line naming a label's numbers, never its mask or pattern."""
    return (f"LabelResult(label={r.label}, norm={_num(r.norm)}, "
            f"anomaly_index={_num(r.anomaly_index, 3)}, asr={r.attack_success_rate:.2f}, "
            f"converged={bool(r.converged)})")


def scan_repr(result: ScanResult) -> str:
    """One line: labels, verdict, flagged (and suspicious) labels, median, MAD, partial."""
    n = len(result.labels)
    counted = f"{n} labels" if n == result.nb_classes else f"{n} of {result.nb_classes} labels"
    suspicious = (f"suspicious={_short_list(list(result.suspicious_labels))}, "
                  if result.suspicious_labels else "")
    return (f"ScanResult({counted}, verdict={result.verdict!r}, "
            f"flagged={_short_list(list(result.flagged_labels))}, {suspicious}"
            f"median_norm={_num(result.median_norm)}, mad={_num(result.mad)}, "
            f"partial={bool(result.partial)})")


def mitigation_repr(result: Any) -> str:
    """One line of a :class:`~neuralcleanse.mitigation.MitigationResult`'s figures."""
    m = result.report.measurements
    worst = [max(d.values(), default=math.nan) for d in (m.reversed_asr_before,
                                                          m.reversed_asr_after)]
    return (f"MitigationResult(method={result.method!r}, labels={_short_list(result.labels)}, "
            f"clean_acc={m.clean_acc_before:.3f}->{m.clean_acc_after:.3f}, "
            f"max_reversed_asr={worst[0]:.3f}->{worst[1]:.3f}, "
            f"has_model={result.model is not None})")


def _template(name: str) -> Any:
    text = resources.files("neuralcleanse.io").joinpath(f"templates/{name}").read_text("utf-8")
    return template_environment().from_string(text)


def scan_html(result: ScanResult) -> str:
    """Self-contained HTML fragment: verdict word and lines, norm chart, flagged triggers."""
    flagged = [result.label(t) for t in result.flagged_labels]
    cards = []
    for r in flagged:
        images = {k: data_uri(png_bytes(a)) for k, a in trigger_arrays(result, r).items()}
        cards.append({"r": r, "images": images})
    names = result.data_info.get("class_names")
    model = result.model_info.get("path")
    return _template("notebook_scan.html").render(
        result=result, verdict=verdict_view(result), summary=result.summary().splitlines(),
        chart=norm_chart(result), cards=cards,
        class_names=names if isinstance(names, list) else None,
        model_name=Path(str(model)).name if model else None)


def mitigation_html(result: Any) -> str:
    """Self-contained HTML fragment: the mitigation's summary and before/after table."""
    return _template("notebook_mitigation.html").render(
        summary=result.summary(), view=mitigation_view(result.to_dict()))


def plot_norms(result: ScanResult, ax: Any = None) -> Any:
    """Bar chart of the trigger norm per label on a matplotlib Axes (a new figure by default).

    Flagged labels' bars are red, suspicious ones amber; a dashed line marks the median norm
    and a dotted red line the norm below which a label's anomaly index exceeds the threshold
    (``median - threshold * MAD``), drawn when that norm is positive.

    Raises:
        InputError: When matplotlib is not installed.
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("ScanResult.plot needs matplotlib, which is not installed: "
                         "pip install matplotlib") from None
    if ax is None:
        _, ax = plt.subplots(figsize=(max(6.0, 0.18 * len(result.labels)), 3.5))
    flagged, suspicious = set(result.flagged_labels), set(result.suspicious_labels)
    labels = [r.label for r in result.labels]
    ax.bar(labels, [r.norm for r in result.labels],
           color=[FLAGGED_COLOUR if t in flagged else SUSPICIOUS_COLOUR if t in suspicious
                  else BAR_COLOUR for t in labels])
    median, mad = result.median_norm, result.mad
    if math.isfinite(median):
        ax.axhline(median, color="#37474f", linestyle="--", linewidth=1.2,
                   label=f"median {median:.3g}")
        cutoff = median - result.anomaly_threshold * mad
        if math.isfinite(cutoff) and cutoff > 0:
            ax.axhline(cutoff, color=FLAGGED_COLOUR, linestyle=":", linewidth=1.5,
                       label=f"anomaly index {result.anomaly_threshold:g} (norm {cutoff:.3g})")
        ax.legend(loc="best", fontsize="small")
    ax.set_xlabel("label")
    ax.set_ylabel("L1 norm of the mask")
    ax.set_title("Neural Cleanse: trigger size per label")
    return ax
