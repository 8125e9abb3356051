"""The reports a scan leaves behind: ``report.json``, ``report.html`` and the trigger images.

``report.json`` is :meth:`ScanResult.to_json` and is the source of truth; ``report.html`` and
the PNG images are rendered from it (``neuralcleanse report DIR`` renders them again).

Fields of ``report.json`` (``schema_version`` 1):

* ``schema_version`` (int): version of this layout; readers refuse versions they do not know.
* ``flagged_labels`` (list of int): labels judged to be backdoor targets, smallest trigger first.
* ``nb_classes`` (int): outputs of the model.
* ``median_norm``, ``mad`` (float or null): median of the trigger norms and their scaled median
  absolute deviation (``1.4826 * median(|norm - median|)``).
* ``anomaly_threshold`` (float): a label is flagged when its anomaly index exceeds it.
* ``partial`` (bool): true when the scan was interrupted before every label was searched.
* ``wall_seconds`` (float): wall time of the scan (of the last run when it was resumed).
* ``config`` (object): every search setting (see :class:`~neuralcleanse.core.config.ScanConfig`).
* ``model_info`` (object): framework, file and format, input shape, channel order
  (``channels_first``), value range (``clip_values``), preprocessing, output kind.
* ``data_info`` (object): number of images, per-class counts, source, keys, subsampling.
* ``versions`` (object): versions of Python, numpy, neuralcleanse and the framework.
* ``restarts`` (object): details of multi-seed scans (empty otherwise).
* ``labels_without_data`` (list of int): scanned labels that had no clean images; their
  triggers were searched on the other classes' images, and the median and MAD leave them out
  (an absent field, in reports written before it existed, reads as empty).
* ``labels`` (list): one object per scanned label with ``label``, ``norm`` (L1 norm of the
  mask), ``anomaly_index`` (``(median - norm) / mad``), ``attack_success_rate`` (share of
  stamped clean images of other classes sent to the label), ``converged`` (whether the attack
  success threshold was reached), ``steps``, ``seconds``, ``final_cost``, and the trigger:
  ``mask`` (flattened, shape ``mask_shape`` = ``(H, W)``, values in [0, 1]) and ``pattern``
  (flattened, shape ``pattern_shape`` = one input, raw value range).

A mitigation writes ``mitigation.json`` next to it; the HTML report shows it when present.
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import math
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, StrictUndefined, select_autoescape

from neuralcleanse.core.errors import InputError
from neuralcleanse.core.results import LabelResult, ScanResult, dumps, read_json_file

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
MITIGATION_JSON = "mitigation.json"
DEMO_JSON = "demo.json"
IMAGE_DIR = "triggers"
#: Smallest side, in pixels, of the trigger PNG files written next to the report.
PNG_MIN_SIDE = 128


@dataclass
class ReportPaths:
    """Where a report was written."""

    json: Path
    html: Path
    images: Path


def summary_table(result: ScanResult) -> Any:
    """A rich table of every label's norm, anomaly index and attack success, flagged in red."""
    from rich.table import Table

    table = Table(title="Neural Cleanse: reversed trigger per label", title_justify="left")
    restarts = result.restarts or {}
    columns = ["label", "L1 norm", "anomaly index", "attack success", "converged"]
    if restarts:
        columns.append("flagged in runs")
    for name in (*columns, ""):
        table.add_column(name, justify="right" if name not in ("converged", "") else "left")
    flagged = set(result.flagged_labels)
    for r in result.labels:
        cells = [str(r.label), f"{r.norm:.3f}", f"{r.anomaly_index:.2f}",
                 f"{100 * r.attack_success_rate:.1f}%", "yes" if r.converged else "no"]
        if restarts:
            cells.append(f"{restarts['flag_counts'].get(str(r.label), 0)}/{restarts['n']}")
        table.add_row(*cells, "FLAGGED" if r.label in flagged else "",
                      style="bold red" if r.label in flagged else None)
    return table


# -- images ---------------------------------------------------------------------------------
def _channels_first(result: ScanResult, label: LabelResult) -> bool:
    known = result.model_info.get("channels_first")
    if isinstance(known, bool):
        return known
    return label.pattern.ndim == 3 and label.pattern.shape[-2:] == label.mask.shape


