"""A scan as a SARIF 2.1.0 log, for code-scanning dashboards (GitHub code scanning and others).

One run of the tool ``neuralcleanse`` with two rules, :data:`RULE_ID` (a backdoor target label,
level ``error``) and :data:`SUSPICIOUS_RULE_ID` (a suspicious label: it crossed the anomaly
threshold in a single run but the confirmation did not uphold it, level ``warning``), and one
result per flagged label and per suspicious label, located at the scanned model file. The model
file is the run's one artifact, with its SHA-256, so a dashboard entry says which file (and
which version of it) was scanned. A clean scan gives a valid log with no results.

SARIF locations point at lines of text; a model file has none, so every result points at line 1
of the file (code-scanning services refuse results without a line) and carries its numbers in
``properties`` and the message.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from neuralcleanse import __version__
from neuralcleanse.core.results import ScanResult
from neuralcleanse.core.strict_json import dumps, json_safe

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
                "smaller than the other labels' (its anomaly index exceeds the threshold), "
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
    base = Path(os.path.abspath(cwd if cwd is not None else os.getcwd()))
    location = artifact_location(model_path, base)
    artifact: dict[str, Any] = {"location": location, "roles": ["analysisTarget"]}
    path = Path(model_path)
    if path.is_file():
        artifact["length"] = path.stat().st_size
        artifact["hashes"] = {"sha-256": sha256_of(path)}
    run: dict[str, Any] = {
        "tool": {"driver": {"name": "neuralcleanse", "version": __version__,
                            "semanticVersion": __version__,
                            "rules": [_RULE, _SUSPICIOUS_RULE]}},
        "artifacts": [artifact],
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


def artifact_location(model_path: str | Path, base: Path) -> dict[str, Any]:
    """The SARIF ``artifactLocation`` of ``model_path``.

    Relative to ``base`` (with ``uriBaseId`` ``%SRCROOT%``) when the file lies under it, an
    absolute ``file:`` URI otherwise; either way percent-encoded (spaces, ``#``, ``%``,
    non-ASCII characters), with ``/`` separators on every platform.
    """
    absolute = Path(os.path.abspath(model_path))
    try:
        relative = absolute.relative_to(base)
    except ValueError:
        return {"uri": absolute.as_uri(), "index": 0}
    return {"uri": quote(relative.as_posix(), safe="/"), "uriBaseId": SRCROOT, "index": 0}


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file's bytes, as 64 lowercase hex digits (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_EXIT_CODES = {0: "the verdict does not fail the scan (clean, or a verdict the scan does not "
                  "gate on)",
               1: "the verdict fails the scan (backdoor, or suspicious when the scan gates on "
                  "suspicious labels)"}


def _result(result: ScanResult, label: int, location: dict[str, Any], *,
            suspicious: bool = False) -> dict[str, Any]:
    entry = next(item for item in result.labels if item.label == label)
    if suspicious:
        text = (f"Label {label} is suspicious: it crossed the anomaly threshold "
                f"{result.anomaly_threshold:g} in a single run, but its confirmed anomaly "
                f"index is {entry.anomaly_index:.2f} (L1 norm {entry.norm:.3f} against the "
                f"median {result.median_norm:.3f}): not confirmed as a backdoor target.")
    else:
        text = (f"Label {label} looks like a backdoor target: anomaly index "
                f"{entry.anomaly_index:.2f} exceeds the threshold "
                f"{result.anomaly_threshold:g}; the L1 norm of its reversed trigger, "
                f"{entry.norm:.3f}, is far below the median norm {result.median_norm:.3f} of "
                f"the scanned labels (attack success rate {entry.attack_success_rate:.1%}).")
    rule_id = SUSPICIOUS_RULE_ID if suspicious else RULE_ID
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
                                 "converged": entry.converged}),
    }
