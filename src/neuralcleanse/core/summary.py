"""Typed summary of a scan over many models (``scan_many`` / ``neuralcleanse scan-many``).

One :class:`ModelOutcome` per model of the manifest, in manifest order, and the run's totals.
``summary.json`` is :meth:`ScanManySummary.to_dict` written with schema version 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from neuralcleanse.core.errors import InputError
from neuralcleanse.core.verdict import VERDICTS, verdict_word

SUMMARY_SCHEMA_VERSION = 1
#: What happened to one model: scanned to the end, or stopped by an error of its own.
STATUSES = ("done", "failed")


@dataclass
class ModelOutcome:
    """The result of scanning one model of a manifest.

    Attributes:
        name: The model's name in the manifest (unique; names its report folder).
        model: The model file as the manifest gives it.
        status: ``"done"`` or ``"failed"``.
        verdict: The model's graded verdict, as ``neuralcleanse scan`` gives it:
            ``"backdoor"`` (a label flagged), ``"suspicious"`` (nothing flagged, but a label
            crossed the threshold in a single run that the confirmation did not uphold),
            ``"clean"``, or ``None`` when it failed.
        flagged_labels: The flagged labels, smallest trigger first.
        suspicious_labels: The suspicious labels, smallest trigger first (never flagged ones;
            empty under the ``"paper"`` rule).
        max_anomaly_index: The largest anomaly index over the labels (``None`` if failed).
        min_norm: The smallest trigger norm (``None`` if failed).
        label_steps: Optimisation steps summed over the labels.
        wall_seconds: Time spent on this model's tasks, summed.
        report: The model's report folder, relative to the run's output folder.
        error: The one-line error of a failed model.
        attempts: Task attempts, retries of dead workers included.
        warnings: The warnings its scan gave (one line each), e.g. outputs that look like
            probabilities while ``output`` says logits.
    """

    name: str
    model: str
    status: str
    verdict: str | None = None
    flagged_labels: list[int] = field(default_factory=list)
    suspicious_labels: list[int] = field(default_factory=list)
    max_anomaly_index: float | None = None
    min_norm: float | None = None
    label_steps: int = 0
    wall_seconds: float = 0.0
    report: str | None = None
    error: str | None = None
    attempts: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ModelOutcome:
        """Read what :meth:`to_dict` wrote; refuses anything else with an ``InputError``."""
        if not isinstance(data, dict):
            raise InputError("a model entry of summary.json must be an object")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise InputError(f"unknown field(s) in a summary entry: {', '.join(sorted(unknown))}")
        try:
            outcome = cls(**data)
        except TypeError as exc:
            raise InputError(f"a summary entry is incomplete: {exc}") from None
        if outcome.status not in STATUSES or (outcome.verdict is not None
                                              and outcome.verdict not in VERDICTS):
            raise InputError(f"summary entry {outcome.name!r} has status {outcome.status!r} "
                             f"and verdict {outcome.verdict!r}")
        if outcome.verdict is not None and outcome.verdict != verdict_word(
                outcome.flagged_labels, outcome.suspicious_labels):
            raise InputError(f"summary entry {outcome.name!r} has verdict {outcome.verdict!r}, "
                             f"which does not fit its flagged labels {outcome.flagged_labels} "
                             f"and suspicious labels {outcome.suspicious_labels}")
        return outcome


@dataclass
class ScanManySummary:
    """All models of one ``scan_many`` run and its totals.

    Attributes:
        models: One outcome per model, in manifest order.
        settings: The run's settings (search config, labels per task, resources, engine).
        wall_seconds: Wall time of the whole run.
        interrupted: Whether the run was stopped before every model was scanned.
    """

    models: list[ModelOutcome]
    settings: dict[str, Any] = field(default_factory=dict)
    wall_seconds: float = 0.0
    interrupted: bool = False

    @property
    def flagged(self) -> list[ModelOutcome]:
        """Models with at least one flagged label."""
        return [m for m in self.models if m.verdict == "backdoor"]

    @property
    def suspicious(self) -> list[ModelOutcome]:
        """Models with nothing flagged but a suspicious label (the ``"suspicious"`` verdict)."""
        return [m for m in self.models if m.verdict == "suspicious"]

    @property
    def failed(self) -> list[ModelOutcome]:
        """Models stopped by an error of their own."""
        return [m for m in self.models if m.status == "failed"]

    def totals(self) -> dict[str, Any]:
        """Counts and sums over the run."""
        return {"models": len(self.models), "flagged": len(self.flagged),
                "suspicious": len(self.suspicious),
                "clean": sum(m.verdict == "clean" for m in self.models),
                "failed": len(self.failed),
                "label_steps": sum(m.label_steps for m in self.models),
                "model_seconds": round(sum(m.wall_seconds for m in self.models), 3),
                "wall_seconds": round(self.wall_seconds, 3)}

    def to_dict(self) -> dict[str, Any]:
        """The content of ``summary.json``."""
        return {"schema_version": SUMMARY_SCHEMA_VERSION, "interrupted": self.interrupted,
                "totals": self.totals(), "settings": self.settings,
                "models": [m.to_dict() for m in self.models]}

    @classmethod
    def from_dict(cls, data: Any) -> ScanManySummary:
        """Read a ``summary.json`` object; refuses other schemas with an ``InputError``."""
        if not isinstance(data, dict) or data.get("schema_version") != SUMMARY_SCHEMA_VERSION:
            raise InputError("not a neuralcleanse summary.json of schema version "
                             f"{SUMMARY_SCHEMA_VERSION}")
        models = data.get("models")
        if not isinstance(models, list):
            raise InputError("summary.json has no list of models")
        settings = data.get("settings", {})
        return cls(models=[ModelOutcome.from_dict(m) for m in models],
                   settings=settings if isinstance(settings, dict) else {},
                   wall_seconds=float(data.get("totals", {}).get("wall_seconds", 0.0)),
                   interrupted=bool(data.get("interrupted", False)))

    def summary(self) -> str:
        """One line: how many models were flagged, suspicious, clean and failed."""
        t = self.totals()
        line = (f"{t['models']} model(s): {t['flagged']} flagged, {t['suspicious']} "
                f"suspicious, {t['clean']} clean, {t['failed']} failed")
        if self.flagged:
            line += " — flagged: " + ", ".join(m.name for m in self.flagged)
        if self.suspicious:
            line += " — suspicious: " + ", ".join(m.name for m in self.suspicious)
        return line + (" (interrupted)" if self.interrupted else "")