def _value_range(result: ScanResult, label: LabelResult) -> tuple[float, float]:
    clip = result.model_info.get("clip_values")
    if isinstance(clip, (list, tuple)) and len(clip) == 2:
        lo, hi = float(clip[0]), float(clip[1])
        if hi > lo:
            return lo, hi
    lo, hi = float(label.pattern.min()), float(label.pattern.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def trigger_arrays(result: ScanResult, label: LabelResult) -> dict[str, np.ndarray]:
    """Mask, pattern and ``mask * pattern`` of one label as 8-bit images ``(H, W[, 3])``.

    The pattern is scaled from the model's value range to [0, 255]; the trigger image is the
    part of the pattern the mask lets through, on black.
    """
    lo, hi = _value_range(result, label)
    pattern = label.pattern.astype(np.float64)
    if pattern.ndim == 3 and _channels_first(result, label):
        pattern = pattern.transpose(1, 2, 0)
    if pattern.ndim == 3 and pattern.shape[2] == 1:
        pattern = pattern[..., 0]
    elif pattern.ndim == 3 and pattern.shape[2] != 3:
        pattern = pattern.mean(axis=2)  # neither grey nor RGB: show the channel mean
    unit = np.clip((pattern - lo) / (hi - lo), 0.0, 1.0)
    mask = np.clip(label.mask.astype(np.float64), 0.0, 1.0)
    shown = unit * (mask if unit.ndim == 2 else mask[..., None])

    def to8(a: np.ndarray) -> np.ndarray:
        return np.round(a * 255.0).astype(np.uint8)

    return {"mask": to8(mask), "pattern": to8(unit), "trigger": to8(shown)}


def _png(array: np.ndarray, min_side: int = 0) -> bytes:
    from PIL import Image

    image = Image.fromarray(array, mode="L" if array.ndim == 2 else "RGB")
    side = min(image.size)
    if min_side and side < min_side:
        factor = math.ceil(min_side / side)
        image = image.resize((image.size[0] * factor, image.size[1] * factor),
                             Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# -- chart ----------------------------------------------------------------------------------
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


# -- rendering ------------------------------------------------------------------------------
def _environment() -> Environment:
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _format_number
    env.filters["pct"] = _format_percent
    env.filters["value"] = _format_value
    return env


def _format_number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(v):
        return "–"
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    return f"{v:.{digits}g}"


def _format_percent(value: Any) -> str:
    if value is None:
        return "–"
    v = float(value)
    return "–" if math.isnan(v) else f"{100.0 * v:.1f} %"


def _format_value(value: Any) -> str:
    if value is None or value == {} or value == []:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return _format_number(value, 6)
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_format_value(v) for v in value) + ")" if len(value) < 20 \
            else f"{len(value)} values"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_format_value(v)}" for k, v in value.items())
    return str(value)


def _rate(value: Any) -> str:
    return _format_percent(value) if isinstance(value, (int, float)) else "–"


def _before_after(before: Any, after: Any) -> dict[str, str]:
    return {"before": _rate(before), "after": _rate(after)}


