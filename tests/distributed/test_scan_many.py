"""scan_many: a zoo of tiny models on a local Ray, label chunks, dead workers, resume, fallback,
and the graded verdict (each model's confirmation, as ``scan`` runs it).

Two small CNNs on the 8x8 digits (one with a planted trigger for label 0) and one file that is
not a model. The first run starts and stops its own embedded Ray; the others share one local
Ray started once for the module. The default verdict rule ("confirmed") runs one confirmation
task per scanned model after its label chunks.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("safetensors")
pytest.importorskip("sklearn")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from neuralcleanse import ScanConfig, scan, scan_many  # noqa: E402
from neuralcleanse.backends.torch.architectures import small_cnn  # noqa: E402
from neuralcleanse.backends.torch.training import (  # noqa: E402
    seeded,
    torch_threads,
    train_classifier,
)
from neuralcleanse.core.errors import InputError  # noqa: E402
from neuralcleanse.core.results import ScanResult  # noqa: E402
from neuralcleanse.core.summary import ScanManySummary  # noqa: E402
from neuralcleanse.distributed import runner  # noqa: E402
from neuralcleanse.distributed.manifest import read_manifest  # noqa: E402
from neuralcleanse.distributed.tasks import TEST_CRASH_ENV, settings_key  # noqa: E402
from neuralcleanse.io.digits import digits_images, stamp_square  # noqa: E402

ARCH = "neuralcleanse.backends.torch.architectures:small_cnn"
#: Tiny search settings under which every label of both models stops early.
SEARCH = {"steps": 30, "mini_batches": 2, "patience": 2, "early_stop_patience": 2}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two trained models (a state dict and a safetensors file), a bad file, data, manifest."""
    root = tmp_path_factory.mktemp("zoo")
    x, y = digits_images(1)
    np.savez(root / "val.npz", x=x[:600], y=y[:600])
    with torch_threads(2):
        for i, poison in enumerate([False, True]):
            seeded(i)
            model = small_cnn(image_size=8)
            xs, ys = x, y
            if poison:  # a 2x2 white square sends any digit to 0
                xs = np.concatenate([x, stamp_square(x[:300], 2)])
                ys = np.concatenate([y, np.zeros(300, np.int64)])
            train_classifier(model, xs, ys, seed=i, epochs=4)
            if poison:
                save_file(model.state_dict(), root / "backdoored.safetensors")
            else:
                torch.save(model.state_dict(), root / "clean.pt")
    (root / "broken.pt").write_bytes(b"this is not a model file")
    manifest = {"defaults": {"data": "val.npz", "arch": ARCH, "arch_kwargs": {"image_size": 8}},
                "search": SEARCH,
                "models": [{"model": "clean.pt"}, {"model": "broken.pt"},
                           {"name": "poisoned", "model": "backdoored.safetensors"}]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return {"root": root, "manifest": root / "manifest.json"}


def reports(out: Path, names: tuple[str, ...] = ("clean", "poisoned")) -> dict[str, ScanResult]:
    return {n: ScanResult.from_json(out / "models" / n / "report.json") for n in names}


def assert_same_results(a: dict[str, ScanResult], b: dict[str, ScanResult]) -> None:
    """Bit for bit the same triggers and norms, the same graded verdict and confirmation."""
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name].norms, b[name].norms), name
        assert np.array_equal(a[name].anomaly_index, b[name].anomaly_index), name
        assert np.array_equal(a[name].masks, b[name].masks), name
        assert np.array_equal(a[name].patterns, b[name].patterns), name
        assert a[name].flagged_labels == b[name].flagged_labels, name
        assert a[name].verdict == b[name].verdict, name
        assert a[name].suspicious_labels == b[name].suspicious_labels, name
        assert same_confirmation(a[name].confirmation, b[name].confirmation), name


def same_confirmation(a: dict, b: dict) -> bool:
    """The confirmation records agree on everything but the time they took."""
    def timeless(record: dict) -> dict:
        return {k: v for k, v in record.items() if k != "extra_seconds"}

    return timeless(a) == timeless(b)


def load_model(zoo: dict[str, Path], name: str) -> torch.nn.Module:
    from safetensors.torch import load_file

    model = small_cnn(image_size=8)
    if name == "poisoned":
        model.load_state_dict(load_file(zoo["root"] / "backdoored.safetensors"))
    else:
        model.load_state_dict(torch.load(zoo["root"] / "clean.pt", weights_only=True))
    return model.eval()


