"""A scan as a SARIF 2.1.0 log, for code-scanning dashboards (GitHub code scanning and others).

One run of the tool ``neuralcleanse`` with two rules, :data:`RULE_ID` (a backdoor target label,
level ``error``) and :data:`SUSPICIOUS_RULE_ID` (a suspicious label: it crossed the anomaly
threshold in a single run but the confirmation did not uphold it, level ``warning``), and one
result per flagged label and per suspicious label, located at the scanned model file. The model
file is the run's one artifact, with its SHA-256, so a dashboard entry says which file (and
which version of it) was scanned. A clean scan gives a valid log with no results.

A scan over many models (``scan-many``) gives one log too (:func:`sarif_many_log`): one run with
a result per flagged and per suspicious label of every model, located at that model's file, and
the models that could not be scanned as tool execution notifications.

SARIF locations point at lines of text; a model file has none, so every result points at line 1
of the file (code-scanning services refuse results without a line) and carries its numbers in
``properties`` and the message.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from neuralcleanse import __version__
from neuralcleanse.core.errors import InputError
from neuralcleanse.core.results import ScanResult
from neuralcleanse.core.strict_json import dumps, json_safe
from neuralcleanse.core.summary import ModelOutcome, ScanManySummary

SARIF_VERSION = "2.1.0"
#: The OASIS schema of SARIF 2.1.0 (errata 01), the ``$schema`` of every log written here.
SARIF_SCHEMA = ("https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/"
                "sarif-schema-2.1.0.json")
RULE_ID = "NC001"
RULE_NAME = "BackdoorTargetLabel"
SUSPICIOUS_RULE_ID = "NC002"
SUSPICIOUS_RULE_NAME = "SuspiciousLabel"
#: The base of relative artifact URIs: the folder the scan ran in (a repository's root in CI).
SRCROOT = "%SRCROOT%"

_RULE = {
    "id": RULE_ID,
    "name": RULE_NAME,
    "shortDescription": {"text": "Backdoor target label"},
    "fullDescription": {
        "text": "Neural Cleanse reversed, for every output label, the smallest trigger that "
                "sends clean images to that label. This label's trigger is an outlier: far "
                "smaller than the other labels' (its anomaly index exceeds the threshold, or "
                "its norm is a small share of the median label's), "
                "the signature of a backdoor that sends any input carrying a small patch to "
                "this label."},
    "help": {
        "text": "Open the scan's report.html to see the reversed trigger of the label. If the "
                "model comes from an untrusted source, do not deploy it; otherwise retrain it "
                "on clean data or repair it with 'neuralcleanse mitigate' (input filtering, "
                "neuron pruning or unlearning) and scan it again. A flag can also be a false "
                "positive on a label that is genuinely easy to reach: confirm it with more "
                "clean images and the paper's settings.",
        "markdown": "Open the scan's `report.html` to see the reversed trigger of the label. "
                    "If the model comes from an untrusted source, do not deploy it; otherwise "
                    "retrain it on clean data or repair it with `neuralcleanse mitigate` "
                    "(input filtering, neuron pruning or unlearning) and scan it again. A flag "
                    "can also be a false positive on a label that is genuinely easy to reach: "
                    "confirm it with more clean images and the paper's settings."},
    "defaultConfiguration": {"level": "error"},
    "properties": {"tags": ["security", "machine-learning", "backdoor"]},
}
_SUSPICIOUS_RULE = {
    "id": SUSPICIOUS_RULE_ID,
    "name": SUSPICIOUS_RULE_NAME,
    "shortDescription": {"text": "Suspicious label (not confirmed as a backdoor target)"},
    "fullDescription": {
        "text": "This label's reversed trigger crossed the anomaly threshold in a single run of "
                "the search, but not on the median of its runs with further seeds: a "
                "borderline label, not confirmed as a backdoor target. Borderline labels occur "
                "on clean models too (a label that is genuinely easy to reach), and a weak "
                "backdoor can look like one."},
    "help": {
        "text": "Open the scan's report.html and look at the label's reversed trigger and its "
                "norms in the Confirmation table. If the model comes from an untrusted "
                "source, scan it again with more clean images or more confirmation seeds.",
        "markdown": "Open the scan's `report.html` and look at the label's reversed trigger and "
                    "its norms in the *Confirmation* table. If the model comes from an "
                    "untrusted source, scan it again with more clean images or more "
                    "confirmation seeds."},
    "defaultConfiguration": {"level": "warning"},
    "properties": {"tags": ["security", "machine-learning", "backdoor"]},
}


def sarif_log(result: ScanResult, model_path: str | Path, *, exit_code: int,
              cwd: str | Path | None = None) -> dict[str, Any]:
    """The SARIF 2.1.0 log of a scan, as a JSON-ready dict.

    Args:
        result: The scan.
        model_path: The scanned model file (or folder); hashed when it is a file.
        exit_code: The exit code of the scan, recorded in the log's invocation.
        cwd: The folder that relative locations start from (default: the working folder);
            a model outside it is located by an absolute ``file:`` URI.

    Returns:
        The log: one run, one ``error`` result per label in ``result.flagged_labels`` and one
        ``warning`` result per label in ``result.suspicious_labels``.
    """
    base = _base(cwd)
    location = artifact_location(model_path, base)
    run: dict[str, Any] = {
        "tool": _tool(),
        "artifacts": [_artifact(model_path, location)],
        "results": [*(_result(result, label, location) for label in result.flagged_labels),
                    *(_result(result, label, location, suspicious=True)
                      for label in result.suspicious_labels)],
        "invocations": [{"executionSuccessful": not result.partial, "exitCode": int(exit_code),
                         "exitCodeDescription": _EXIT_CODES.get(int(exit_code), "other")}],
        "columnKind": "unicodeCodePoints",
        "properties": json_safe({
            "verdict": result.verdict, "flagged_labels": list(result.flagged_labels),
            "suspicious_labels": list(result.suspicious_labels),
            "rule": result.confirmation.get("rule", result.config.get("verdict")),
            "nb_classes": result.nb_classes,
            "median_norm": result.median_norm, "mad": result.mad,
            "anomaly_threshold": result.anomaly_threshold, "partial": result.partial}),
    }
    if "uriBaseId" in location:
        run["originalUriBaseIds"] = {SRCROOT: {"uri": base.as_uri().rstrip("/") + "/"}}
    return {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION, "runs": [run]}


def write_sarif(path: str | Path, result: ScanResult, model_path: str | Path, *,
                exit_code: int, cwd: str | Path | None = None) -> Path:
    """Write :func:`sarif_log` to ``path`` as strict JSON, atomically; return the path."""
    from neuralcleanse.io.report import atomic_write

    target = Path(path)
    log = sarif_log(result, model_path, exit_code=exit_code, cwd=cwd)
    atomic_write(target, dumps(log, indent=2) + "\n")
    return target


@dataclass(frozen=True)
class ModelScan:
    """One model of a scan over many models, as :func:`sarif_many_log` shows it.

    Attributes:
        name: The model's name in the run (it names its report folder).
        model_path: The model file.
        result: Its scan, whose flagged and suspicious labels become results; ``None`` when
            it has none to show (a clean model, or one that could not be scanned).
        error: The one-line error of a model that could not be scanned.
        warnings: The warnings its scan gave, one line each.
    """

    name: str
    model_path: str | Path
    result: ScanResult | None = None
    error: str | None = None
    warnings: tuple[str, ...] = ()


def sarif_many_log(models: Sequence[ModelScan], *, exit_code: int,
                   cwd: str | Path | None = None,
                   properties: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The SARIF 2.1.0 log of a scan over many models, as a JSON-ready dict.

    One run, with the rules and results of :func:`sarif_log`: every model file is an artifact
    (with its size and SHA-256 when it is a file; a file named by two models is listed once),
    and every flagged label (``error``) and suspicious label (``warning``) of every model is a
    result located at that model's file, its message and ``properties`` naming the model. A
    model that could not be scanned is a tool execution notification of level ``error`` of the
    run's one invocation, which is then not successful; a model's warnings are notifications
    of level ``warning``.

    Args:
        models: The models, in the run's order.
        exit_code: The exit code of the run, recorded in the log's invocation.
        cwd: The folder that relative locations start from (default: the working folder).
        properties: The run's ``properties`` (e.g. its totals).

    Returns:
        The log.
    """
    base = _base(cwd)
    artifacts: list[dict[str, Any]] = []
    index_of: dict[str, int] = {}
    results: list[dict[str, Any]] = []
    notifications: list[dict[str, Any]] = []
    for model in models:
        location = artifact_location(model.model_path, base, index=len(artifacts))
        if location["uri"] in index_of:
            location["index"] = index_of[location["uri"]]
        else:
            index_of[location["uri"]] = location["index"]
            artifacts.append(_artifact(model.model_path, location))
        if model.result is not None:
            results += [_result(model.result, label, location, model=model.name)
                        for label in model.result.flagged_labels]
            results += [_result(model.result, label, location, suspicious=True,
                                model=model.name)
                        for label in model.result.suspicious_labels]
        if model.error is not None:
            notifications.append(_notification(
                "error", f"Model {model.name!r} could not be scanned: {model.error}",
                model.name, location))
        notifications += [_notification("warning", f"Model {model.name!r}: {warning}",
                                        model.name, location) for warning in model.warnings]
    failed = any(m.error is not None or (m.result is not None and m.result.partial)
                 for m in models)
    invocation: dict[str, Any] = {
        "executionSuccessful": not failed, "exitCode": int(exit_code),
        "exitCodeDescription": _MANY_EXIT_CODES.get(int(exit_code), "other")}
    if notifications:
        invocation["toolExecutionNotifications"] = notifications
    run: dict[str, Any] = {
        "tool": _tool(),
        "artifacts": artifacts,
        "results": results,
        "invocations": [invocation],
        "columnKind": "unicodeCodePoints",
        "properties": json_safe(dict(properties or {})),
    }
    if any("uriBaseId" in a["location"] for a in artifacts):
        run["originalUriBaseIds"] = {SRCROOT: {"uri": base.as_uri().rstrip("/") + "/"}}
    return {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION, "runs": [run]}


