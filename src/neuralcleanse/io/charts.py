"""Geometry of the report's SVG charts (the template draws them; no plotting library)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from neuralcleanse.core.results import ScanResult


def norm_chart(result: ScanResult, width: int = 760, height: int = 260) -> dict[str, Any]:
    """Geometry of the SVG bar chart of the trigger norms per label (used by the template).

    Bars of flagged labels are marked; horizontal lines show the median norm and the norm
    below which a label's anomaly index exceeds the threshold.
    """
    left, right, top, bottom = 56, 16, 16, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    labels = result.labels
    norms = [r.norm for r in labels]
    median = result.median_norm
    cutoff = (median - result.anomaly_threshold * result.mad
              if math.isfinite(median) and math.isfinite(result.mad) else math.nan)
    top_value = max([*norms, median if math.isfinite(median) else 0.0, 1e-9]) * 1.08
    step = plot_w / max(len(labels), 1)
    bar_w = max(step * 0.72, 1.0)
    tick_every = 1 if len(labels) <= 40 else math.ceil(len(labels) / 40)

    def y_of(value: float) -> float:
        return top + plot_h * (1.0 - value / top_value)

    bars = []
    for i, r in enumerate(labels):
        y = y_of(r.norm)
        bars.append({
            "x": round(left + i * step + (step - bar_w) / 2, 2), "y": round(y, 2),
            "w": round(bar_w, 2), "h": round(top + plot_h - y, 2), "label": r.label,
            "norm": r.norm, "flagged": r.label in result.flagged_labels,
            "tick": i % tick_every == 0, "cx": round(left + i * step + step / 2, 2),
            "anomaly_index": r.anomaly_index,
        })
    grid = []
    for k in range(5):
        value = top_value * k / 4
        grid.append({"y": round(y_of(value), 2), "value": f"{value:.3g}"})
    lines = []
    if math.isfinite(median):
        lines.append({"y": round(y_of(median), 2), "kind": "median",
                      "text": f"median {median:.3g}"})
    if math.isfinite(cutoff) and cutoff > 0:
        lines.append({"y": round(y_of(cutoff), 2), "kind": "threshold",
                      "text": f"anomaly index {result.anomaly_threshold:g} (norm {cutoff:.3g})"})
    return {"width": width, "height": height, "left": left, "right": width - right,
            "top": top, "bottom": top + plot_h, "bars": bars, "grid": grid, "lines": lines,
            "cutoff": cutoff if math.isfinite(cutoff) else None}


def pruning_chart(curve: list[dict[str, Any]], width: int = 520, height: int = 200
                   ) -> dict[str, Any]:
    """Polylines of the pruning curve: attack success and clean accuracy per pruned share."""
    left, right, top, bottom = 44, 12, 12, 34
    xs = [float(p.get("fraction") or 0.0) for p in curve]
    x_max = max(max(xs), 1e-9)

    def point(fraction: float, value: float) -> str:
        x = left + (width - left - right) * fraction / x_max
        y = top + (height - top - bottom) * (1.0 - value)
        return f"{x:.1f},{y:.1f}"

    def series(key: str, worst: Callable[..., Any] = max) -> str:
        pts = []
        for p, x in zip(curve, xs):
            value = p.get(key)
            if isinstance(value, dict):  # per-label rates: show the worst label
                value = worst((v for v in value.values() if v is not None), default=None)
            if isinstance(value, (int, float)) and math.isfinite(value):
                pts.append(point(x, float(value)))
        return " ".join(pts)

    return {"width": width, "height": height, "left": left, "right": width - right,
            "top": top, "bottom": height - bottom, "x_max": f"{100 * x_max:.0f} %",
            "asr": series("test_asr") or series("fit_asr"),
            "acc": series("test_clean_acc") or series("fit_clean_acc"),
            "label_acc": series("test_label_acc", worst=min)}
