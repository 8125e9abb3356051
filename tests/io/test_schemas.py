"""The JSON Schemas shipped for report.json and summary.json accept what neuralcleanse writes
and refuse broken documents."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

jsonschema = pytest.importorskip("jsonschema")  # in the dev extra

from neuralcleanse.core.config import ScanConfig  # noqa: E402
from neuralcleanse.core.errors import InputError  # noqa: E402
from neuralcleanse.core.results import LabelResult, ScanResult  # noqa: E402
from neuralcleanse.core.summary import ModelOutcome, ScanManySummary  # noqa: E402
from neuralcleanse.frontends.api import versions  # noqa: E402
from neuralcleanse.io.json_schemas import SCHEMAS, load_schema, schema_text  # noqa: E402
from neuralcleanse.io.report import write_report  # noqa: E402
from neuralcleanse.io.summary_files import write_summary  # noqa: E402
from neuralcleanse.search.restarts import combine_restarts  # noqa: E402

H = W = 6


def errors(document: Any, name: str) -> list[str]:
    validator = jsonschema.Draft202012Validator(load_schema(name))
    return [e.message for e in validator.iter_errors(document)]


def label_result(label: int, norm: float, seed: int = 0) -> LabelResult:
    rng = np.random.default_rng(seed * 100 + label)
    mask = rng.random((H, W)).astype(np.float32)
    return LabelResult(label=label, mask=mask, pattern=rng.random((1, H, W)).astype(np.float32),
                       norm=norm, attack_success_rate=0.995, converged=label != 2, steps=40,
                       seconds=0.5, final_cost=1e-3)


def make_result(*, partial: bool = False, restarts: bool = False) -> ScanResult:
    """Labels 0-4 of a 6-class model, label 4 without clean images, label 1 a planted target."""
    norms = {0: 20.0, 1: 2.0, 2: 21.0, 3: 19.5, 4: 22.0}
    scanned = [0, 1, 2] if partial else list(norms)
    labels = [label_result(t, norms[t]) for t in scanned]
    info: dict[str, Any] = {}
    if restarts:
        runs = [[label_result(t, norms[t] + 0.1 * s, seed=s) for t in scanned] for s in (3, 4)]
        labels, info["restarts"] = combine_restarts(runs, [3, 4], 2.0, labels_without_data=[4])
    cfg = ScanConfig(steps=40, mini_batches=None, progress=False)
    return ScanResult.from_labels(
        labels, nb_classes=6, anomaly_threshold=cfg.anomaly_threshold, config=cfg.to_dict(),
        model_info={"framework": "pytorch", "input_shape": [1, H, W], "nb_classes": 6,
                    "channels_first": True, "clip_values": [0.0, 1.0], "output": "logits",
                    "format": "state_dict", "preprocessing": None},
        data_info={"n_images": 50, "class_counts": [10, 10, 10, 10, 0, 10], "x_key": "x"},
        versions=versions(), wall_seconds=1.25, partial=partial, **info)


def written(result: ScanResult, folder: Path) -> dict[str, Any]:
    paths = write_report(result, folder)
    return json.loads(paths.json.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    doc = written(make_result(), tmp_path_factory.mktemp("report"))
    assert doc["labels_without_data"] == [4] and doc["flagged_labels"] == [1]  # what it covers
    return doc


def make_summary() -> ScanManySummary:
    done = ModelOutcome(name="a", model="zoo/a.pt", status="done", verdict="backdoor",
                        flagged_labels=[3], max_anomaly_index=4.5, min_norm=2.0,
                        label_steps=400, wall_seconds=12.5, report="models/a", attempts=1,
                        warnings=["outputs look like probabilities"])
    clean = ModelOutcome(name="b", model="zoo/b.pt", status="done", verdict="clean",
                         max_anomaly_index=float("nan"), min_norm=19.0, label_steps=380,
                         wall_seconds=11.0, report="models/b", attempts=2)
    failed = ModelOutcome(name="c", model="zoo/c.pt", status="failed",
                          error="model file 'zoo/c.pt' is not a model", wall_seconds=0.1,
                          attempts=1)
    return ScanManySummary(models=[done, clean, failed],
                           settings={"config": ScanConfig().to_dict(), "labels_per_task": None,
                                     "engine": "sequential", "budget": float("inf")},
                           wall_seconds=30.0)


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    paths = write_summary(make_summary(), tmp_path_factory.mktemp("summary"))
    return json.loads(paths.json.read_text(encoding="utf-8"))


# -- the schemas themselves ------------------------------------------------------------------
@pytest.mark.parametrize("name", SCHEMAS)
def test_schemas_ship_with_the_package_as_draft_2020_12(name: str) -> None:
    schema = load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert json.loads(schema_text(name)) == schema
    assert schema["properties"]["schema_version"] == {"const": 1}


def test_an_unknown_schema_name_is_an_input_error() -> None:
    with pytest.raises(InputError, match="unknown schema 'nope'"):
        load_schema("nope")


# -- report.json -----------------------------------------------------------------------------
def test_a_written_report_validates(report: dict[str, Any]) -> None:
    assert errors(report, "report") == []


def test_partial_and_multi_seed_reports_validate(tmp_path: Path) -> None:
    partial = written(make_result(partial=True), tmp_path / "partial")
    assert partial["partial"] is True and len(partial["labels"]) == 3
    assert errors(partial, "report") == []
    several = written(make_result(restarts=True), tmp_path / "restarts")
    assert several["restarts"]["n"] == 2
    assert errors(several, "report") == []


def test_a_report_with_non_finite_numbers_validates(tmp_path: Path) -> None:
    result = make_result()
    result.labels[0].final_cost = float("nan")
    result.mad = float("inf")
    doc = written(result, tmp_path)
    assert doc["labels"][0]["final_cost"] is None and doc["mad"] is None
    assert errors(doc, "report") == []


def test_the_report_without_arrays_validates_only_with_its_paths(report: dict[str, Any]
                                                                  ) -> None:
    doc = make_result().to_dict(arrays=False)
    assert errors(doc, "report")  # report.json always carries the triggers
    doc["report"] = {"json": "out/report.json", "html": "out/report.html"}
    assert errors(doc, "report") == []
    with_arrays = copy.deepcopy(report)
    with_arrays["report"] = doc["report"]
    assert errors(with_arrays, "report")  # the printed document leaves the arrays out


def broken_reports(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    def edit(change: Any) -> dict[str, Any]:
        doc = copy.deepcopy(report)
        change(doc)
        return doc

    return [
        ("missing field", edit(lambda d: d.pop("median_norm"))),
        ("missing label field", edit(lambda d: d["labels"][0].pop("norm"))),
        ("missing trigger", edit(lambda d: d["labels"][0].pop("pattern"))),
        ("wrong type", edit(lambda d: d.update(nb_classes="6"))),
        ("boolean as number", edit(lambda d: d["labels"][1].update(steps=True))),
        ("NaN as a string", edit(lambda d: d["labels"][0].update(norm="NaN"))),
        ("Infinity as a string", edit(lambda d: d.update(mad="Infinity"))),
        ("NaN in a mask", edit(lambda d: d["labels"][0]["mask"].__setitem__(0, "nan"))),
        ("schema_version 2", edit(lambda d: d.update(schema_version=2))),
        ("schema_version as a string", edit(lambda d: d.update(schema_version="1"))),
        ("unknown field", edit(lambda d: d.update(grade="backdoor"))),
        ("unknown verdict", edit(lambda d: d.update(verdict="maybe"))),
        ("negative label", edit(lambda d: d["flagged_labels"].append(-1))),
        ("unknown norm", edit(lambda d: d["config"].update(norm=3))),
    ]


def test_broken_reports_fail_validation(report: dict[str, Any]) -> None:
    accepted = [what for what, doc in broken_reports(report) if not errors(doc, "report")]
    assert accepted == []


# -- summary.json ----------------------------------------------------------------------------
def test_a_written_summary_validates(summary: dict[str, Any]) -> None:
    assert [m["status"] for m in summary["models"]] == ["done", "done", "failed"]
    assert summary["models"][1]["max_anomaly_index"] is None  # NaN written as null
    assert errors(summary, "summary") == []
    assert errors(ScanManySummary(models=[], interrupted=True).to_dict(), "summary") == []


def broken_summaries(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    def edit(change: Any) -> dict[str, Any]:
        doc = copy.deepcopy(summary)
        change(doc)
        return doc

    return [
        ("missing field", edit(lambda d: d.pop("totals"))),
        ("missing model field", edit(lambda d: d["models"][0].pop("verdict"))),
        ("wrong type", edit(lambda d: d.update(interrupted="no"))),
        ("NaN as a string", edit(lambda d: d["models"][0].update(min_norm="NaN"))),
        ("schema_version 2", edit(lambda d: d.update(schema_version=2))),
        ("unknown status", edit(lambda d: d["models"][0].update(status="running"))),
        ("failed with a verdict", edit(lambda d: d["models"][2].update(verdict="clean"))),
        ("backdoor without a label", edit(lambda d: d["models"][0].update(flagged_labels=[]))),
        ("unknown field", edit(lambda d: d["models"][1].update(colour="red"))),
    ]


def test_broken_summaries_fail_validation(summary: dict[str, Any]) -> None:
    accepted = [what for what, doc in broken_summaries(summary) if not errors(doc, "summary")]
    assert accepted == []


def test_the_schemas_agree_with_the_readers(report: dict[str, Any],
                                            summary: dict[str, Any]) -> None:
    """What validates is what neuralcleanse reads back (and the readers refuse version 2)."""
    assert ScanResult.from_dict(report).flagged_labels == report["flagged_labels"]
    assert len(ScanManySummary.from_dict(summary).models) == len(summary["models"])
    for doc, reader in ((report, ScanResult.from_dict), (summary, ScanManySummary.from_dict)):
        newer = dict(doc, schema_version=2)
        with pytest.raises(InputError):
            reader(newer)
