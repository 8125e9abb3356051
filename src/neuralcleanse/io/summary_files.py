"""The files a scan over many models leaves beside the models' own reports.

``write_summary`` writes three views of one :class:`~neuralcleanse.core.summary.ScanManySummary`
into the run's output folder:

* ``summary.json``: :meth:`ScanManySummary.to_dict` (schema version 1), the source of truth;
  :meth:`ScanManySummary.from_dict` reads it back.
* ``summary.csv``: one row per model (:data:`CSV_COLUMNS`), for spreadsheets. Model names,
  files and errors come from manifests nobody vouches for, so a text cell that a spreadsheet
  would run as a formula (starting with ``=``, ``+``, ``-``, ``@``, a tab or a line break) is
  written with a leading ``'``, which spreadsheets show as text.
* ``index.html``: a self-contained page (no network, inline CSS and script) with the totals and a
  table of every model, sortable by clicking a column header, each model linked to its
  ``models/<name>/report.html`` by a relative link, so the folder can be moved or archived.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from neuralcleanse.core.strict_json import dumps
from neuralcleanse.core.summary import ModelOutcome, ScanManySummary
from neuralcleanse.io.report import REPORT_HTML, atomic_write, template_environment
from neuralcleanse.io.report_views import format_value

SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
INDEX_HTML = "index.html"
#: The columns of ``summary.csv``, in order (``verdict`` is backdoor, suspicious or clean, empty
#: for a failed model; the label columns are space-separated labels; ``report`` is the relative
#: path of the model's ``report.html``, empty when it has none; ``warnings`` its scan's
#: warnings, one line each).
CSV_COLUMNS = ("name", "model", "status", "verdict", "flagged_labels", "suspicious_labels",
               "max_anomaly_index", "min_norm", "label_steps", "wall_seconds", "attempts",
               "error", "report", "warnings")
#: Between the warnings of one model in its ``warnings`` cell.
WARNING_SEPARATOR = " | "
#: First characters that make a spreadsheet read a cell as a formula (or split it).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n")


@dataclass
class SummaryPaths:
    """Where the summary files were written."""

    json: Path
    csv: Path
    html: Path


def write_summary(summary: ScanManySummary, out_dir: str | Path) -> SummaryPaths:
    """Write ``summary.json``, ``summary.csv`` and ``index.html`` into ``out_dir``.

    Each file is written to a temporary name and renamed, so a reader never sees half a file.
    A model is linked from ``index.html`` only when its ``report.html`` exists.

    Returns:
        The paths of the three files.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = SummaryPaths(json=out / SUMMARY_JSON, csv=out / SUMMARY_CSV, html=out / INDEX_HTML)
    atomic_write(paths.json, dumps(summary.to_dict()))
    atomic_write(paths.csv, summary_csv(summary))
    atomic_write(paths.html, render_index(summary, out_dir=out))
    return paths


# -- links ------------------------------------------------------------------------------------
def report_path(outcome: ModelOutcome) -> str | None:
    """The model's ``report.html`` relative to the run's folder, or ``None``.

    ``outcome.report`` must be a relative path that stays inside the run's folder (no ``..``,
    no absolute path, no drive); anything else is not linked.
    """
    if not outcome.report or "\\" in outcome.report or "\x00" in outcome.report:
        return None
    folder = PurePosixPath(outcome.report)
    parts = folder.parts
    if folder.is_absolute() or not parts or any(p in ("..", "") for p in parts) \
            or ":" in parts[0]:
        return None
    return str(folder / REPORT_HTML)


def report_href(path: str) -> str:
    """``path`` as a relative URL: every segment percent-encoded (``#``, ``?``, ``%``, ``:``)."""
    return "/".join(quote(part, safe="") for part in path.split("/"))


# -- CSV --------------------------------------------------------------------------------------
def neutralise(text: str) -> str:
    """``text`` with a leading ``'`` when a spreadsheet would read it as a formula."""
    return "'" + text if text.lstrip(" ").startswith(FORMULA_STARTS) else text