def write_sarif_many(path: str | Path, models: Sequence[ModelScan], *, exit_code: int,
                     cwd: str | Path | None = None,
                     properties: Mapping[str, Any] | None = None) -> Path:
    """Write :func:`sarif_many_log` to ``path`` as strict JSON, atomically; return the path."""
    from neuralcleanse.io.report import atomic_write

    target = Path(path)
    log = sarif_many_log(models, exit_code=exit_code, cwd=cwd, properties=properties)
    atomic_write(target, dumps(log, indent=2) + "\n")
    return target


def summary_models(summary: ScanManySummary, out: str | Path,
                   model_base: str | Path) -> list[ModelScan]:
    """The models of a scan over many models, from its summary and reports, for the SARIF log.

    A model's file is its path in the summary (as its manifest wrote it) resolved against
    ``model_base`` (the manifest's folder). The scan of a model with a flagged or suspicious
    label is read from its ``report.json`` under ``out`` (the run's output folder); clean and
    failed models need no report.

    Raises:
        InputError: When such a report cannot be read, is not a scan report, or does not list
            the flagged and suspicious labels the summary lists for its model.
    """
    models = []
    for outcome in summary.models:
        path = Path(outcome.model).expanduser()
        if not path.is_absolute():
            path = Path(model_base) / path
        result = None
        if outcome.status == "done" and (outcome.flagged_labels or outcome.suspicious_labels):
            result = _report_of(outcome, Path(out))
        error = None
        if outcome.status == "failed":
            error = outcome.error or "no error message"
        models.append(ModelScan(name=outcome.name, model_path=path, result=result, error=error,
                                warnings=tuple(outcome.warnings)))
    return models