def mitigation_view(data: dict[str, Any]) -> dict[str, Any]:
    """What the HTML shows of a ``MitigationResult.to_dict()``: before/after rows and details.

    Unknown or missing fields are skipped, so an older or newer mitigation JSON still renders.
    """
    report = data.get("report") if isinstance(data.get("report"), dict) else {}
    measurements = report.get("measurements") if isinstance(report.get("measurements"),
                                                            dict) else {}
    rows = []
    if "clean_acc_before" in measurements:
        rows.append({"what": "clean accuracy (held out)",
                     **_before_after(measurements.get("clean_acc_before"),
                                     measurements.get("clean_acc_after"))})
    before = measurements.get("reversed_asr_before") or {}
    after = measurements.get("reversed_asr_after") or {}
    for label in before:
        rows.append({"what": f"attack success of label {label}'s reversed trigger",
                     **_before_after(before.get(label), after.get(label))})
    own_before = measurements.get("label_acc_before") or {}
    own_after = measurements.get("label_acc_after") or {}
    for label in own_before:
        rows.append({"what": f"accuracy on label {label}'s own clean images",
                     **_before_after(own_before.get(label), own_after.get(label))})
    details: list[tuple[str, str]] = []
    method = str(data.get("method", ""))
    if method == "filtering":
        details += [("layer", _format_value(report.get("layer"))),
                    ("neurons scoring an input", _format_value(
                        sum(len(v) for v in (report.get("neurons") or {}).values()) or None)),
                    ("false-positive rate on clean inputs", _rate(
                        report.get("false_positive_rate"))),
                    ("target false-positive rate", _rate(report.get("target_fpr"))),
                    ("detection rate on stamped inputs", _rate(report.get("detection_rate")))]
    elif method == "pruning":
        details += [("layer", _format_value(report.get("layer"))),
                    ("neurons pruned", f"{len(report.get('pruned_neurons') or [])} of "
                                       f"{_format_value(report.get('n_neurons'))} "
                                       f"({_rate(report.get('fraction'))})"),
                    ("target attack success", _rate(report.get("target_asr"))),
                    ("reached the target", "yes" if report.get("reached_target") else "no"),
                    ("largest share allowed", _rate(report.get("max_fraction")))]
    elif method == "unlearning":
        details += [("epochs", _format_value(report.get("epochs"))),
                    ("learning rate", _format_value(report.get("learning_rate"))),
                    ("stamped share of the training images", _rate(
                        report.get("stamped_fraction"))),
                    ("training images (stamped)", f"{_format_value(report.get('n_train'))} "
                                                  f"({_format_value(report.get('n_stamped'))})")]
    split = report.get("split") if isinstance(report.get("split"), dict) else {}
    if split:
        how = "given test data" if split.get("source") == "given" else \
            f"seeded split of the data (seed {split.get('seed')})"
        details.append(("images fitting / measuring",
                         f"{split.get('n_fit')} / {split.get('n_test')} ({how})"))
    if data.get("saved_model"):
        details.append(("repaired model saved to", str(data["saved_model"])))
    if isinstance(data.get("wall_seconds"), (int, float)):
        details.append(("wall time", f"{data['wall_seconds']:.3g} s"))
    curve = [p for p in report.get("curve") or [] if isinstance(p, dict)]
    return {"method": method, "labels": data.get("labels", []), "rows": rows,
            "details": details, "curve": _pruning_chart(curve) if curve else None}