def _number(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def csv_row(outcome: ModelOutcome) -> list[str]:
    """One model's row of ``summary.csv`` (numbers as numbers, text cells neutralised)."""
    def text(value: Any) -> str:
        return "" if value is None else neutralise(str(value))

    return [text(outcome.name), text(outcome.model), text(outcome.status),
            text(outcome.verdict), " ".join(str(int(t)) for t in outcome.flagged_labels),
            " ".join(str(int(t)) for t in outcome.suspicious_labels),
            _number(outcome.max_anomaly_index), _number(outcome.min_norm),
            _number(outcome.label_steps), _number(outcome.wall_seconds),
            _number(outcome.attempts), text(outcome.error), text(report_path(outcome)),
            text(WARNING_SEPARATOR.join(outcome.warnings) or None)]


def summary_csv(summary: ScanManySummary) -> str:
    """The text of ``summary.csv``: a header row and one row per model, in manifest order."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for outcome in summary.models:
        writer.writerow(csv_row(outcome))
    return buffer.getvalue()


# -- HTML -------------------------------------------------------------------------------------
def _settings_rows(settings: dict[str, Any]) -> list[tuple[str, str]]:
    """The run's settings as rows; a table of settings (the search config) one row per key."""
    rows = []
    for key, value in settings.items():
        name = str(key).replace("_", " ")
        if isinstance(value, dict) and value:
            rows += [(f"{name}: {sub}", format_value(v)) for sub, v in value.items()]
        else:
            rows.append((name, format_value(value)))
    return rows


def _row(index: int, outcome: ModelOutcome, out_dir: Path | None) -> dict[str, Any]:
    link = report_path(outcome)
    if link is not None and out_dir is not None and not (out_dir / link).is_file():
        link = None
    kind = outcome.verdict if outcome.status == "done" and outcome.verdict else "failed"
    return {"index": index, "m": outcome, "kind": kind,
            "href": report_href(link) if link else None,
            "flagged": ", ".join(str(t) for t in outcome.flagged_labels),
            "suspicious": ", ".join(str(t) for t in outcome.suspicious_labels),
            "sort": {"index": str(index), "anomaly": _number(outcome.max_anomaly_index),
                     "norm": _number(outcome.min_norm),
                     "steps": _number(outcome.label_steps),
                     "seconds": _number(outcome.wall_seconds),
                     "attempts": _number(outcome.attempts),
                     "flagged": _number(len(outcome.flagged_labels)
                                            if outcome.status == "done" else None),
                     "suspicious": _number(len(outcome.suspicious_labels)
                                               if outcome.status == "done" else None)}}


def _names(models: list[ModelOutcome]) -> str:
    names = ", ".join(m.name for m in models[:10])
    return names + (f" and {len(models) - 10} more" if len(models) > 10 else "")


def _verdict(summary: ScanManySummary) -> dict[str, str]:
    totals = summary.totals()
    suspicious = (f" Suspicious: {_names(summary.suspicious)} (a label crossed the threshold "
                  "in a single run only)." if summary.suspicious else "")
    if summary.flagged:
        return {"kind": "flagged",
                "title": f"Backdoor suspected in {totals['flagged']} of {totals['models']} "
                         "model(s)",
                "text": f"Flagged: {_names(summary.flagged)}. Each flagged model has a label "
                        "reachable with an unusually small trigger; its report shows the "
                        f"trigger.{suspicious}"}
    if summary.suspicious:
        return {"kind": "suspicious",
                "title": f"No backdoor confirmed; {totals['suspicious']} of "
                         f"{totals['models']} model(s) suspicious",
                "text": f"Suspicious: {_names(summary.suspicious)}. Each has a label whose "
                        "trigger crossed the anomaly threshold in a single run but not on the "
                        "median of its runs; its report shows the runs."}
    if summary.failed and not totals["clean"]:
        return {"kind": "failed", "title": "No model could be scanned",
                "text": "Every model stopped with an error of its own; see the error column."}
    return {"kind": "clean", "title": "No backdoor found",
            "text": f"None of the {totals['clean']} scanned model(s) has a label with an "
                    "unusually small trigger."}


def render_index(summary: ScanManySummary, *, out_dir: str | Path | None = None,
                 title: str | None = None) -> str:
    """Render ``index.html``: totals, verdict, and the sortable table of every model.

    Args:
        summary: The run's summary.
        out_dir: The run's folder; when given, only models whose ``report.html`` exists there
            are linked.
        title: Page title (default: "Neural Cleanse: N models").
    """
    folder = Path(out_dir) if out_dir is not None else None
    template = template_environment().from_string(
        resources.files("neuralcleanse.io").joinpath("templates/index.html").read_text("utf-8"))
    totals = summary.totals()
    return template.render(
        title=title or f"Neural Cleanse: {totals['models']} model(s)",
        summary=summary, totals=totals, verdict=_verdict(summary),
        rows=[_row(i + 1, m, folder) for i, m in enumerate(summary.models)],
        settings=_settings_rows(summary.settings),
        generated=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        summary_json=SUMMARY_JSON, summary_csv=SUMMARY_CSV)
