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
* ``verdict`` (str): ``"backdoor"`` (a label is flagged), ``"suspicious"`` (none is, but a
  label crossed the threshold in a single run and was not confirmed) or ``"clean"``; reports
  written before it existed read as backdoor or clean from ``flagged_labels``.
* ``suspicious_labels`` (list of int): the suspicious labels, smallest trigger first.
* ``confirmation`` (object): how the verdict was reached: the ``rule`` (``"confirmed"`` or
  ``"paper"``), the labels searched again (``candidates``), their norms under the further
  seeds (``runs``), the first run's norms, indices and flags (``first_run``), the extra work
  (``runs_label_steps``, ``extra_label_steps_share``, ``extra_seconds``) and the
  ``expected_false_alarm_rate`` of the rule for the model's number of labels (null until
  measured); ``{"skipped": "partial scan"}`` for a partial scan (see
  :mod:`neuralcleanse.core.verdict`).
* ``labels`` (list): one object per scanned label with ``label``, ``norm`` (L1 norm of the
  mask), ``anomaly_index`` (``(median - norm) / mad``), ``attack_success_rate`` (share of
  stamped clean images of other classes sent to the label), ``converged`` (whether the attack
  success threshold was reached), ``steps``, ``seconds``, ``final_cost``, and the trigger:
  ``mask`` (flattened, shape ``mask_shape`` = ``(H, W)``, values in [0, 1]) and ``pattern``
  (flattened, shape ``pattern_shape`` = one input, raw value range).