def _pruning_chart(curve: list[dict[str, Any]], width: int = 520, height: int = 200
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


def demo_view(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows of the demo section: rates as percentages, other values as they are."""
    rows = []
    for key, value in data.items():
        text = key.replace("_", " ")
        if isinstance(value, float) and any(w in key for w in ("accuracy", "success",
                                                               "fraction")):
            rows.append((text, _rate(value)))
        elif isinstance(value, bool):
            rows.append((text, "yes" if value else "no"))
        else:
            rows.append((text, _format_value(value)))
    return rows


def _settings_view(config: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for key, value in config.items():
        if key == "progress":
            continue
        if value is None and key == "mini_batches":
            text = "one pass over the data"
        elif value is None and key == "label_batch":
            text = "auto (from the memory budget)"
        else:
            text = _format_value(value)
        rows.append((key, text))
    return rows


def _verdict(result: ScanResult) -> dict[str, str]:
    scanned = len(result.labels)
    if result.partial:
        return {"kind": "partial", "title": "Partial scan: no verdict yet",
                "text": f"Only {scanned} of {result.nb_classes} labels were searched before the "
                        "scan stopped. The numbers below cover those labels only; continue "
                        "the scan with --resume for a verdict."}
    if result.flagged_labels:
        names = ", ".join(str(t) for t in result.flagged_labels)
        worst = max(result.label(t).anomaly_index for t in result.flagged_labels)
        plural = "s" if len(result.flagged_labels) > 1 else ""
        return {"kind": "flagged", "title": f"Backdoor suspected: label{plural} {names}",
                "text": f"The reversed trigger of label{plural} {names} is unusually small "
                        f"(anomaly index up to {worst:.2f}, threshold "
                        f"{result.anomaly_threshold:g}): a small patch turns images of other "
                        "classes into this label, the signature of a backdoor."}
    return {"kind": "clean", "title": "No backdoor found",
            "text": f"No label of the {scanned} scanned has an anomaly index above "
                    f"{result.anomaly_threshold:g}: no label can be reached with an unusually "
                    "small trigger."}


def render_html(result: ScanResult, *, mitigation: dict[str, Any] | None = None,
                demo: dict[str, Any] | None = None, title: str | None = None) -> str:
    """Render the self-contained HTML report (images inlined, no external resources).

    Args:
        result: The scan result.
        mitigation: A mitigation result as a dict (``MitigationResult.to_dict()``), shown in
            its own section when given.
        demo: Facts about the demo's planted backdoor, shown when given.
        title: Page title (default: the model file's name).
    """
    flagged = set(result.flagged_labels)
    cards = []
    for r in result.labels:
        images = {k: _data_uri(_png(a)) for k, a in trigger_arrays(result, r).items()}
        cards.append({"r": r, "flagged": r.label in flagged, "images": images})
    class_names = result.data_info.get("class_names")
    template = _environment().from_string(
        resources.files("neuralcleanse.io").joinpath("templates/report.html").read_text("utf-8"))
    model_name = Path(str(result.model_info.get("path", "model"))).name
    return template.render(
        result=result, verdict=_verdict(result), chart=norm_chart(result),
        flagged_cards=[c for c in cards if c["flagged"]], cards=cards,
        class_names=class_names if isinstance(class_names, list) else None,
        mitigation=mitigation_view(mitigation) if mitigation else None,
        demo=demo_view(demo) if demo else None,
        title=title or f"Neural Cleanse report: {model_name}",
        generated=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        settings=_settings_view(result.config), model_info=result.model_info,
        data_info={k: v for k, v in result.data_info.items() if k != "class_counts"},
        class_counts=result.data_info.get("class_counts"),
        versions=result.versions,
        total_label_seconds=sum(r.seconds for r in result.labels),
    )


def write_images(result: ScanResult, directory: str | Path) -> Path:
    """Write ``label_<k>_{mask,pattern,trigger}.png`` for every label; returns the folder."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    for r in result.labels:
        for kind, array in trigger_arrays(result, r).items():
            atomic_write(folder / f"label_{r.label}_{kind}.png", _png(array, PNG_MIN_SIDE))
    return folder


def _read_optional(path: Path) -> dict[str, Any] | None:
    """A JSON object file next to the report, or ``None`` when there is none.

    ``mitigation.json`` is checked as a :class:`MitigationResult` so that the HTML never
    renders a file of the wrong shape.

    Raises:
        InputError: When the file is not JSON, not an object, or (mitigation.json) not a
            mitigation result; the message names the file.
    """
    if not path.is_file():
        return None
    data = read_json_file(path)
    if not isinstance(data, dict):
        raise InputError(f"{str(path)!r} must hold a JSON object")
    if path.name == MITIGATION_JSON:
        from neuralcleanse.mitigation.result import MitigationResult

        try:
            MitigationResult.from_dict(data)
        except InputError as exc:
            raise InputError(f"{str(path)!r} is not a neuralcleanse mitigation result: {exc}"
                             ) from None
    return data


def write_report(result: ScanResult, out_dir: str | Path, *,
                 mitigation: dict[str, Any] | None = None,
                 demo: dict[str, Any] | None = None) -> ReportPaths:
    """Write ``report.json``, ``report.html`` and the trigger PNGs into ``out_dir``.

    ``mitigation`` and ``demo`` are also written (``mitigation.json``, ``demo.json``) when
    given; when omitted, files of those names already in ``out_dir`` are shown in the HTML.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / REPORT_JSON
    atomic_write(json_path, result.to_json())
    if mitigation is not None:
        atomic_write(out / MITIGATION_JSON, dumps(mitigation))
    if demo is not None:
        atomic_write(out / DEMO_JSON, dumps(demo))
    return render_directory(out, result=result)


def render_directory(out_dir: str | Path, *, result: ScanResult | None = None) -> ReportPaths:
    """(Re-)render ``report.html`` and the PNGs of a report folder from its JSON files.

    Raises:
        InputError: When ``report.json`` is missing or is not a scan report, or when
            ``mitigation.json`` / ``demo.json`` is malformed (a ``ValueError``).
    """
    out = Path(out_dir)
    json_path = out / REPORT_JSON
    if result is None:
        if not json_path.is_file():
            raise InputError(f"{str(out)!r} has no {REPORT_JSON}: give the folder a scan wrote")
        result = ScanResult.from_json(json_path)
    html = render_html(result, mitigation=_read_optional(out / MITIGATION_JSON),
                       demo=_read_optional(out / DEMO_JSON))
    html_path = out / REPORT_HTML
    atomic_write(html_path, html)
    images = write_images(result, out / IMAGE_DIR)
    return ReportPaths(json=json_path, html=html_path, images=images)


def atomic_write(path: Path, content: str | bytes) -> None:
    """Write through a temporary file renamed over ``path``.

    A link at ``path`` is replaced, never followed (a report never writes into a file
    elsewhere), and a reader never sees a half-written file.
    """
    data = content.encode("utf-8") if isinstance(content, str) else content
    # a fresh name, created exclusively: never an existing file or a link someone left there
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
