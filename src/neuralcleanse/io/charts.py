"""Geometry of the report's SVG charts (the template draws them; no plotting library)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from neuralcleanse.core.results import ScanResult

#: Height, in SVG units, of one line label in the chart's right margin.
LABEL_HEIGHT = 14.0
#: Estimated width of one character of the chart's 11-pixel labels (generous, so that the
#: estimated boxes contain the drawn text).
CHAR_WIDTH = 6.6


def nice_ticks(high: float, low: float = 0.0, most: int = 6) -> list[float]:
    """Round axis ticks from ``low`` up to at least ``high``: multiples of 1, 2 or 5 x 10^k.

    The step is the smallest of that form giving at most ``most`` ticks; since successive
    steps differ by at most 2.5x, this gives at least 4 ticks when ``most`` is 6 or more.
    A range that is empty or not finite is drawn as ``[low, low + 1]``.
    """
    if not (math.isfinite(high) and math.isfinite(low)) or high <= low:
        high = low + 1.0
    span = high - low
    exponent = math.floor(math.log10(span / most))
    for k in range(exponent - 1, exponent + 3):
        for mantissa in (1, 2, 5):
            step = mantissa * 10.0 ** k
            first, last = math.floor(low / step), math.ceil(high / step)
            ticks = [_round_tick((first + i) * step, k) for i in range(last - first + 1)]
            # float division and rounding can be off by one step either way at the top
            if ticks[-1] < high:
                ticks.append(_round_tick((last + 1) * step, k))
            while len(ticks) > 2 and ticks[-2] >= high:
                ticks.pop()
            if len(ticks) <= most:
                return ticks
    raise AssertionError("unreachable: a step of 10^(k+2) gives at most 3 ticks")


def _round_tick(value: float, k: int) -> float:
    return round(value, max(0, -k) + 1) + 0.0  # no float noise such as 0.30000000000000004


def tick_text(value: float) -> str:
    """A tick value as short text (``20``, ``0.5``, ``1.2e+03`` is never needed: ``1200``)."""
    return f"{value:.10g}"


def _spread(wanted: list[float], low: float, high: float, gap: float) -> list[float]:
    """Positions as close to ``wanted`` (sorted) as possible, ``gap`` apart, in [low, high]."""
    placed: list[float] = []
    for y in wanted:
        placed.append(max(y, low) if not placed else max(y, placed[-1] + gap, low))
    overflow = placed[-1] - high if placed else 0.0
    if overflow > 0:  # push the stack back up, keeping the gaps
        placed = [y - overflow for y in placed]
        for i in range(len(placed) - 2, -1, -1):
            placed[i] = min(placed[i], placed[i + 1] - gap)
    return placed


def norm_chart(result: ScanResult, width: int = 760, height: int = 260) -> dict[str, Any]:
    """Geometry of the SVG bar chart of the trigger norms per label (used by the template).

    Bars of flagged labels are marked, and those of suspicious labels (crossed the threshold
    in a single run, not confirmed) differently; horizontal lines show the median norm and the norm
    below which a label's anomaly index exceeds the threshold. The value axis has round ticks
    (:func:`nice_ticks`); the lines' labels sit in a margin right of the bars, pushed apart so
    that they never overlap each other (each label's box is returned for the tests).
    """
    labels = result.labels
    norms = [r.norm for r in labels]
    median = result.median_norm
    cutoff = (median - result.anomaly_threshold * result.mad
              if math.isfinite(median) and math.isfinite(result.mad) else math.nan)
    texts = []
    if math.isfinite(median):
        texts.append(("median", median, f"median {median:.3g}"))
    if math.isfinite(cutoff) and cutoff > 0:
        texts.append(("threshold", cutoff, f"flag below {cutoff:.3g}"))
    margin = max([len(t) for _, _, t in texts] + [0]) * CHAR_WIDTH + 14
    left, right, top, bottom = 56, max(16.0, margin), 16, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    finite = [v for v in (*norms, median) if math.isfinite(v)]
    ticks = nice_ticks(max(finite + [0.0]))
    top_value = ticks[-1]
    step = plot_w / max(len(labels), 1)
    bar_w = max(step * 0.72, 1.0)
    tick_every = 1 if len(labels) <= 40 else math.ceil(len(labels) / 40)

    def y_of(value: float) -> float:
        return top + plot_h * (1.0 - value / top_value)

    suspicious = set(result.suspicious_labels)
    bars = []
    for i, r in enumerate(labels):
        y = y_of(min(r.norm, top_value)) if math.isfinite(r.norm) else y_of(0.0)
        bars.append({
            "x": round(left + i * step + (step - bar_w) / 2, 2), "y": round(y, 2),
            "w": round(bar_w, 2), "h": round(top + plot_h - y, 2), "label": r.label,
            "norm": r.norm, "flagged": r.label in result.flagged_labels,
            "suspicious": r.label in suspicious and r.label not in result.flagged_labels,
            "tick": i % tick_every == 0, "cx": round(left + i * step + step / 2, 2),
            "anomaly_index": r.anomaly_index,
        })
    grid = [{"y": round(y_of(v), 2), "value": tick_text(v)} for v in ticks]
    plot_right = width - right
    order = sorted(texts, key=lambda t: y_of(t[1]))  # top to bottom
    centres = _spread([y_of(v) for _, v, _ in order], top + LABEL_HEIGHT / 2,
                      height - LABEL_HEIGHT / 2, LABEL_HEIGHT + 2)
    lines = []
    for (kind, value, text), centre in zip(order, centres):
        y = round(y_of(value), 2)
        x0 = plot_right + 8
        box = {"x0": x0, "y0": round(centre - LABEL_HEIGHT / 2, 2),
               "x1": round(x0 + len(text) * CHAR_WIDTH, 2),
               "y1": round(centre + LABEL_HEIGHT / 2, 2)}
        lines.append({"y": y, "kind": kind, "text": text, "value": value,
                      "label_x": x0 + 2, "label_y": round(centre + 4, 2), "box": box})
    return {"width": width, "height": height, "left": left, "right": plot_right,
            "top": top, "bottom": top + plot_h, "bars": bars, "grid": grid, "lines": lines,
            "ticks": ticks, "cutoff": cutoff if math.isfinite(cutoff) else None}


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

    # one split for every curve: the held-out one when every point has it (the split whose
    # numbers the before/after table shows), else the fitting one; never a mix of the two
    held_out = all(isinstance(p.get("test_clean_acc"), (int, float)) for p in curve)
    prefix = "test" if held_out else "fit"
    return {"width": width, "height": height, "left": left, "right": width - right,
            "top": top, "bottom": height - bottom, "x_max": f"{100 * x_max:.0f} %",
            "asr": series(f"{prefix}_asr"), "acc": series(f"{prefix}_clean_acc"),
            "label_acc": series("test_label_acc", worst=min) if held_out else "",
            "split": "held-out" if held_out else "fitting"}