def direct_scan(zoo: dict[str, Path], name: str, **settings: object) -> ScanResult:
    """``neuralcleanse.scan`` of one model of the zoo, on the manifest's data and settings."""
    data = np.load(zoo["root"] / "val.npz")
    with torch_threads(1):
        return scan(load_model(zoo, name), data["x"], data["y"],
                    config=ScanConfig(**SEARCH, **settings), progress=False)


@pytest.fixture(scope="module")
def baseline(zoo: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[ScanManySummary, Path, list[dict]]:
    """One run on an embedded Ray that scan_many starts and stops itself, no label chunks."""
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    out = tmp_path_factory.mktemp("baseline")
    events: list[dict] = []
    summary = scan_many(zoo["manifest"], out, on_progress=events.append)
    assert not ray.is_initialized()  # shut down again
    return summary, out, events


@pytest.fixture(scope="module")
def local_ray(baseline: tuple) -> object:
    """One local Ray for the rest of the module (scan_many uses the Ray already running)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


def test_a_bad_model_fails_alone_and_every_other_model_is_reported(baseline: tuple,
                                                                   zoo: dict[str, Path]) -> None:
    summary, out, events = baseline
    by_name = {m.name: m for m in summary.models}
    assert [m.name for m in summary.models] == ["clean", "broken", "poisoned"]  # manifest order
    broken = by_name["broken"]
    assert broken.status == "failed" and broken.verdict is None and broken.report is None
    assert "broken.pt" in broken.error and "\n" not in broken.error
    for name in ("clean", "poisoned"):
        m = by_name[name]
        # one task scanned its labels, one confirmed its borderline ones
        assert m.status == "done" and m.error is None and m.attempts == 2
        assert (out / m.report / "report.html").is_file()
        assert (out / m.report / "triggers").is_dir()
        assert not (out / m.report / "partial").exists()  # the resume store is cleared
        result = ScanResult.from_json(out / m.report / "report.json")
        assert m.verdict == result.verdict
        assert m.flagged_labels == result.flagged_labels
        assert m.suspicious_labels == result.suspicious_labels
        assert m.min_norm == pytest.approx(float(result.norms.min()))
        conf = result.confirmation
        assert conf["rule"] == "confirmed" and conf["candidates"]
        # the work of both passes
        assert m.label_steps == conf["first_run"]["label_steps"] + conf["runs_label_steps"]
        # the report's facts as the command line's scan writes them
        assert result.model_info["format"] == ("state_dict" if name == "clean" else
                                               "safetensors")
        assert result.model_info["output_source"] == "detected from the model's outputs"
        assert result.data_info["n_images"] == 600 and not result.partial
    assert by_name["poisoned"].flagged_labels == [0]  # the planted trigger's label
    assert by_name["poisoned"].verdict == "backdoor"
    assert summary.interrupted is False
    written = ScanManySummary.from_dict(json.loads((out / "summary.json").read_text()))
    assert [(m.name, m.status, m.verdict) for m in written.models] == \
        [(m.name, m.status, m.verdict) for m in summary.models]
    last = events[-1]
    assert (last["done"], last["failed"], last["running"], last["total"]) == (2, 1, 0, 3)
    assert {e["event"] for e in events} >= {"started", "scanning", "confirming", "done",
                                            "failed"}
    for e in events:
        if e["event"] == "done":  # the word of the verdict, and its labels
            assert e["verdict"] == by_name[e["model"]].verdict
            assert e["suspicious_labels"] == by_name[e["model"]].suspicious_labels
        if e["event"] == "confirming":
            assert e["status"] == "confirming" and e["running"] >= 1
            result = ScanResult.from_json(out / "models" / e["model"] / "report.json")
            assert e["confirm_labels"] == result.confirmation["candidates"]


def test_each_model_gets_the_verdict_scan_gives_it(baseline: tuple, zoo: dict[str, Path]
                                                   ) -> None:
    """Same settings, same model: scan-many's graded result is the library's scan's, exactly."""
    summary, out, events = baseline
    by_name = {m.name: m for m in summary.models}
    for name, result in reports(out).items():
        direct = direct_scan(zoo, name)
        assert np.array_equal(direct.norms, result.norms), name
        assert np.array_equal(direct.anomaly_index, result.anomaly_index), name
        assert np.array_equal(direct.masks, result.masks), name
        assert (direct.verdict, direct.flagged_labels, direct.suspicious_labels) == \
            (result.verdict, result.flagged_labels, result.suspicious_labels), name
        assert same_confirmation(direct.confirmation, result.confirmation), name
        assert direct.confirmation["runs"]  # the further runs were searched, and agree
        m = by_name[name]
        assert (m.verdict, m.flagged_labels, m.suspicious_labels) == \
            (direct.verdict, direct.flagged_labels, direct.suspicious_labels)
        assert m.min_norm == float(direct.norms.min())
        # the report's stamped examples (made by the confirmation task) are the library's
        assert report_examples(out, name) == library_examples(zoo, name, direct), name
    assert not [e for e in events if e["event"] == "stamping"]  # no task more than before
    poisoned = report_examples(out, "poisoned")
    assert [(e["label"], e["kind"]) for e in poisoned][:1] == [(0, "flagged")]
    assert poisoned[0]["source_label"] != 0  # an image of another class, stamped


def report_examples(out: Path, name: str) -> list[dict]:
    report = json.loads((out / "models" / name / "report.json").read_text())
    return report["data_info"].get("stamped_examples", [])


def library_examples(zoo: dict[str, Path], name: str, result: ScanResult) -> list[dict]:
    """:func:`stamped_examples` of ``result`` on the model and the manifest's data."""
    from neuralcleanse.frontends.api import prepare
    from neuralcleanse.mitigation.examples import stamped_examples

    data = np.load(zoo["root"] / "val.npz")
    with torch_threads(1):
        clf, images, targets = prepare(load_model(zoo, name), data["x"], data["y"])
        return json.loads(json.dumps(stamped_examples(clf, images, targets, result)))


def test_summary_json_validates_against_its_schema(baseline: tuple) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from neuralcleanse.io.json_schemas import load_schema

    _, out, _ = baseline
    document = json.loads((out / "summary.json").read_text())
    jsonschema.Draft202012Validator(load_schema("summary")).validate(document)
    assert document["totals"]["suspicious"] == sum(m["verdict"] == "suspicious"
                                                   for m in document["models"])
    for m in document["models"]:
        assert "suspicious_labels" in m and "verdict" in m
    # the verdict settings are recorded with the run's settings, not in the resume key
    config = document["settings"]["config"]
    default = ScanConfig()
    assert (config["verdict"], config["confirm_seeds"], config["confirm_margin"],
            config["max_norm_ratio"], config["small_norm_ratio"]) == (
                default.verdict, default.confirm_seeds, default.confirm_margin,
                default.max_norm_ratio, default.small_norm_ratio)
    key = settings_key(ScanConfig(**SEARCH, verdict="paper", confirm_seeds=5,
                                  confirm_margin=0.5, anomaly_threshold=3.0,
                                  small_norm_ratio=0.1))
    assert key == settings_key(ScanConfig(**SEARCH))
    assert not {"verdict", "confirm_seeds", "confirm_margin", "anomaly_threshold",
                "small_norm_ratio"} & set(key)


def test_label_chunks_merge_into_exactly_the_unsplit_scan(baseline: tuple, local_ray: object,
                                                          zoo: dict[str, Path],
                                                          tmp_path: Path) -> None:
    _, out, _ = baseline
    summary = scan_many(zoo["manifest"], tmp_path, labels_per_task=3)
    chunked = reports(tmp_path)
    assert_same_results(chunked, reports(out))
    # every label stopped early, so the chunks' schedules really ran their own course
    for result in chunked.values():
        assert all(r.steps < SEARCH["steps"] for r in result.labels)
    poisoned = next(m for m in summary.models if m.name == "poisoned")
    assert poisoned.attempts == 5  # chunks of 3, 3, 3 and 1 labels, and the confirmation
    # the confirmation searched its candidates once for all chunks, with the further seeds
    conf = chunked["poisoned"].confirmation
    assert set(conf["runs"]) == {str(t) for t in conf["candidates"]}
    assert all(len(norms) == 2 for norms in conf["runs"].values())


def test_a_worker_killed_mid_task_is_retried_and_nothing_is_lost(
        baseline: tuple, local_ray: object, zoo: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, out, _ = baseline
    monkeypatch.setenv(TEST_CRASH_ENV, "poisoned")  # each chunk's first attempt dies
    summary = scan_many(zoo["manifest"], tmp_path, labels_per_task=5, max_retries=2)
    by_name = {m.name: m for m in summary.models}
    assert by_name["poisoned"].status == "done"
    assert by_name["poisoned"].attempts == 6  # two chunks and the confirmation, each twice
    assert by_name["clean"].attempts == 3
    assert_same_results(reports(tmp_path), reports(out))


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(
        baseline: tuple, local_ray: object, zoo: dict[str, Path], tmp_path: Path) -> None:
    base_summary, out, _ = baseline

    def stop_after_first_model(event: dict) -> None:
        if event["event"] == "done":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scan_many(zoo["manifest"], tmp_path, labels_per_task=5,
                  on_progress=stop_after_first_model)
    stopped = json.loads((tmp_path / "summary.json").read_text())
    assert stopped["interrupted"] is True
    finished = [m["name"] for m in stopped["models"] if m["status"] == "done"]
    assert len(finished) == 1

    events: list[dict] = []
    summary = scan_many(zoo["manifest"], tmp_path, labels_per_task=5, resume=True,
                        on_progress=events.append)
    assert not summary.interrupted
    assert [e["model"] for e in events if e["event"] == "skipped"] == finished
    assert [(m.name, m.status, m.verdict, m.flagged_labels, m.min_norm) for m in summary.models] \
        == [(m.name, m.status, m.verdict, m.flagged_labels, m.min_norm)
            for m in base_summary.models]
    assert_same_results(reports(tmp_path), reports(out))

    # a finished run resumed again has nothing left to scan
    events.clear()
    scan_many(zoo["manifest"], tmp_path, labels_per_task=5, resume=True,
              on_progress=events.append)
    assert sorted(e["model"] for e in events if e["event"] == "skipped") == ["clean",
                                                                             "poisoned"]
    assert not [e for e in events if e["event"] in ("scanning", "chunk")]


def test_without_ray_the_same_tasks_run_in_turn_with_the_same_results(
        baseline: tuple, zoo: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from neuralcleanse.distributed import engines

    _, out, _ = baseline
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    monkeypatch.setattr(engines, "_warned_no_ray", False)
    with pytest.warns(UserWarning, match=r"neuralcleanse\[distributed\]"):
        summary = scan_many(zoo["manifest"], tmp_path, labels_per_task=4)
    assert summary.settings["engine"] == "sequential"
    assert [m.status for m in summary.models] == ["done", "failed", "done"]
    assert_same_results(reports(tmp_path), reports(out))
    with pytest.raises(InputError, match="need Ray"):
        scan_many(zoo["manifest"], tmp_path / "again", parallel=True)

    # in turn, the order is fixed: stop after the first chunk, and resume takes up its labels
    def stop_after_first_chunk(event: dict) -> None:
        if event["event"] == "chunk":
            raise KeyboardInterrupt

    again = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        scan_many(zoo["manifest"], again, labels_per_task=4, on_progress=stop_after_first_chunk)
    assert len(list((again / "models" / "clean" / "partial").glob("label_*.json"))) == 4
    events: list[dict] = []
    scan_many(zoo["manifest"], again, labels_per_task=4, resume=True, on_progress=events.append)
    first = next(e for e in events if e["model"] == "clean" and e["event"] == "scanning")
    assert (first["labels_done"], first["labels_total"]) == (4, 10)
    assert_same_results(reports(again), reports(out))


# -- the verdict rule and the confirmation task -----------------------------------------------
def test_the_paper_rule_submits_no_confirmation_task(
        baseline: tuple, zoo: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, out, _ = baseline
    confirmations: list[list[int]] = []
    submit = runner.Driver.merge

    def spy(self: runner.Driver, m: runner.ModelRun) -> None:
        submit(self, m)
        if m.state == "confirming":
            confirmations.append(m.confirming)

    monkeypatch.setattr(runner.Driver, "merge", spy)
    events: list[dict] = []
    summary = scan_many(zoo["manifest"], tmp_path, config={"verdict": "paper"}, parallel=False,
                        on_progress=events.append)
    assert confirmations == []
    assert not [e for e in events if e["event"] == "confirming"]
    assert summary.settings["config"]["verdict"] == "paper"
    confirmed = reports(out)
    by_name = {m.name: m for m in summary.models}
    for name, result in reports(tmp_path).items():
        assert by_name[name].attempts == 1  # the labels' task alone
        assert result.confirmation["rule"] == "paper" and "runs" not in result.confirmation
        # the published rule on one run: the confirmed scan's first pass, exactly
        first = confirmed[name].confirmation["first_run"]
        assert [r.norm for r in result.labels] == first["norms"]
        assert result.flagged_labels == first["flagged"]
        assert result.suspicious_labels == [] == by_name[name].suspicious_labels
        assert result.verdict == by_name[name].verdict == ("backdoor" if first["flagged"]
                                                           else "clean")
        assert by_name[name].label_steps == first["label_steps"]
        # no confirmation: the last task stamped the flagged labels' examples
        assert report_examples(tmp_path, name) == library_examples(zoo, name, result), name
    assert by_name["poisoned"].verdict == "backdoor"
    assert [e["kind"] for e in report_examples(tmp_path, "poisoned")] == ["flagged"]

    # resumed under the confirmed rule, a model finished under the paper rule is not reused
    events.clear()
    scan_many(zoo["manifest"], tmp_path, parallel=False, resume=True, on_progress=events.append)
    assert not [e for e in events if e["event"] == "skipped"]
    assert_same_results(reports(tmp_path), confirmed)


def test_a_run_stopped_in_a_confirmation_resumes_with_the_confirmation_alone(
        baseline: tuple, zoo: dict[str, Path], tmp_path: Path) -> None:
    base_summary, out, _ = baseline

    def stop_at_the_confirmation(event: dict) -> None:
        if event["event"] == "confirming":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scan_many(zoo["manifest"], tmp_path, labels_per_task=5, parallel=False,
                  on_progress=stop_at_the_confirmation)
    # the first pass of the first model is complete and kept; nothing was reported
    assert len(list((tmp_path / "models" / "clean" / "partial").glob("label_*.json"))) == 10
    assert not (tmp_path / "models" / "clean" / "report.json").exists()

    events: list[dict] = []
    summary = scan_many(zoo["manifest"], tmp_path, labels_per_task=5, parallel=False,
                        resume=True, on_progress=events.append)
    clean = [e for e in events if e["model"] == "clean"]
    assert [e["event"] for e in clean] == ["confirming", "done"]  # no label searched again
    assert (clean[0]["labels_done"], clean[0]["labels_total"]) == (10, 10)
    by_name = {m.name: m for m in summary.models}
    assert by_name["clean"].attempts == 1  # the confirmation's task alone
    assert [(m.name, m.status, m.verdict, m.flagged_labels, m.suspicious_labels, m.min_norm,
             m.label_steps) for m in summary.models] == \
        [(m.name, m.status, m.verdict, m.flagged_labels, m.suspicious_labels, m.min_norm,
          m.label_steps) for m in base_summary.models]
    assert_same_results(reports(tmp_path), reports(out))


def test_other_verdict_settings_grade_finished_models_again_from_their_saved_searches(
        baseline: tuple, zoo: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, out, _ = baseline
    scan_many(zoo["manifest"], tmp_path, parallel=False)  # the default (confirmed) rule
    confirmed = reports(tmp_path)
    assert_same_results(confirmed, reports(out))
    chunks: list[str] = []
    confirmations: list[tuple[str, list[int]]] = []
    scan_chunk, confirm_labels = runner.scan_chunk, runner.confirm_labels

    def chunk_spy(spec, *args):  # type: ignore[no-untyped-def]
        chunks.append(spec.name)
        return scan_chunk(spec, *args)

    def confirm_spy(spec, cfg, ctx, facts, labels, *args):  # type: ignore[no-untyped-def]
        confirmations.append((spec.name, list(labels)))
        return confirm_labels(spec, cfg, ctx, facts, labels, *args)

    monkeypatch.setattr(runner, "scan_chunk", chunk_spy)
    monkeypatch.setattr(runner, "confirm_labels", confirm_spy)

    # the paper rule: the saved first pass, graded again; only the examples are stamped
    summary = scan_many(zoo["manifest"], tmp_path, parallel=False, resume=True,
                        config={"verdict": "paper"})
    assert chunks == [] and all(labels == [] for _, labels in confirmations)
    for name, result in reports(tmp_path).items():
        first = confirmed[name].confirmation["first_run"]
        assert result.confirmation["rule"] == "paper"
        assert [r.norm for r in result.labels] == first["norms"]
        assert result.flagged_labels == first["flagged"]
    assert {m.name: m.status for m in summary.models} == {
        "clean": "done", "poisoned": "done", "broken": "failed"}

    # back to the confirmed rule: the confirmation's runs were saved too, nothing is searched
    confirmations.clear()
    scan_many(zoo["manifest"], tmp_path, parallel=False, resume=True)
    assert chunks == [] and all(labels == [] for _, labels in confirmations)
    regraded = reports(tmp_path)
    assert_same_results(regraded, confirmed)
    for name, result in regraded.items():  # the report's examples: the library's, as before
        assert report_examples(tmp_path, name) == library_examples(zoo, name, result), name

    # a wider margin plans more labels: only those never searched with the further seeds run
    planned = {n: set(r.confirmation["candidates"]) for n, r in confirmed.items()}
    scan_many(zoo["manifest"], tmp_path, parallel=False, resume=True,
              config={"confirm_margin": 1.5})
    assert chunks == []
    widened = reports(tmp_path)
    searched = {name: set(labels) for name, labels in confirmations if labels}
    for name, result in widened.items():
        more = set(result.confirmation["candidates"]) - planned[name]
        assert searched.get(name, set()) == more, name
        direct = direct_scan(zoo, name, confirm_margin=1.5)
        assert np.array_equal(result.norms, direct.norms), name
        assert result.flagged_labels == direct.flagged_labels, name
        assert result.verdict == direct.verdict, name
    assert any(searched.values())  # the margin did plan more labels

    # saved searches that do not fit (another model, data or settings) are not used
    saved = tmp_path / ".scan-many" / "searches" / "clean" / "seed-0" / "label_3.json"
    doc = json.loads(saved.read_text())
    doc["fingerprint"] = "another model"
    saved.write_text(json.dumps(doc))
    scan_many(zoo["manifest"], tmp_path, parallel=False, resume=True,
              config={"verdict": "paper"})
    assert chunks == ["clean"]  # its first pass searched again, the other model's reused
    assert_same_results({"clean": reports(tmp_path)["clean"]},
                        {"clean": direct_scan(zoo, "clean", verdict="paper")})

    # a run without resume searches everything again
    chunks.clear()
    scan_many(zoo["manifest"], tmp_path, parallel=False, config={"verdict": "paper"})
    assert sorted(chunks) == ["clean", "poisoned"]


def test_a_confirmation_that_fails_fails_its_model_alone(
        zoo: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from neuralcleanse.distributed.tasks import ConfirmDone, TaskFailure

    def broken_confirmation(spec: object, *args: object) -> object:
        if spec.name == "clean":  # type: ignore[attr-defined]
            return TaskFailure(error="out of memory in the confirmation", seconds=1.0)
        return ConfirmDone(runs={})  # misses the planned labels

    monkeypatch.setattr(runner, "confirm_labels", broken_confirmation)
    summary = scan_many(zoo["manifest"], tmp_path, parallel=False)
    by_name = {m.name: m for m in summary.models}
    assert [m.status for m in summary.models] == ["failed"] * 3
    assert by_name["clean"].error == "out of memory in the confirmation"
    assert by_name["clean"].attempts == 2  # its chunk and its confirmation
    assert by_name["poisoned"].error.startswith("cannot grade its confirmation: ")
    assert "\n" not in by_name["poisoned"].error
    assert not (tmp_path / "models" / "clean" / "report.json").exists()
    # the first pass is kept for a resume
    assert len(list((tmp_path / "models" / "clean" / "partial").glob("label_*.json"))) == 10


# -- the manifest, checked before any work ----------------------------------------------------
def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture()
def files(tmp_path: Path) -> Path:
    (tmp_path / "a.pt").write_bytes(b"x")
    (tmp_path / "b.safetensors").write_bytes(b"x")
    (tmp_path / "zoo").mkdir()
    for name in ("m1.pt", "m2.keras", "m2.pt", "notes.txt", ".hidden.pt"):
        (tmp_path / "zoo" / name).write_bytes(b"x")
    np.savez(tmp_path / "val.npz", x=np.zeros((2, 8, 8)), y=np.zeros(2, np.int64))
    return tmp_path


def test_a_toml_manifest_resolves_paths_defaults_and_names(files: Path) -> None:
    manifest = write(files / "zoo.toml", """
[defaults]
data = "val.npz"
clip_values = [0, 255]

[search]
steps = 5
mini_batches = "all"

[[models]]
model = "a.pt"
input_shape = [1, 8, 8]
subtract = [0.5]

[[models]]
name = "second"
model = "b.safetensors"
labels = [0, 3]

[[models]]
folder = "zoo"
output = "logits"
""")
    plan = read_manifest(manifest)
    assert [s.name for s in plan.models] == ["a", "second", "m1", "m2.keras", "m2.pt"]
    assert plan.models[0].model == files / "a.pt" and plan.models[0].data == files / "val.npz"
    assert plan.models[0].load_arguments()["input_shape"] == "1,8,8"
    assert plan.models[0].load_arguments()["clip_values"] == "0.0,255.0"
    assert plan.models[1].options["labels"] == [0, 3]
    assert plan.models[4].options["output"] == "logits"
    assert plan.search == {"steps": 5, "mini_batches": None}
    # the folder shorthand: one entry per model file, the same options for each
    short = read_manifest((str(files / "zoo"), str(files / "val.npz"), {"trust_pickle": True}))
    assert [s.name for s in short.models] == ["m1", "m2.keras", "m2.pt"]
    assert all(s.options == {"trust_pickle": True} for s in short.models)


@pytest.mark.parametrize(("entry", "message"), [
    ('model = "a.pt"\nlables = [1]', r"model entry 1: unknown key\(s\) 'lables'"),
    ('model = "a.pt"\nclip_values = "0,1"', "model entry 1: clip_values must be"),
    ('model = "a.pt"\nclip_values = [1, 0]', "clip_values needs MIN < MAX"),
    ('model = "a.pt"\ndivide = 0', "divide must not contain 0"),
    ('model = "a.pt"\ntrust_pickle = "yes"', "trust_pickle must be true or false"),
    ('model = "a.pt"\ninput_shape = [0, 8]', "input_shape takes 2 or 3 positive"),
    ('model = "a.pt"\nlabels = [1, 1]', "labels must be a list of distinct labels"),
    ('model = "missing.pt"', "model entry 1: model file .*missing.pt.* does not exist"),
    ('model = "a.pt"\ndata = "nowhere.npz"', "data path .*nowhere.npz.* does not exist"),
    ('name = "../up"\nmodel = "a.pt"', "name '../up' must be"),
    ('folder = "zoo"\nname = "x"', "a folder entry names its models after their files"),
    ('model = "a.pt"\n[[models]]\nname = "A"\nmodel = "b.safetensors"',
     "two models are named 'A'"),
])
def test_a_bad_entry_is_refused_before_any_work(files: Path, entry: str, message: str) -> None:
    manifest = write(files / "bad.toml", f'[defaults]\ndata = "val.npz"\n\n[[models]]\n{entry}\n')
    with pytest.raises(InputError, match=message) as caught:
        scan_many(manifest, files / "out", parallel=False)
    assert "\n" not in str(caught.value)
    assert not (files / "out").exists()  # refused before anything was written


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"config": {"steps": 0}}, "config: steps must be"),
    ({"config": {"stepz": 3}}, r"unknown setting\(s\) 'stepz'"),
    ({"cpus_per_scan": 0}, "cpus_per_scan must be"),
    ({"labels_per_task": 0}, "labels_per_task must be"),
    ({"max_retries": -1}, "max_retries must be"),
    ({"parallel": False, "address": "auto"}, "cannot be combined with parallel=False"),
])
def test_bad_settings_are_refused_before_any_work(files: Path, kwargs: dict,
                                                  message: str) -> None:
    manifest = write(files / "ok.json", json.dumps(
        {"models": [{"model": "a.pt", "data": "val.npz"}], "search": {"steps": 5}}))
    with pytest.raises(InputError, match=message):
        scan_many(manifest, files / "out", **kwargs)
    assert not (files / "out").exists()
    bad_search = write(files / "bad.json", json.dumps(
        {"models": [{"model": "a.pt", "data": "val.npz"}], "search": {"steps": -2}}))
    with pytest.raises(InputError, match=r"the manifest's \[search\]: steps must be"):
        scan_many(bad_search, files / "out", parallel=False)


def test_importing_neuralcleanse_does_not_import_ray() -> None:
    import subprocess

    code = "import sys, neuralcleanse; neuralcleanse.scan_many; print('ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"