def _report_of(outcome: ModelOutcome, out: Path) -> ScanResult:
    """The scan report of a finished model, checked against its summary entry."""
    from neuralcleanse.io.report import REPORT_JSON

    path = out / (outcome.report or f"models/{outcome.name}") / REPORT_JSON
    try:
        result = ScanResult.from_json(path)
    except InputError as exc:
        raise InputError(f"the report of model {outcome.name!r} cannot be used: {exc}"
                         ) from None
    except OSError as exc:
        raise InputError(f"cannot read the report {str(path)!r} of model {outcome.name!r}: "
                         f"{exc.strerror or type(exc).__name__}") from None
    if (list(result.flagged_labels) != list(outcome.flagged_labels)
            or list(result.suspicious_labels) != list(outcome.suspicious_labels)):
        raise InputError(f"the report {str(path)!r} of model {outcome.name!r} lists the "
                         f"flagged labels {list(result.flagged_labels)} and suspicious labels "
                         f"{list(result.suspicious_labels)}, but the run's summary lists "
                         f"{outcome.flagged_labels} and {outcome.suspicious_labels}: it was "
                         "written by another scan; scan the models again")
    return result


def _notification(level: str, text: str, model: str,
                  location: dict[str, Any]) -> dict[str, Any]:
    """A tool execution notification about one model, located at its file."""
    return {"level": level, "message": {"text": text},
            "locations": [{"physicalLocation": {"artifactLocation": dict(location)}}],
            "properties": {"model": model}}


