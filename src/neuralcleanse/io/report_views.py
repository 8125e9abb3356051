"""What the HTML template shows, made ready for it: formatting filters and view models.

Each view reads a JSON document defensively (fields may be missing, from an older or newer
version) and returns plain rows and strings. The verdict's views (the verdict box, the
confirmation table, the expected false-alarm rate) are in :mod:`neuralcleanse.io.verdict_views`.
"""

from __future__ import annotations

import math
from typing import Any

from neuralcleanse.io.charts import pruning_chart

#: How the report names a filter's score (``options.score`` of a filtering report; reports of
#: versions before the score was a choice averaged the neurons).
SCORE_NAMES = {"fisher": "Fisher's discriminant of the layer's neurons",
               "mean": "mean of the trigger neurons"}

def format_number(value: Any, digits: int = 4) -> str:
    """``value`` with ``digits`` significant digits; missing or NaN as a dash, infinities as ∞."""
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


def format_percent(value: Any) -> str:
    """A rate in [0, 1] as a percentage with one decimal; missing or NaN as a dash."""
    if value is None:
        return "–"
    v = float(value)
    return "–" if math.isnan(v) else f"{100.0 * v:.1f} %"


def format_value(value: Any) -> str:
    """Any JSON value as short text: booleans as yes/no, long lists by their length."""
    if value is None or value == {} or value == []:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return format_number(value, 6)
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(format_value(v) for v in value) + ")" if len(value) < 20 \
            else f"{len(value)} values"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {format_value(v)}" for k, v in value.items())
    return str(value)


