"""The typed result of :func:`neuralcleanse.mitigate`, serialisable to JSON and back."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neuralcleanse.backends.base import Classifier
from neuralcleanse.core.errors import InputError, one_line
from neuralcleanse.core.strict_json import dumps, loads, read_json_file
from neuralcleanse.mitigation.filtering import FilteringReport, InputFilter
from neuralcleanse.mitigation.inputs import model_images
from neuralcleanse.mitigation.metrics import DataSplit, Measurements
from neuralcleanse.mitigation.pruning import PruningReport
from neuralcleanse.mitigation.unlearning import UnlearningReport

MITIGATION_SCHEMA_VERSION = 1
#: Accuracy a flagged label's own held-out images may lose to unlearning with the scan's further
#: triggers before the summary suggests stamping the kept trigger alone (the GTSRB benchmark
#: model lost 8.6 points with them, 0.9 without; docs/mitigation-benchmark.md).
OWN_ACCURACY_HINT = 0.03

Report = FilteringReport | PruningReport | UnlearningReport

_REPORTS: dict[str, type[FilteringReport] | type[PruningReport] | type[UnlearningReport]] = {
    "filtering": FilteringReport, "pruning": PruningReport, "unlearning": UnlearningReport}


@dataclass
class MitigationResult:
    """Outcome of one mitigation: the repaired predictor and what it changed.

    Attributes:
        method: ``"filtering"``, ``"pruning"`` or ``"unlearning"``.
        labels: The flagged labels whose reversed triggers were mitigated.
        report: The method's report, with the held-out measurements and the data split.
        wall_seconds: Wall time of the mitigation, measurements included.
        model_info: Facts about the model (framework, input shape, ...).
        versions: Package and framework versions.
        classifier: The repaired copy of the wrapped model (pruning, unlearning), or ``None``
            for filtering and for a result read back from JSON.
        input_filter: The :class:`~neuralcleanse.mitigation.InputFilter` (filtering only; not
            kept in JSON).
        schema_version: Version of the JSON layout.
    """

    method: str
    labels: list[int]
    report: Report
    wall_seconds: float = 0.0
    model_info: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    classifier: Classifier | None = field(default=None, repr=False, compare=False)
    input_filter: InputFilter | None = field(default=None, repr=False, compare=False)
    schema_version: int = MITIGATION_SCHEMA_VERSION

    @property
    def model(self) -> Any:
        """The repaired model: a framework model (a copy) or, for filtering, the input filter."""
        if self.input_filter is not None:
            return self.input_filter
        if self.classifier is None:
            return None
        return getattr(self.classifier, "model", self.classifier)

    @property
    def measurements(self) -> Measurements:
        """Held-out clean accuracy and reversed-trigger attack success before and after."""
        return self.report.measurements

    @property
    def split(self) -> DataSplit:
        """How the data was divided between fitting the mitigation and measuring it."""
        return self.report.split

    @property
    def clean_acc_before(self) -> float:
        """Held-out clean accuracy of the original model."""
        return self.report.measurements.clean_acc_before

    @property
    def clean_acc_after(self) -> float:
        """Held-out clean accuracy after the mitigation (refused inputs count as errors)."""
        return self.report.measurements.clean_acc_after

    @property
    def reversed_asr_before(self) -> dict[int, float]:
        """Attack success rate of each flagged label's reversed trigger before."""
        return self.report.measurements.reversed_asr_before

    @property
    def reversed_asr_after(self) -> dict[int, float]:
        """Attack success rate of each flagged label's reversed trigger after."""
        return self.report.measurements.reversed_asr_after

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Outputs of the repaired predictor (rows of zeros for inputs a filter refuses).

        Raises:
            ValueError: If the result holds no model (it was read back from JSON).
        """
        predictor = self.input_filter or self.classifier
        if predictor is None:
            raise InputError("this MitigationResult holds no model (read back from JSON?)")
        if self.input_filter is None:
            x = model_images(predictor, x, "x")  # type: ignore[arg-type]
        return predictor.predict(x, batch_size=batch_size)

    def save(self, path: str | Path, *, model_sha256: str | None = None) -> str:
        """Save what the mitigation produced: the repaired model, or the input filter.

        Pruning and unlearning save the repaired model in its framework's format (pruning
        written into the weights). Filtering leaves the model unchanged and saves the input
        filter instead, as :meth:`InputFilter.save
        <neuralcleanse.mitigation.InputFilter.save>` does: a small JSON file that
        :func:`~neuralcleanse.load_filter` reads back with the model it was fitted on.

        Args:
            path: The file to write (for a filter, ``.json`` by convention).
            model_sha256: Filtering only: the SHA-256 of the model file the filter was
                fitted on (64 hex digits), recorded in the filter file and checked when it is
                loaded with ``model_path=``.

        Returns:
            The path written.

        Raises:
            InputError: When the result holds no model or filter (it was read back from
                JSON), or ``model_sha256`` is given for pruning or unlearning or is not 64
                hex digits.
        """
        if self.method == "filtering":
            if self.input_filter is None:
                raise InputError("this MitigationResult holds no input filter (read back from "
                                 "JSON?)")
            return str(self.input_filter.save(path, model_sha256=model_sha256))
        if model_sha256 is not None:
            raise InputError(f"model_sha256= applies to an input filter, not to a {self.method} "
                             "result, whose repaired model is saved as it is")
        if self.classifier is None:
            raise InputError("this MitigationResult holds no model (read back from JSON?)")
        return self.classifier.save(str(path))

    def __repr__(self) -> str:
        """One line: method, labels, clean accuracy and worst reversed-trigger success."""
        from neuralcleanse.io.notebook import mitigation_repr

        return mitigation_repr(self)

    def _repr_html_(self) -> str:
        """The notebook view: the summary and the before/after measurements as a table."""
        from neuralcleanse.io.notebook import mitigation_html

        return mitigation_html(self)

    def summary(self) -> str:
        """A short human-readable account of the before/after figures."""
        m = self.report.measurements
        asr = ", ".join(f"label {k}: {m.reversed_asr_before[k]:.1%} -> {v:.1%}"
                        for k, v in m.reversed_asr_after.items())
        text = (f"{self.method}: clean accuracy {m.clean_acc_before:.1%} -> "
                f"{m.clean_acc_after:.1%}; reversed-trigger attack success {asr}")
        for k, v in m.label_acc_after.items():
            before = m.label_acc_before.get(k, math.nan)
            if math.isfinite(v) and math.isfinite(before):
                text += f"; label {k}'s own images: accuracy {before:.1%} -> {v:.1%}"
        if isinstance(self.report, FilteringReport):
            text += (f"; false positives {self.report.false_positive_rate:.1%}, detection "
                     f"{self.report.detection_rate:.1%}")
        elif isinstance(self.report, PruningReport):
            text += f"; {self.report.fraction:.1%} of the layer's neurons pruned"
        if isinstance(self.report, UnlearningReport) and self.report.further_norms:
            text += "; also stamped the scan's other triggers of " + ", ".join(
                f"label {label} (norms {', '.join(f'{n:.1f}' for n in norms)})"
                for label, norms in self.report.further_norms.items())
            for label in self.report.further_norms:
                lost = m.label_acc_before.get(label, math.nan) - m.label_acc_after.get(
                    label, math.nan)
                if lost > OWN_ACCURACY_HINT:  # NaN compares False
                    text += (f"; label {label}'s own images lost {lost:.1%} of accuracy: "
                             "compare all_seeds=False (CLI --kept-trigger-only), which stamps "
                             "the kept trigger alone")
        if isinstance(self.report, UnlearningReport) and len(self.report.rounds) > 1:
            text += f"; {self.report.updates} updates in {len(self.report.rounds)} rounds"
            for k, later in enumerate(self.report.rounds[1:], start=2):
                found = ", ".join(
                    f"label {label} norm {norm:.1f} (success "
                    f"{later.success_found.get(label, math.nan):.1%} "
                    f"when found, {later.success_after.get(label, math.nan):.1%} after)"
                    for label, norm in later.norms.items())
                text += f"; trigger searched again before round {k}: {found}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly values (the model itself is not included)."""
        return {"schema_version": self.schema_version, "method": self.method,
                "labels": [int(t) for t in self.labels],
                "wall_seconds": float(self.wall_seconds), "model_info": self.model_info,
                "versions": self.versions, "report": self.report.to_dict()}

    def to_json(self, path: str | Path | None = None) -> str:
        """Serialise to JSON; also write it to ``path`` when one is given.

        Numbers that are not finite are written as ``null`` (JSON has no NaN or Infinity).
        """
        text = dumps(self.to_dict())
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MitigationResult:
        """Inverse of :meth:`to_dict` (without a model).

        Raises:
            InputError: On an unknown schema version or method, or a field that is missing or
                has the wrong type (a ``ValueError``).
        """
        if not isinstance(data, dict):
            raise InputError("a mitigation result must be a JSON object")
        version = data.get("schema_version")
        if type(version) is not int or version != MITIGATION_SCHEMA_VERSION:
            raise InputError(f"unsupported mitigation schema_version {version!r} (this "
                             f"neuralcleanse reads version {MITIGATION_SCHEMA_VERSION})")
        method = data.get("method")
        if method not in _REPORTS:
            raise InputError(f"unknown mitigation method {method!r} in the result")
        try:
            if not all(isinstance(t, int) and not isinstance(t, bool) for t in data["labels"]):
                raise InputError("labels must be a list of integers")
            if not isinstance(data["report"], dict):
                raise InputError("report must be a JSON object")
            wall = data.get("wall_seconds", 0.0)
            return cls(method=method, labels=list(data["labels"]),
                       report=_REPORTS[method].from_dict(data["report"]),
                       wall_seconds=math.nan if wall is None else float(wall),
                       model_info=dict(data.get("model_info", {})),
                       versions=dict(data.get("versions", {})),
                       schema_version=int(version))
        except KeyError as exc:
            raise InputError(f"the field {exc.args[0]!r} is missing") from None
        except (TypeError, ValueError, AttributeError, OverflowError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"a field has the wrong type or value ({one_line(exc)})"
                             ) from None

    @classmethod
    def from_json(cls, source: str | Path) -> MitigationResult:
        """Read a result from a JSON string or a path to a JSON file.

        A :class:`~pathlib.Path` is always read as a file; a string is JSON text when it starts
        with ``{``. ``NaN`` and ``Infinity`` are read as ``null``.
        """
        if isinstance(source, str) and source.lstrip().startswith("{"):
            return cls.from_dict(loads(source, "the mitigation result text"))
        path = Path(source)
        try:
            return cls.from_dict(read_json_file(path))
        except InputError as exc:
            if str(path) in str(exc):
                raise
            raise InputError(f"{str(path)!r} is not a neuralcleanse mitigation result: {exc}"
                             ) from None