def artifact_location(model_path: str | Path, base: Path, index: int = 0) -> dict[str, Any]:
    """The SARIF ``artifactLocation`` of ``model_path``, the run's artifact number ``index``.

    Relative to ``base`` (with ``uriBaseId`` ``%SRCROOT%``) when the file lies under it, an
    absolute ``file:`` URI otherwise; either way percent-encoded (spaces, ``#``, ``%``,
    non-ASCII characters), with ``/`` separators on every platform.
    """
    absolute = Path(os.path.abspath(model_path))
    try:
        relative = absolute.relative_to(base)
    except ValueError:
        return {"uri": absolute.as_uri(), "index": index}
    return {"uri": quote(relative.as_posix(), safe="/"), "uriBaseId": SRCROOT, "index": index}


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file's bytes, as 64 lowercase hex digits (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _base(cwd: str | Path | None) -> Path:
    """The absolute folder that relative locations start from (default: the working folder)."""
    return Path(os.path.abspath(cwd if cwd is not None else os.getcwd()))


def _tool() -> dict[str, Any]:
    return {"driver": {"name": "neuralcleanse", "version": __version__,
                       "semanticVersion": __version__, "rules": [_RULE, _SUSPICIOUS_RULE]}}


def _artifact(model_path: str | Path, location: dict[str, Any]) -> dict[str, Any]:
    """The run's ``artifacts`` entry of a model file: its location, size and SHA-256."""
    artifact: dict[str, Any] = {"location": location, "roles": ["analysisTarget"]}
    path = Path(model_path)
    if path.is_file():
        artifact["length"] = path.stat().st_size
        artifact["hashes"] = {"sha-256": sha256_of(path)}
    return artifact


_EXIT_CODES = {0: "the verdict does not fail the scan (clean, or a verdict the scan does not "
                  "gate on)",
               1: "the verdict fails the scan (backdoor, or suspicious when the scan gates on "
                  "suspicious labels)"}


_MANY_EXIT_CODES = {0: "every model was scanned and no verdict fails the run",
                    1: "a model's verdict fails the run (backdoor, or suspicious when the run "
                       "gates on suspicious labels)",
                    2: "a model could not be scanned (and no verdict fails the run)"}


def _result(result: ScanResult, label: int, location: dict[str, Any], *,
            suspicious: bool = False, model: str | None = None) -> dict[str, Any]:
    """One result; ``model`` (a log of many models) names the model in the text and properties."""
    entry = next(item for item in result.labels if item.label == label)
    if suspicious:
        text = (f"Label {label} is suspicious: it crossed the anomaly threshold "
                f"{result.anomaly_threshold:g} in a single run, but its confirmed anomaly "
                f"index is {entry.anomaly_index:.2f} (L1 norm {entry.norm:.3f} against the "
                f"median {result.median_norm:.3f}): not confirmed as a backdoor target.")
    elif not entry.anomaly_index > result.anomaly_threshold:
        share = entry.norm / result.median_norm if result.median_norm > 0 else 0.0
        text = (f"Label {label} looks like a backdoor target: the L1 norm of its reversed "
                f"trigger, {entry.norm:.3f}, is {share:.0%} of the median norm "
                f"{result.median_norm:.3f} of the scanned labels (anomaly index "
                f"{entry.anomaly_index:.2f}: the norms spread widely; attack success rate "
                f"{entry.attack_success_rate:.1%}).")
    else:
        text = (f"Label {label} looks like a backdoor target: anomaly index "
                f"{entry.anomaly_index:.2f} exceeds the threshold "
                f"{result.anomaly_threshold:g}; the L1 norm of its reversed trigger, "
                f"{entry.norm:.3f}, is far below the median norm {result.median_norm:.3f} of "
                f"the scanned labels (attack success rate {entry.attack_success_rate:.1%}).")
    rule_id = SUSPICIOUS_RULE_ID if suspicious else RULE_ID
    named = {} if model is None else {"model": model}
    if model is not None:
        text = f"Model {model!r}: {text}"
    return {
        "ruleId": rule_id,
        "ruleIndex": 1 if suspicious else 0,
        "level": "warning" if suspicious else "error",
        "message": {"text": text},
        "locations": [{"physicalLocation": {"artifactLocation": dict(location),
                                            "region": {"startLine": 1}}}],
        "partialFingerprints": {"neuralcleanseLabel/v1": f"{rule_id}:label={label}"},
        "properties": json_safe({"label": label, "anomaly_index": entry.anomaly_index,
                                 "norm": entry.norm,
                                 "attack_success_rate": entry.attack_success_rate,
                                 "median_norm": result.median_norm,
                                 "anomaly_threshold": result.anomaly_threshold,
                                 "converged": entry.converged, **named}),
    }