def _short(value: Any) -> str:
    """A number with three significant digits, anything else as :func:`format_value` shows it."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_number(value, 3)
    return format_value(value)


def rate(value: Any) -> str:
    """A rate as a percentage, or a dash when ``value`` is not a number."""
    return format_percent(value) if isinstance(value, (int, float)) else "–"


def _before_after(before: Any, after: Any) -> dict[str, str]:
    return {"before": rate(before), "after": rate(after)}


def mitigation_view(data: dict[str, Any]) -> dict[str, Any]:
    """What the HTML shows of a ``MitigationResult.to_dict()``: before/after rows and details.

    Unknown or missing fields are skipped, so an older or newer mitigation JSON still renders.
    """
    report = data.get("report") if isinstance(data.get("report"), dict) else {}
    measurements = report.get("measurements") if isinstance(report.get("measurements"),
                                                            dict) else {}
    rows = []
    split = report.get("split") if isinstance(report.get("split"), dict) else {}
    n_test = measurements.get("n_test", split.get("n_test"))
    if "clean_acc_before" in measurements:
        rows.append({"what": "clean accuracy (held out)",
                     "note": f"n = {n_test} images" if isinstance(n_test, int) else "",
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
        watched = set().union(*[set(v) for v in (report.get("neurons") or {}).values()])
        score = (report.get("options") or {}).get("score", "mean")
        details += [("layer", format_value(report.get("layer"))),
                    ("score", SCORE_NAMES.get(str(score), format_value(score))),
                    ("neurons scoring an input", format_value(len(watched) or None)),
                    ("false-positive rate on clean inputs", rate(
                        report.get("false_positive_rate"))),
                    ("target false-positive rate", rate(report.get("target_fpr"))),
                    ("held with confidence", rate((report.get("options") or {}).get(
                        "fpr_confidence"))),
                    ("detection rate on stamped inputs", rate(report.get("detection_rate")))]
    elif method == "pruning":
        details += [("layer", format_value(report.get("layer"))),
                    ("neurons pruned", f"{len(report.get('pruned_neurons') or [])} of "
                                       f"{format_value(report.get('n_neurons'))} "
                                       f"({rate(report.get('fraction'))})"),
                    ("target attack success", rate(report.get("target_asr"))),
                    ("reached the target", "yes" if report.get("reached_target") else "no"),
                    ("largest share allowed", rate(report.get("max_fraction")))]
    elif method == "unlearning":
        details += [("epochs", format_value(report.get("epochs"))),
                    ("learning rate", format_value(report.get("learning_rate"))),
                    ("stamped share of the training images", rate(
                        report.get("stamped_fraction"))),
                    ("training images (stamped)", f"{format_value(report.get('n_train'))} "
                                                  f"({format_value(report.get('n_stamped'))})")]
        further = report.get("further_norms")
        if isinstance(further, dict) and further:
            details.append(("other triggers of the scan stamped too", "; ".join(
                f"label {label}: norms "
                + ", ".join(_short(n) for n in (norms if isinstance(norms, list) else [norms]))
                for label, norms in further.items())))
        rounds = [r for r in report.get("rounds") or [] if isinstance(r, dict)]
        if report.get("updates") is not None:
            details.append(("optimiser updates", format_value(report.get("updates"))
                            + (f" in {len(rounds)} rounds" if len(rounds) > 1 else "")))
        for k, later in enumerate(rounds[1:], start=2):
            found = later.get("success_found") or {}
            after = later.get("success_after") or {}
            details.append((f"trigger searched again before round {k}", "; ".join(
                f"label {label}: norm {_short(norm)}, attack success {rate(found.get(label))} "
                f"when found, {rate(after.get(label))} after"
                for label, norm in (later.get("norms") or {}).items())))
    if split:
        how = "given test data" if split.get("source") == "given" else \
            f"seeded split of the data (seed {split.get('seed')})"
        details.append(("images fitting / measuring",
                         f"{split.get('n_fit')} / {split.get('n_test')} ({how})"))
    if data.get("saved_model"):
        details.append(("repaired model saved to", str(data["saved_model"])))
    if data.get("saved_filter"):
        details.append(("input filter saved to", str(data["saved_filter"])))
    if isinstance(data.get("wall_seconds"), (int, float)):
        details.append(("wall time", f"{data['wall_seconds']:.3g} s"))
    curve = [p for p in report.get("curve") or [] if isinstance(p, dict)]
    held_out = "the held-out images"
    if split.get("source") == "given":
        held_out = "the test images given"
    elif split:
        held_out = (f"the {split.get('n_test')} images held out of the data (seed "
                    f"{split.get('seed')}), none used to fit the mitigation")
    return {"method": method, "labels": data.get("labels", []), "rows": rows,
            "measured_on": held_out,
            "details": details, "curve": pruning_chart(curve) if curve else None}


def _answer(entry: dict[str, Any], refused_key: str, prediction_key: str,
            filtering: bool) -> str | None:
    """One image's answer after a mitigation: its label, or the filter's decision."""
    prediction = entry.get(prediction_key)
    known = isinstance(prediction, int) and not isinstance(prediction, bool)
    if filtering:
        if entry.get(refused_key) is True:
            return "refused"
        return f"accepted (predicted {prediction})" if known else None
    return str(prediction) if known else None


def examples_after_view(data: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Per label, what the mitigation of ``mitigation.json`` makes of its stamped example.

    Reads ``data["stamped_examples"]`` (:func:`neuralcleanse.mitigation.examples.examples_after`)
    defensively: malformed entries are skipped. Each view has the ``method``, the ``labels``
    mitigated, ``filtering`` and the ``clean`` and ``stamped`` images' answers (a label, or for
    a filter ``refused`` / ``accepted (predicted k)``).
    """
    entries = data.get("stamped_examples")
    method = str(data.get("method", ""))
    views: dict[int, dict[str, Any]] = {}
    if not isinstance(entries, list):
        return views
    filtering = method == "filtering"
    labels = [t for t in data.get("labels") or [] if isinstance(t, int)]
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        label = entry.get("label")
        if not isinstance(label, int) or isinstance(label, bool):
            continue
        clean = _answer(entry, "clean_refused", "clean_prediction", filtering)
        stamped = _answer(entry, "refused", "prediction", filtering)
        if clean is None or stamped is None:
            continue
        views[label] = {"method": method, "labels": labels, "filtering": filtering,
                        "clean": clean, "stamped": stamped}
    return views


def format_bytes(size: Any) -> str:
    """A file size in bytes as text with a binary unit (``1.5 MiB``); ``–`` when unknown."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return "–"
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} bytes" if unit == "bytes" else f"{value:.3g} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def provenance_view(model_info: dict[str, Any]) -> dict[str, str] | None:
    """The model file's name, size and sha256 for the page's header; ``None`` when unknown."""
    digest = model_info.get("file_sha256")
    if not isinstance(digest, str):
        return None
    path = str(model_info.get("path", ""))
    return {"name": path.replace("\\", "/").rsplit("/", 1)[-1] or "model", "path": path,
            "size": format_bytes(model_info.get("file_bytes")), "sha256": digest}


def demo_view(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows of the demo section: rates as percentages, other values as they are."""
    rows = []
    for key, value in data.items():
        text = key.replace("_", " ")
        if isinstance(value, float) and any(w in key for w in ("accuracy", "success",
                                                               "fraction")):
            rows.append((text, rate(value)))
        elif isinstance(value, bool):
            rows.append((text, "yes" if value else "no"))
        else:
            rows.append((text, format_value(value)))
    return rows


def settings_view(config: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows of the search settings (``None`` values in words; the progress flag left out)."""
    rows = []
    for key, value in config.items():
        if key == "progress":
            continue
        if value is None and key == "mini_batches":
            text = "one pass over the data"
        elif value is None and key == "label_batch":
            text = "auto (from the memory budget)"
        else:
            text = format_value(value)
        rows.append((key, text))
    return rows