Two optional entries of the open objects: ``model_info["known_trigger"]`` (a trigger the user
knows, :mod:`~neuralcleanse.io.known_trigger`; shown beside the reversed trigger of its label,
or of every flagged label when ``label`` is null) and ``data_info["stamped_examples"]`` (one
per flagged label, then one per suspicious label, from
:func:`neuralcleanse.mitigation.examples.stamped_examples`: ``label``, ``kind``
(``"flagged"``, ``"suspicious"`` or ``"chosen"``), ``source_label`` (true label of the clean
image), ``clean_image`` and ``image`` (the clean image and the same image stamped with the
label's reversed trigger, nested lists in the model's layout and raw value range),
``clean_prediction`` and ``prediction`` (the scanned model's labels for them)).

A mitigation writes ``mitigation.json`` next to it (``MitigationResult.to_dict()``, plus
``saved_model`` / ``saved_filter`` and ``stamped_examples``: per stamped example of the report,
what the mitigation makes of its two images, from
:func:`neuralcleanse.mitigation.examples.examples_after`: ``label``, ``method``, ``mitigated``
(whether the label was one of those mitigated), ``refused`` and ``prediction`` for the stamped
image, ``clean_refused`` and ``clean_prediction`` for the clean one; ``prediction`` is ``null``
for an image the input filter refuses, and ``refused`` is always false after pruning or
unlearning). The HTML report shows it when present, each stamped example with its answers
after the mitigation; ``report.json`` stays the scan's record.

The page is ``templates/report.html``, fed by :mod:`~neuralcleanse.io.verdict_views` (the
verdict box and the confirmation), :mod:`~neuralcleanse.io.report_views` (settings, mitigation
and demo rows, number formats),
:mod:`~neuralcleanse.io.charts` (the SVG charts) and :mod:`~neuralcleanse.io.report_images` (the
trigger images).
"""

from __future__ import annotations

import datetime as _dt
import os
import secrets
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, StrictUndefined, select_autoescape

from neuralcleanse.core.errors import InputError
from neuralcleanse.core.results import ScanResult
from neuralcleanse.core.strict_json import dumps, read_json_file
from neuralcleanse.io.charts import norm_chart
from neuralcleanse.io.known_trigger import KEY as KNOWN_TRIGGER
from neuralcleanse.io.known_trigger import known_trigger_arrays
from neuralcleanse.io.report_images import (
    data_uri,
    mask_pattern_arrays,
    picture,
    png_bytes,
    to8,
    trigger_arrays,
)
from neuralcleanse.io.report_views import (
    demo_view,
    examples_after_view,
    format_number,
    format_percent,
    format_value,
    mitigation_view,
    provenance_view,
    settings_view,
)
from neuralcleanse.io.verdict_views import confirmation_view, verdict_view

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
MITIGATION_JSON = "mitigation.json"
DEMO_JSON = "demo.json"
IMAGE_DIR = "triggers"
#: Smallest side, in pixels, of the trigger PNG files written next to the report.
PNG_MIN_SIDE = 128
#: ``data_info`` key of the stamped examples.
STAMPED_EXAMPLES = "stamped_examples"


@dataclass
class ReportPaths:
    """Where a report was written."""

    json: Path
    html: Path
    images: Path


def summary_table(result: ScanResult) -> Any:
    """A rich table of every label's norm, anomaly index and attack success.

    Flagged labels are marked FLAGGED in red, suspicious ones SUSPICIOUS in yellow.
    """
    from rich.table import Table

    table = Table(title="Neural Cleanse: reversed trigger per label", title_justify="left")
    restarts = result.restarts or {}
    columns = ["label", "L1 norm", "anomaly index", "attack success", "converged"]
    if restarts:
        columns.append("flagged in runs")
    for name in (*columns, ""):
        table.add_column(name, justify="right" if name not in ("converged", "") else "left")
    flagged, suspicious = set(result.flagged_labels), set(result.suspicious_labels)
    for r in result.labels:
        cells = [str(r.label), f"{r.norm:.3f}", f"{r.anomaly_index:.2f}",
                 f"{100 * r.attack_success_rate:.1f}%", "yes" if r.converged else "no"]
        if restarts:
            cells.append(f"{restarts['flag_counts'].get(str(r.label), 0)}/{restarts['n']}")
        mark, style = ("FLAGGED", "bold red") if r.label in flagged else \
            ("SUSPICIOUS", "yellow") if r.label in suspicious else ("", None)
        table.add_row(*cells, mark, style=style)
    return table


# -- rendering ------------------------------------------------------------------------------
def template_environment() -> Environment:
    """The Jinja2 environment of every page and fragment: autoescaping, strict, house filters."""
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = format_number
    env.filters["pct"] = format_percent
    env.filters["value"] = format_value
    return env


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
    flagged, suspicious = set(result.flagged_labels), set(result.suspicious_labels)
    known = known_trigger_arrays(result.model_info)
    known_card = None
    if known is not None:
        known_card = {"label": known[0], "files": {
            kind: f"{IMAGE_DIR}/{image_name(None, kind)}" for kind in ("mask", "pattern",
                                                                        "trigger")},
            "images": {k: data_uri(png_bytes(a)) for k, a in
                       mask_pattern_arrays(result, known[1], known[2]).items()}}
    examples = _examples(result, mitigation)
    cards = []
    for r in result.labels:
        images = {k: data_uri(png_bytes(a)) for k, a in trigger_arrays(result, r).items()}
        files = {kind: f"{IMAGE_DIR}/{image_name(r.label, kind)}" for kind in images}
        beside = known_card is not None and (
            r.label == known_card["label"] if known_card["label"] is not None
            else r.label in flagged)
        cards.append({"r": r, "flagged": r.label in flagged,
                      "suspicious": r.label in suspicious and r.label not in flagged,
                      "images": images, "files": files,
                      "known": known_card if beside else None,
                      "example": examples.get(r.label)})
    big_cards = sorted((c for c in cards if c["flagged"] or c["suspicious"]
                        or c["known"] is not None),
                       key=lambda c: (not c["flagged"], not c["suspicious"]))  # flagged first
    big_cards_title = _big_cards_title(big_cards)
    class_names = result.data_info.get("class_names")
    template = template_environment().from_string(
        resources.files("neuralcleanse.io").joinpath("templates/report.html").read_text("utf-8"))
    model_name = Path(str(result.model_info.get("path", "model"))).name
    return template.render(
        result=result, verdict=verdict_view(result), chart=norm_chart(result),
        confirmation=confirmation_view(result),
        flagged_cards=big_cards, big_cards_title=big_cards_title, cards=cards,
        known_card=known_card,
        class_names=class_names if isinstance(class_names, list) else None,
        mitigation=mitigation_view(mitigation) if mitigation else None,
        demo=demo_view(demo) if demo else None,
        title=title or f"Neural Cleanse report: {model_name}",
        generated=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        settings=settings_view(result.config), model_info=result.model_info,
        provenance=provenance_view(result.model_info),
        links={"json": REPORT_JSON, "images": IMAGE_DIR},
        model_info_rows={k: v for k, v in result.model_info.items() if k != KNOWN_TRIGGER},
        data_info={k: v for k, v in result.data_info.items()
                   if k not in ("class_counts", STAMPED_EXAMPLES)},
        class_counts=result.data_info.get("class_counts"),
        versions=result.versions,
        total_label_seconds=sum(r.seconds for r in result.labels),
    )


def _big_cards_title(cards: list[dict[str, Any]]) -> str:
    """The heading of the big trigger cards: which kinds of label they show."""
    parts = []
    for kind in ("flagged", "suspicious"):
        count = sum(bool(c[kind]) for c in cards)
        if count:
            parts.append(f"{kind} label{'s' if count > 1 else ''}")
    known = any(not (c["flagged"] or c["suspicious"]) for c in cards)
    if len(parts) == 1 and not known:
        plural = "s" if len(cards) > 1 else ""
        return f"{parts[0].capitalize()}: reversed trigger{plural}"
    return "Reversed triggers: " + " and ".join([*parts, *(["the known target"] if known
                                                          else [])])


def _examples(result: ScanResult, mitigation: dict[str, Any] | None = None
              ) -> dict[int, dict[str, Any]]:
    """The stamped examples of ``data_info`` by label, as images ready for the page.

    Each has the scanned model's ``clean_prediction`` and ``prediction`` and
    ``after_mitigation``: what ``mitigation`` (``mitigation.json``) makes of its two images
    (:func:`~neuralcleanse.io.report_views.examples_after_view`), or ``None``. Read
    defensively: an entry with missing or malformed fields is skipped.
    """
    after = examples_after_view(mitigation) if mitigation else {}
    entries = result.data_info.get(STAMPED_EXAMPLES)
    shown: dict[int, dict[str, Any]] = {}
    if not isinstance(entries, list):
        return shown
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        try:
            label = entry["label"]
            mask_shape = tuple(result.label(label).mask.shape)
            pictures = {}
            for key in ("clean_image", "image"):
                array = np.asarray(entry[key], dtype=np.float64)
                if array.ndim not in (2, 3) or not np.all(np.isfinite(array)):
                    raise ValueError(key)
                pictures[key] = data_uri(png_bytes(to8(picture(result, array, mask_shape))))
        except (KeyError, TypeError, ValueError):
            continue
        shown[int(label)] = {"clean": pictures["clean_image"], "stamped": pictures["image"],
                             "source_label": entry.get("source_label"),
                             "clean_prediction": entry.get("clean_prediction"),
                             "prediction": entry.get("prediction"),
                             "after_mitigation": after.get(int(label))}
    return shown


def write_images(result: ScanResult, directory: str | Path) -> Path:
    """Write ``label_<k>_{mask,pattern,trigger}.png`` for every label; returns the folder.

    A known trigger (``model_info["known_trigger"]``) is written as
    ``known_{mask,pattern,trigger}.png``.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    for r in result.labels:
        for kind, array in trigger_arrays(result, r).items():
            atomic_write(folder / image_name(r.label, kind), png_bytes(array, PNG_MIN_SIDE))
    known = known_trigger_arrays(result.model_info)
    if known is not None:
        for kind, array in mask_pattern_arrays(result, known[1], known[2]).items():
            atomic_write(folder / image_name(None, kind), png_bytes(array, PNG_MIN_SIDE))
    return folder


def image_name(label: int | None, kind: str) -> str:
    """File name of one trigger image in the report's ``triggers/`` folder.

    ``label=None`` names the known trigger's images.
    """
    return f"known_{kind}.png" if label is None else f"label_{label}_{kind}.png"


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
